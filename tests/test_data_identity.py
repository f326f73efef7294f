"""What a record says about its data (issue 24): the identity and content hash of a data YAML, its digest
cache, the name of a user's dataset, runs on different data never averaged or paired, and an edited dataset
trained again instead of reused from the cache."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from ablate import data_identity, datasets
from ablate import report as reporting
from ablate.errors import AblateError
from ablate.experiment import experiment_from_config
from ablate.records import RunRecord, run_dir, write_record
from ablate.report import render
from ablate.status import main as status_main

from .helpers import TINY, config
from .test_report import HASH_Q, _record

OLD = 1_600_000_000  # an mtime long past: digests taken now are trusted (not racy)


def _age(root: Path) -> None:
    """Set every file under ``root`` to an old mtime, so a digest taken now is not racy."""
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (OLD, OLD))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny embedded shapes dataset (16 + 8 images at 96 px): its data.yaml."""
    root = tmp_path_factory.mktemp("gen")
    return datasets.make_dataset("shapes", root, train_images=16, val_images=8, imgsz=96)


def own_dataset(generated: Path, where: Path, name: str | None = None) -> Path:
    """A user's YOLO dataset copied from the embedded one: ``where/{images,labels}`` and ``where/data.yaml``
    (no ``path:``: splits are relative to the YAML)."""
    where.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "labels"):
        shutil.copytree(generated.parent / sub, where / sub)
    data = {"train": "images/train", "val": "images/val", "names": dict(enumerate(datasets.SHAPE_NAMES))}
    if name:
        data["name"] = name
    (where / "data.yaml").write_text(yaml.safe_dump(data))
    return where / "data.yaml"


def edit_one_label(data_yaml: Path) -> Path:
    """Change the class of the first box of the first train label (same size: only the bytes differ)."""
    label = sorted((data_yaml.parent / "labels" / "train").glob("*.txt"))[0]
    first, *rest = label.read_text().splitlines(keepends=True)
    cls, tail = first.split(" ", 1)
    label.write_text(f"{(int(cls) + 1) % len(datasets.SHAPE_NAMES)} {tail}" + "".join(rest))
    return label


# ------------------------------------------------------------------------------------------ identity


def test_identity_names_the_yaml_splits_counts_and_hash(generated: Path, tmp_path: Path) -> None:
    data_yaml = own_dataset(generated, tmp_path / "trees")
    ident = data_identity.identify(data_yaml, tmp_path / "cache")
    root = data_yaml.parent.resolve()
    assert ident["source"] == "file" and ident["yaml"] == str(data_yaml.resolve())
    assert ident["root"] == str(root)
    assert ident["splits"] == {"train": [str(root / "images/train")], "val": [str(root / "images/val")]}
    assert ident["images"] == {"train": 16, "val": 8} and ident["labels"] == {"train": 16, "val": 8}
    boxes = sum(len(datasets.read_labels(p)) for p in (root / "labels" / "train").glob("*.txt"))
    assert ident["boxes"]["train"] == boxes > 0 and ident["nc"] == 5
    assert len(ident["hash"]) == 16 and set(ident["split_hashes"]) == {"train", "val"}
    assert "generator" not in ident


def test_embedded_identity_carries_its_generator_settings(generated: Path, tmp_path: Path) -> None:
    ident = data_identity.identify(generated, tmp_path / "cache")
    assert ident["source"] == "embedded"
    gen = ident["generator"]
    assert gen["name"] == "shapes" and gen["version"] == datasets.GENERATOR_VERSION
    assert (gen["train_images"], gen["val_images"], gen["imgsz"], gen["seed"]) == (16, 8, 96, 0)
    assert gen["knobs"]["size"] == list(datasets.EMBEDDED["shapes"].defaults.size)


