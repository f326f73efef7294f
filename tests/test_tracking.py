"""wandb tracking: one offline wandb run per executed run, read back from its transaction log.

wandb 0.31 writes an offline run as ``run-<id>.wandb`` (protobuf ``Record``s in a LevelDB-style log; no
``files/wandb-summary.json`` offline), so the tests read that file: the run's config, group, job type and
tags, the per-epoch history, the summary and the exit code. Nothing here touches the network or the home
directory: every wandb and ultralytics directory points into the test's temporary directory.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ablate import tracking
from ablate.errors import AblateError
from ablate.experiment import experiment_from_config
from ablate.records import RunRecord
from ablate.run import execute

from .helpers import TINY, config

SECRET = "some-secret-value-7c1d"
UNTRACKED = [o for o in TINY if not o.startswith("logger=")]
PROFILE = ["action=profile", "measure.latency.force_load=true"]  # the tests keep the machine busy


# --- reading an offline run back ------------------------------------------------------------------------

BLOCK = 32 * 1024  # the LevelDB log block size wandb uses
HEADER = 7  # ":W&B" + magic (2 bytes) + version; each chunk: crc32 (4), length (2), type (1)


def wandb_records(path: Path) -> list[Any]:
    """Every protobuf ``Record`` in a ``.wandb`` transaction log."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    records, pos, buf = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk, pos = data[pos + HEADER : pos + HEADER + length], pos + HEADER + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL, FIRST / MIDDLE, LAST
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def _items(items: Any) -> dict[str, Any]:
    """Protobuf items to a dict; a nested key (``table`` -> ``_type``) becomes nested dicts."""
    out: dict[str, Any] = {}
    for item in items:
        *parents, last = list(item.nested_key) or [item.key]
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = json.loads(item.value_json)
    return out