def test_the_hash_follows_content_not_location(generated: Path, tmp_path: Path) -> None:
    a = own_dataset(generated, tmp_path / "a")
    b = own_dataset(generated, tmp_path / "b")  # the same files elsewhere
    cache = tmp_path / "cache"
    h = data_identity.identify(a, cache)
    assert data_identity.identify(b, cache)["hash"] == h["hash"]
    # what ultralytics writes beside the labels when it trains is not data
    (a.parent / "labels" / "train.cache").write_bytes(b"ultralytics label cache")
    assert data_identity.identify(a, cache)["hash"] == h["hash"]
    edit_one_label(a)
    edited = data_identity.identify(a, cache)
    assert edited["hash"] != h["hash"] and edited["split_hashes"]["val"] == h["split_hashes"]["val"]
    assert edited["split_hashes"]["train"] != h["split_hashes"]["train"]
    image = sorted((b.parent / "images" / "val").glob("*.png"))[0]
    image.rename(image.with_name("renamed.png"))  # a renamed image (its label is now missing)
    renamed = data_identity.identify(b, cache)
    assert renamed["hash"] != h["hash"] and renamed["labels"]["val"] == 7 and renamed["images"]["val"] == 8


def test_digests_are_cached_per_file_and_taken_again_when_a_file_changes(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_yaml = own_dataset(generated, tmp_path / "d")
    _age(data_yaml.parent)
    reads: list[str] = []
    digest = data_identity._file_digest
    monkeypatch.setattr(data_identity, "_file_digest", lambda p: (reads.append(p), digest(p))[1])
    first = data_identity.identify(data_yaml, tmp_path / "cache")
    assert len(reads) == 2 * (16 + 8)  # every image and label once
    assert list((tmp_path / "cache" / data_identity.CACHE_DIR).glob("*.json"))
    reads.clear()
    data_identity.identify(data_yaml, tmp_path / "cache")
    assert reads == []  # sizes and mtimes match: nothing read again
    label = edit_one_label(data_yaml)
    os.utime(label, (OLD + 10, OLD + 10))
    again = data_identity.identify(data_yaml, tmp_path / "cache")
    assert reads == [str(label.resolve())] and again["hash"] != first["hash"]


def test_a_digest_taken_right_after_a_write_is_taken_again(generated: Path, tmp_path: Path) -> None:
    """Within the clock's resolution a file may change again unseen (same size, same mtime): such a digest
    is not trusted, the next look reads the file again."""
    data_yaml = own_dataset(generated, tmp_path / "d")
    _age(data_yaml.parent)
    label = sorted((data_yaml.parent / "labels" / "val").glob("*.txt"))[0]
    label.write_text(label.read_text())  # mtime now
    cache = data_identity.DigestCache(None)
    cache.digest(str(label))
    cache.read = 0
    cache.digest(str(label))
    assert cache.read == 1
    old = sorted((data_yaml.parent / "labels" / "val").glob("*.txt"))[1]
    cache.digest(str(old))
    cache.read = 0
    cache.digest(str(old))
    assert cache.read == 0


def test_a_missing_image_of_a_list_is_one_clear_error(generated: Path, tmp_path: Path) -> None:
    data_yaml = own_dataset(generated, tmp_path / "d")
    (data_yaml.parent / "val.txt").write_text("./images/val/val_000000.png\n./images/val/gone.png\n")
    data = yaml.safe_load(data_yaml.read_text())
    data_yaml.write_text(yaml.safe_dump({**data, "val": "val.txt"}))
    with pytest.raises(AblateError, match=r"dataset file '.*gone\.png' cannot be read"):
        data_identity.identify(data_yaml, tmp_path / "cache")


# --------------------------------------------------------------------------------------------- names


def test_a_custom_dataset_is_named_after_its_yaml(tmp_path: Path) -> None:
    def yaml_at(path: Path, **extra: object) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"train": "i", "val": "i", "names": ["a"], **extra}))
        return path

    assert data_identity.custom_name(None, yaml_at(tmp_path / "x" / "birds.yaml")) == "birds"
    assert data_identity.custom_name("custom", yaml_at(tmp_path / "x" / "birds.yaml")) == "birds"
    assert data_identity.custom_name(None, yaml_at(tmp_path / "trees" / "data.yaml")) == "trees"
    assert data_identity.custom_name(None, yaml_at(tmp_path / "y" / "data.yaml", name="crowns")) == "crowns"
    assert data_identity.custom_name("mine", yaml_at(tmp_path / "y" / "data.yaml", name="crowns")) == "mine"
    # with dataset.path, an embedded config's name names no user data
    assert data_identity.custom_name("shapes", yaml_at(tmp_path / "x" / "birds.yaml")) == "birds"


def test_the_experiment_takes_the_yaml_name_unless_dataset_name_is_given(
    generated: Path, tmp_path: Path
) -> None:
    data_yaml = own_dataset(generated, tmp_path / "crowns")
    small = [o for o in TINY if not o.startswith("dataset.")]
    results, data = tmp_path / "r", tmp_path / "data"

    def exp(*overrides: str) -> dict:
        return experiment_from_config(config([*small, *overrides], results, data)).dataset

    assert exp("dataset=custom", f"dataset.path={data_yaml}") == {"name": "crowns", "path": str(data_yaml)}
    assert exp("dataset=custom", f"dataset.path={data_yaml}", "dataset.name=trees")["name"] == "trees"
    assert exp("dataset=shapes", f"dataset.path={data_yaml}")["name"] == "crowns"
    # an ultralytics dataset keeps its name, and the embedded ones their settings (their run keys unchanged)
    assert exp("dataset=coco8") == {"name": "coco8", "path": "coco8.yaml"}
    assert exp("dataset=shapes")["name"] == "shapes" and "train_images" in exp("dataset=shapes")


# ------------------------------------------------------------------------------------------ the cache


def _exp_on(data_yaml: Path, tmp_path: Path) -> object:
    small = [o for o in TINY if not o.startswith("dataset.")]
    cfg = config([*small, "dataset=custom", f"dataset.path={data_yaml}"], tmp_path / "r", tmp_path / "data")
    return experiment_from_config(cfg)


def test_a_record_of_edited_data_is_not_current(generated: Path, tmp_path: Path) -> None:
    data_yaml = own_dataset(generated, tmp_path / "d")
    exp = _exp_on(data_yaml, tmp_path)
    fields = data_identity.record_fields(data_yaml, tmp_path / "data")
    record = RunRecord(key="k", status="ok", **fields)
    assert data_identity.still_current(exp, record)
    assert data_identity.still_current(exp, RunRecord(key="old", status="ok"))  # no hash recorded: kept
    edit_one_label(data_yaml)
    assert not data_identity.still_current(exp, record)


def test_an_embedded_record_of_another_generator_version_is_not_current(
    generated: Path, tmp_path: Path
) -> None:
    from ablate.experiment import Experiment

    exp = Experiment(
        "train", "yolo12n", None, "none", {"name": "shapes"}, 0, {}, Path("r"), generated.parent.parent
    )
    fields = data_identity.record_fields(generated, tmp_path)
    assert data_identity.still_current(exp, RunRecord(key="k", status="ok", **fields))
    old = {**fields["data"], "generator": {**fields["data"]["generator"], "version": 0}}
    assert not data_identity.still_current(exp, RunRecord(key="k", status="ok", data=old))


# ---------------------------------------------------------------------------------------- the report


def _data(h: str, yaml_path: str = "/d/data.yaml") -> dict:
    return {"source": "file", "yaml": yaml_path, "images": {"train": 16, "val": 8}, "hash": h}