def finished_records(log_file: Path, timeout: float = 30.0) -> list[Any]:
    """The records of a finished run. ``run.finish()`` returns before wandb's service has flushed the
    run's log (it closes the stream asynchronously), so a reader in the same process waits for the exit
    record."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = wandb_records(log_file) if log_file.stat().st_size > HEADER else []
        except Exception:  # caught mid-write: a truncated chunk
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_run(run_dir: Path) -> dict[str, Any]:
    """An offline wandb run directory as plain data: run, config, history rows, summary, exit."""
    (log_file,) = run_dir.glob("run-*.wandb")
    out: dict[str, Any] = {"run": None, "config": {}, "history": [], "summary": {}, "exit": None}
    for r in finished_records(log_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
            out["config"].update(_items(r.run.config.update))
        elif kind == "config":
            out["config"].update(_items(r.config.update))
        elif kind == "history":
            out["history"].append(_items(r.history.item))
        elif kind == "summary":
            out["summary"].update(_items(r.summary.update))
        elif kind == "exit":
            out["exit"] = r.exit
    return out


def wandb_runs(root: Path) -> list[Path]:
    """Every wandb run directory under ``root`` (wherever wandb or ultralytics put one)."""
    return sorted({p.parent for p in root.rglob("run-*.wandb")})


# --- environment ------------------------------------------------------------------------------------


def wandb_env(tmp: Path) -> dict[str, str]:
    """wandb kept offline and out of the home directory (its service logs go to XDG/WANDB cache dirs)."""
    return {
        "WANDB_MODE": "offline",  # a guard: ablate's own default is offline too
        "WANDB_API_KEY": SECRET,
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "WANDB_ARTIFACT_DIR": str(tmp / "wandb-artifacts"),
        "XDG_CACHE_HOME": str(tmp / "xdg-cache"),
    }


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tracking")


@pytest.fixture(scope="module", autouse=True)
def _isolated_wandb(tmp: Path) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in wandb_env(tmp).items():
            mp.setenv(k, v)
        yield


def run_in_process(overrides: list[str], results: Path, data: Path) -> RunRecord:
    cfg = config(overrides, results, data)
    record = execute(experiment_from_config(cfg), cfg)
    assert record is not None
    return record


# --- one tracked training through the CLI, as a user runs it ------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp: Path) -> dict[str, Any]:
    """`python -m ablate` with the default logger, a secret API key in the environment and ultralytics'
    own wandb integration switched on in its settings file, outside pytest's reach (ultralytics disables
    its wandb callback under pytest, which would make the duplicate-run check vacuous)."""
    results, data, yolo = tmp / "cli" / "results", tmp / "data", tmp / "cli" / "ultralytics-config"
    (yolo / "Ultralytics").mkdir(parents=True)
    (yolo / "Ultralytics" / "settings.json").write_text(json.dumps({"wandb": True}))
    drop = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(wandb_env(tmp / "cli"), YOLO_CONFIG_DIR=str(yolo), HYDRA_FULL_ERROR="1")
    args = [*UNTRACKED, "train.epochs=2", "measure.coco_eval=false", "+attn=rala", "+pos=p5"]
    cmd = [sys.executable, "-m", "ablate", *args, f"results.dir={results}", f"data.dir={data}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp / "cli")
    assert out.returncode == 0, out.stderr[-3000:]
    (record_file,) = (results / "runs").glob("*/record.json")
    return {"out": out, "results": results, "record": json.loads(record_file.read_text()), "tmp": tmp / "cli"}


def test_one_wandb_run_per_training_not_ultralytics_own(cli_run: dict[str, Any]) -> None:
    runs = wandb_runs(cli_run["tmp"])
    assert len(runs) == 1, runs
    assert runs[0].parent == cli_run["results"] / "wandb"  # under the results root
    assert runs[0].name.startswith("offline-run-")


def test_run_identity_group_job_type_tags(cli_run: dict[str, Any]) -> None:
    run = read_run(wandb_runs(cli_run["results"])[0])
    info = run["run"]
    assert info.project == "ablate"
    assert info.run_group == "single"  # not in a sweep
    assert info.job_type == "rala"
    assert info.display_name == "yolo12n/rala@p5/shapes/s0"
    assert {"model:yolo12n", "attn:rala", "pos:p5", "dataset:shapes", "seed:0"} <= set(info.tags)
    assert run["exit"] is not None and run["exit"].exit_code == 0


def test_config_is_the_resolved_config_flattened(cli_run: dict[str, Any]) -> None:
    cfg = read_run(wandb_runs(cli_run["results"])[0])["config"]
    assert cfg["train.epochs"] == 2 and cfg["train.imgsz"] == 96
    assert cfg["attn.name"] == "rala" and cfg["model.name"] == "yolo12n"
    assert cfg["logger.mode"] == "offline"
    assert cfg["run.key"] == cli_run["record"]["key"]
    assert cfg["run.layers"] == cli_run["record"]["layers"] == [20]
    assert [k for k, v in cfg.items() if isinstance(v, dict) and v] == []  # flat: dot keys only


def test_history_has_per_epoch_training_and_validation_metrics(cli_run: dict[str, Any]) -> None:
    history = [h for h in read_run(wandb_runs(cli_run["results"])[0])["history"] if "epoch" in h]
    assert [h["epoch"] for h in history] == [1, 2]  # the final best.pt validation is not an epoch
    for h in history:
        for key in ("train/box_loss", "train/cls_loss", "val/box_loss", "metrics/mAP50-95(B)", "lr/pg0"):
            assert isinstance(h[key], int | float), (key, h)
        assert h["train/box_loss"] > 0 and h["_step"] == h["epoch"]
    with open(cli_run["results"] / "runs" / cli_run["record"]["key"] / "ultralytics" / "results.csv") as f:
        first = {k.strip(): v for k, v in next(csv.DictReader(f)).items()}
    assert history[0]["train/box_loss"] == pytest.approx(float(first["train/box_loss"]), rel=1e-4)


def test_summary_is_the_final_record(cli_run: dict[str, Any]) -> None:
    summary = read_run(wandb_runs(cli_run["results"])[0])["summary"]
    record = cli_run["record"]
    assert summary["status"] == "ok" and summary["key"] == record["key"]
    for key in ("map50", "map50_95", "params", "params_attn", "gflops", "arch_key", "train_seconds"):
        assert summary[key] == pytest.approx(record[key]), key
    assert summary["versions.ultralytics"] == record["versions"]["ultralytics"]
    assert summary["best/metrics/mAP50-95(B)"] == pytest.approx(record["map50_95"])


def test_secret_is_never_written(cli_run: dict[str, Any]) -> None:
    """Every file the run left (records, config dumps, ultralytics' files, wandb's binary log, wandb's
    service logs) is searched byte by byte for the API key; so is the terminal output."""
    secret = SECRET.encode()
    files = [p for p in cli_run["tmp"].rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "config.yaml" for p in files)
    assert [p for p in files if secret in p.read_bytes()] == []
    assert SECRET not in cli_run["out"].stdout + cli_run["out"].stderr


def test_wandb_is_silent_on_the_terminal(cli_run: dict[str, Any]) -> None:
    out = cli_run["out"].stdout + cli_run["out"].stderr
    assert [line for line in out.splitlines() if line.startswith("wandb:")] == []


# --- in process: logger=none, cached runs, failures ---------------------------------------------------


def test_logger_none_creates_no_wandb_files(tmp: Path) -> None:
    results = tmp / "none" / "results"
    record = run_in_process([*UNTRACKED, *PROFILE, "logger=none"], results, tmp / "data")
    assert record.status == "ok"
    assert not (results / "wandb").exists() and wandb_runs(tmp / "none") == []


def test_profile_run_is_tracked_and_a_cached_run_is_not(tmp: Path) -> None:
    results = tmp / "cached" / "results"
    first = run_in_process([*UNTRACKED, *PROFILE, "+attn=tssa", "+pos=p5"], results, tmp / "data")
    again = run_in_process([*UNTRACKED, *PROFILE, "+attn=tssa", "+pos=p5"], results, tmp / "data")
    assert first.status == "ok" and again.key == first.key and again.finished_at == first.finished_at
    (run_dir,) = wandb_runs(results)
    run = read_run(run_dir)
    assert run["run"].display_name == "yolo12n/tssa@p5/shapes/s0/profile"
    assert "action:profile" in run["run"].tags
    assert run["summary"]["gflops"] == pytest.approx(first.gflops)
    assert [h for h in run["history"] if "epoch" in h] == []


def test_failed_run_is_marked_failed_with_its_error(tmp: Path) -> None:
    results = tmp / "failed" / "results"
    overrides = [*UNTRACKED, "+attn=rala", "+pos=p5", "+train.extra.optimizer=NoSuchOptimizer"]
    record = run_in_process(overrides, results, tmp / "data")
    assert record.status == "failed"
    (run_dir,) = wandb_runs(results)
    run = read_run(run_dir)
    assert run["exit"].exit_code == 1
    assert run["summary"]["status"] == "failed" and "NoSuchOptimizer" in run["summary"]["error"]


def test_wandb_that_cannot_start_never_fails_a_run(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no wandb today")

    monkeypatch.setattr(wandb, "init", broken)
    results = tmp / "broken" / "results"
    record = run_in_process([*UNTRACKED, *PROFILE, "seed=3"], results, tmp / "data")
    assert record.status == "ok"
    assert "no wandb today" in caplog.text
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    exp = experiment_from_config(config([*UNTRACKED, *PROFILE], results, tmp / "data"))
    tracker = tracking.start_run(RunRecord(key=exp.key), exp.logger, results, exp.spec)
    assert type(tracker) is tracking.Tracker and tracker.callbacks() == {}
    tracker.finish(RunRecord(key=exp.key, status="ok"))


# --- the sweep summary run -----------------------------------------------------------------------------


def test_sweep_summary_run_has_the_table_and_figures(tmp: Path) -> None:
    from PIL import Image

    results = tmp / "summary" / "results"
    (results / "figures").mkdir(parents=True)
    png = results / "figures" / "pareto.png"
    Image.new("RGB", (16, 8), (200, 30, 30)).save(png)
    table = [
        {"attn": "none", "pos": "none", "layers": [], "map50_95_mean": 0.30, "n": 3},
        {"attn": "rala", "pos": "neck", "layers": [14, 17, 20], "map50_95_mean": 0.34, "n": 3},
        {"attn": "tssa", "pos": "neck", "layers": [14, 17, 20], "map50_95_mean": None, "n": 0},
    ]
    figures = [png, results / "figures" / "missing.png", results / "figures" / "pareto.pdf"]
    tracking.log_sweep_summary(results, {"name": "wandb"}, "multirun-x", table, figures)
    tracking.log_sweep_summary(results, {"name": "none"}, "multirun-x", table, figures)  # nothing
    (run_dir,) = wandb_runs(results)
    run = read_run(run_dir)
    assert run["run"].job_type == "summary" and run["run"].run_group == "multirun-x"
    assert run["exit"].exit_code == 0
    (row,) = [h for h in run["history"] if "table" in h]
    assert row["table"]["_type"] == "table-file" and row["table"]["nrows"] == 3
    assert row["figures/pareto"]["_type"] == "image-file" and "figures/missing" not in row
    saved = json.loads((run_dir / "files" / row["table"]["path"]).read_text())
    assert saved["columns"][:2] == ["attn", "pos"] and saved["data"][1][2] == "[14, 17, 20]"
    assert (run_dir / "files" / row["figures/pareto"]["path"]).is_file()


# --- units -------------------------------------------------------------------------------------------


def test_logger_settings_defaults_and_bad_values() -> None:
    s = tracking.logger_settings({"name": "wandb", "tags": "paper", "console": False})
    assert s["mode"] == "offline" and s["project"] == "ablate" and s["tags"] == ["paper"]
    assert s["console"] == "off"
    assert tracking.logger_settings(None) == {"name": "none"}
    assert tracking.logger_settings({"name": "none"}) == {"name": "none"}
    with pytest.raises(AblateError, match="logger.mode='cloud' is not valid; valid: offline, online"):
        tracking.logger_settings({"name": "wandb", "mode": "cloud"})
    with pytest.raises(AblateError, match="logger='mlflow' is not valid"):
        tracking.logger_settings({"name": "mlflow"})


def test_default_logger_is_offline_wandb_and_not_part_of_the_key(tmp: Path) -> None:
    cfg = config([*UNTRACKED], tmp / "r", tmp / "d")
    assert cfg.logger.name == "wandb" and cfg.logger.mode == "offline"
    assert "key" not in str(dict(cfg.logger)).lower()  # nothing secret lives in the config
    tracked = experiment_from_config(cfg)
    untracked = experiment_from_config(config([*UNTRACKED, "logger=none"], tmp / "r", tmp / "d"))
    assert tracked.logger["name"] == "wandb" and untracked.logger == {"name": "none"}
    assert tracked.key == untracked.key


def test_flatten_and_redact(monkeypatch: pytest.MonkeyPatch) -> None:
    flat = tracking.flatten({"train": {"epochs": 2, "extra": {}}, "layers": [1, 2], "a": {"b": {"c": None}}})
    assert flat == {"train.epochs": 2, "train.extra": {}, "layers": [1, 2], "a.b.c": None}
    monkeypatch.setenv("WANDB_API_KEY", "abcdefgh12345678")
    assert tracking.redact({"x": ["url?k=abcdefgh12345678"]}) == {"x": ["url?k=***"]}


def test_ultralytics_own_wandb_callbacks_are_dropped() -> None:
    """Should ultralytics' settings enable its wandb integration, the tracker removes it (a second run,
    and one that fails: it expects a global wandb.run, which ablate's run does not set)."""
    from ultralytics.utils.callbacks import wb

    def ours(trainer: Any) -> None:
        return None

    class Trainer:
        callbacks = {
            "on_pretrain_routine_end": [wb.on_pretrain_routine_end],
            "on_fit_epoch_end": [ours, wb.on_fit_epoch_end],
        }

    tracking.WandbTracker._drop_ultralytics_wandb(Trainer)
    assert Trainer.callbacks == {"on_pretrain_routine_end": [], "on_fit_epoch_end": [ours]}