def test_a_pair_on_different_data_is_left_out_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Seeds 0-2; on seed 2 the variant ran after the dataset was edited (another data hash)."""
    values = {("none", "none"): [0.30, 0.32, 0.31], ("rala", "neck"): [0.34, 0.35, 0.20]}
    for (attn, pos), per_seed in values.items():
        for seed, v in enumerate(per_seed):
            h = "b" * 16 if (attn, seed) == ("rala", 2) else "a" * 16
            rec = _record(HASH_Q, "shapes", attn, pos, seed, map50_95=v, data_hash=h, data=_data(h))
            write_record(run_dir(tmp_path, rec.key), rec)
    with caplog.at_level(logging.WARNING, logger="ablate.report"):
        report = reporting.make_tables(tmp_path, figures=False)
    s = report.summary
    rala = s[(s["attn"] == "rala") & (s["data_hash"] == "a" * 16)].iloc[0]
    assert rala["delta_map50_95_n"] == 2 and rala["n"] == 2 and rala["data_mismatch"] == 0
    assert rala["delta_map50_95"] == pytest.approx(0.035)  # seeds 0 and 1
    edited = s[(s["attn"] == "rala") & (s["data_hash"] == "b" * 16)].iloc[0]
    assert edited["n"] == 1 and edited["delta_map50_95_n"] == 0 and edited["data_mismatch"] == 1
    key = rala["config_key"].split("@")[0]  # one configuration, one row per data: never averaged
    assert (rala["config_key"], edited["config_key"]) == (f"{key}@aaaaaaaa", f"{key}@bbbbbbbb")
    line = (
        "1 (variant, baseline) seed pair left out of Δ: on that seed the variant and its baseline were "
        "trained on different data (data_hash differs: the dataset changed between their runs); run the "
        "older one again on the current data."
    )
    md = Path(report.md).read_text()
    assert f"- {line}" in md and line in [r.getMessage() for r in caplog.records]
    assert "| shapes@aaaaaaaa mAP50 |" in md and "| shapes@bbbbbbbb mAP50 |" in md  # own columns
    assert "One name, different data (data_hash): shapes: shapes@aaaaaaaa (/d/data.yaml, 16 train" in md
    terminal = render.format_summary(s)
    assert "no pair: different data" in next(ln for ln in terminal.splitlines() if "@bbbbbbbb" in ln)
    assert report.baseline_commands == []  # the baseline exists: not reported missing


def test_two_datasets_with_one_name_never_share_a_column(tmp_path: Path) -> None:
    for i, h in enumerate(("1" * 16, "2" * 16)):
        for attn, pos in (("none", "none"), ("rala", "neck")):
            rec = _record(HASH_Q, "data", attn, pos, 0, map50_95=0.3 + i / 10, data_hash=h)
            rec.data = _data(h, f"/d{i}/data.yaml")
            rec.config_key, rec.baseline_key = f"{rec.config_key}{i}", f"{rec.baseline_key}{i}"
            rec.key = f"{rec.key}{i}"
            write_record(run_dir(tmp_path, rec.key), rec)
    report = reporting.make_tables(tmp_path, figures=False)
    assert sorted(report.summary["dataset"].unique()) == ["data@11111111", "data@22222222"]
    assert set(report.summary["dataset_name"]) == {"data"}
    rala = report.summary[report.summary["attn"] == "rala"]
    assert list(rala["delta_map50_95_n"]) == [1, 1] and list(rala["data_mismatch"]) == [0, 0]


def test_a_missing_baseline_on_a_users_dataset_is_run_with_its_yaml(tmp_path: Path) -> None:
    for seed in (0, 1):
        rec = _record(HASH_Q, "crowns", "rala", "neck", seed, map50_95=0.3, data_hash="e" * 16)
        rec.data = _data("e" * 16, "/d/my data.yaml")
        write_record(run_dir(tmp_path, rec.key), rec)
    (command,) = reporting.make_tables(tmp_path, figures=False).baseline_commands
    assert "model=yolo12n dataset=custom 'dataset.path=/d/my data.yaml' dataset.name=crowns " in command


def test_a_record_without_a_data_hash_pairs_as_before(tmp_path: Path) -> None:
    for attn, pos in (("none", "none"), ("rala", "neck")):
        for seed in (0, 1):
            h = "c" * 16 if attn == "rala" else None
            rec = _record(HASH_Q, "shapes", attn, pos, seed, map50_95=0.3 + seed / 50, data_hash=h)
            write_record(run_dir(tmp_path, rec.key), rec)
    s = reporting.make_tables(tmp_path, figures=False).summary
    assert list(s["dataset"]) == ["shapes", "shapes"]
    assert s[s["attn"] == "rala"].iloc[0]["delta_map50_95_n"] == 2


def test_status_says_when_one_name_holds_runs_on_different_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed, h in ((0, "a" * 16), (1, "b" * 16), (2, "b" * 16)):
        rec = _record(HASH_Q, "mine", "none", "none", seed, data_hash=h, data=_data(h))
        write_record(run_dir(tmp_path, rec.key), rec)
    status_main(["--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "data: dataset 'mine' holds runs on 2 different data (mine@aaaaaaaa, mine@bbbbbbbb)" in out
    assert "  mine@aaaaaaaa: 1 run (seeds 0), /d/data.yaml, 16 train / 8 val images" in out
    assert "  mine@bbbbbbbb: 2 runs (seeds 1, 2)" in out


# ------------------------------------------------------------------------------- the issue, end to end


def test_an_edited_label_splits_the_runs_and_trains_again(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 0 on a user's dataset; one label edited; seed 1: the two runs of one configuration are not
    averaged, the table shows each data in its own column and the status says why; seed 0 again is not
    reused from the cache but trained on the edited data, after which both seeds average."""
    from ablate.run import execute

    monkeypatch.setenv(datasets.DATA_ROOT_ENV, str(tmp_path / "data"))  # status hashes into it
    data_yaml = own_dataset(generated, tmp_path / "crowns")
    results = tmp_path / "results"
    small = [o for o in TINY if not o.startswith("dataset.")]

    def run(seed: int) -> RunRecord:
        overrides = [*small, "dataset=custom", f"dataset.path={data_yaml}", f"seed={seed}"]
        cfg = config(overrides, results, tmp_path)
        record = execute(experiment_from_config(cfg), cfg)
        assert record is not None and record.status == "ok", record and record.error
        return record

    first = run(0)
    root = data_yaml.parent.resolve()
    assert first.dataset == "crowns" and first.data["yaml"] == str(data_yaml.resolve())
    assert first.data["splits"]["train"] == [str(root / "images" / "train")]
    assert first.data["images"] == {"train": 16, "val": 8} and first.data_hash == first.data["hash"]
    stored = json.loads((run_dir(results, first.key) / "record.json").read_text())
    assert stored["data_hash"] == first.data_hash and stored["data"]["labels"] == {"train": 16, "val": 8}
    assert run(0).cached  # unchanged data (ultralytics' label cache written beside it): reused

    edit_one_label(data_yaml)
    time.sleep(0.01)
    second = run(1)
    assert second.config_key == first.config_key and second.data_hash != first.data_hash

    summary = reporting.make_tables(results, figures=False).summary
    assert sorted(summary["n"]) == [1, 1]  # one configuration, two data: not averaged
    headings = [f"crowns@{first.data_hash[:8]}", f"crowns@{second.data_hash[:8]}"]
    assert set(summary["dataset"]) == set(headings)
    status_main(["--results", str(results)])
    out = capsys.readouterr().out
    assert f"data: dataset 'crowns' holds runs on 2 different data ({', '.join(headings)})" in out
    assert f"the data there now is crowns@{second.data_hash[:8]}" in out

    again = run(0)
    assert not again.cached and again.key == first.key and again.data_hash == second.data_hash
    summary = reporting.make_tables(results, figures=False).summary
    assert list(summary["n"]) == [2] and list(summary["dataset"]) == ["crowns"]
    status_main(["--results", str(results)])
    assert "different data" not in capsys.readouterr().out
