"""Embedded datasets (shapes, digits): YOLO layout, determinism, caching, tight boxes; dataset-spec checks."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from ablate import datasets
from ablate.datasets import make_dataset, read_labels, resolve_data_yaml
from ablate.errors import AblateError

SMALL = {"train_images": 12, "val_images": 4, "imgsz": 96}
# one object on a flat, noiseless, clutter-free background: every changed pixel belongs to the object
CLEAN = {"objects": (1, 1), "clutter": (0, 0), "backgrounds": ("flat",), "pixel_noise": 0.0}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {name: make_dataset(name, root, **SMALL) for name in datasets.EMBEDDED}


def split_files(data_yaml: Path, split: str) -> list[tuple[Path, Path]]:
    root = data_yaml.parent
    images = sorted((root / "images" / split).glob("*.png"))
    return [(p, root / "labels" / split / f"{p.stem}.txt") for p in images]


def snapshot(data_yaml: Path) -> dict[str, bytes]:
    """Every image and label file of a generated dataset, by path relative to its root."""
    root = data_yaml.parent
    files = [*root.glob("images/*/*"), *root.glob("labels/*/*")]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.mark.parametrize("name", ["shapes", "digits"])
def test_layout_is_accepted_by_ultralytics(generated: dict[str, Path], name: str) -> None:
    from ultralytics.data.utils import check_det_dataset, verify_image_label

    data = check_det_dataset(str(generated[name]), autodownload=False)
    nc = len(datasets.EMBEDDED[name].names)
    assert data["nc"] == nc
    assert Path(data["train"]) == generated[name].parent / "images" / "train"
    for split in ("train", "val"):
        pairs = split_files(generated[name], split)
        assert len(pairs) == SMALL[f"{split}_images"]
        non_empty = 0
        for image, label in pairs:
            _, lb, shape, *_, corrupt, msg = verify_image_label(
                (str(image), str(label), "", False, nc, 0, 0, False)
            )
            assert corrupt == 0 and msg == "", msg
            assert tuple(shape) == (SMALL["imgsz"], SMALL["imgsz"])
            assert len(lb) == len(label.read_text().splitlines())  # no duplicates dropped
            for c, cx, cy, w, h in read_labels(label):
                assert 0 <= c < nc and w > 0 and h > 0
                edges = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                assert np.all(edges >= -1e-6) and np.all(edges <= 1 + 1e-6)  # labels have 6 decimals
            non_empty += bool(len(lb))
        assert non_empty >= 0.9 * len(pairs)


@pytest.mark.parametrize("name", ["shapes", "digits"])
def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path, name: str) -> None:
    a = make_dataset(name, tmp_path / "a", **SMALL, seed=3)
    b = make_dataset(name, tmp_path / "b", **SMALL, seed=3)
    c = make_dataset(name, tmp_path / "a", **SMALL, seed=4)
    assert a.parent.name == b.parent.name != c.parent.name
    snap_a, snap_b, snap_c = snapshot(a), snapshot(b), snapshot(c)
    assert len(snap_a) == 2 * (SMALL["train_images"] + SMALL["val_images"])
    assert snap_a == snap_b
    assert snap_a.keys() == snap_c.keys()
    labels = [k for k in snap_a if k.endswith(".txt")]
    assert sum(snap_a[k] != snap_c[k] for k in labels) >= 0.9 * len(labels)


def test_splits_and_datasets_draw_different_backgrounds(tmp_path: Path) -> None:
    def background(name: str, split: str) -> tuple[int, ...]:
        data_yaml = make_dataset(name, tmp_path, train_images=3, val_images=3, imgsz=64, **CLEAN)
        img = cv2.imread(str(split_files(data_yaml, split)[0][0]))
        colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
        return tuple(colours[counts.argmax()])

    assert (
        len({background("shapes", "train"), background("shapes", "val"), background("digits", "train")}) == 3
    )


def test_complete_cache_is_reused_without_generating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_dataset("shapes", tmp_path, **SMALL)
    mtime = first.stat().st_mtime_ns

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(datasets, "_generate", boom)
    assert make_dataset("shapes", tmp_path, **SMALL) == first
    assert first.stat().st_mtime_ns == mtime
    assert resolve_data_yaml("shapes", root=tmp_path, **SMALL) == first


def test_dir_without_completion_marker_is_regenerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_dataset("digits", tmp_path, **SMALL)
    before = snapshot(first)
    (first.parent / datasets.COMPLETE_MARKER).unlink()
    (first.parent / "labels" / "train" / "train_000000.txt").write_text("half-written")
    stale = tmp_path / f".{first.parent.name}.killed.tmp"  # temp dir of a process killed an hour ago
    stale.mkdir()
    os.utime(stale, (time.time() - 7200,) * 2)
    calls = []
    real = datasets._generate
    monkeypatch.setattr(datasets, "_generate", lambda *a: calls.append(a) or real(*a))
    assert make_dataset("digits", tmp_path, **SMALL) == first
    assert len(calls) == 1
    assert datasets.is_complete(first.parent)
    assert snapshot(first) == before
    assert not list(tmp_path.glob(".*.tmp"))  # ours was renamed into place, the stale one removed


def test_cache_key_covers_every_parameter(tmp_path: Path) -> None:
    base = make_dataset("shapes", tmp_path, **SMALL).parent.name
    variants = [
        dict(SMALL, train_images=13),
        dict(SMALL, val_images=5),
        dict(SMALL, imgsz=100),
        dict(SMALL, seed=1),
        dict(SMALL, clutter=(0, 1)),
    ]
    names = {make_dataset("shapes", tmp_path, **v).parent.name for v in variants}
    assert len(names) == len(variants) and base not in names
    explicit_defaults = dataclasses.asdict(datasets.EMBEDDED["shapes"].defaults)
    assert make_dataset("shapes", tmp_path, **SMALL, **explicit_defaults).parent.name == base


def test_moved_cache_dir_gets_its_yaml_path_updated(tmp_path: Path) -> None:
    first = make_dataset("shapes", tmp_path / "a", **SMALL)
    moved = tmp_path / "b" / first.parent.name
    shutil.copytree(first.parent, moved)
    again = make_dataset("shapes", tmp_path / "b", **SMALL)
    assert again == moved / "data.yaml"
    assert yaml.safe_load(again.read_text())["path"] == str(moved.resolve())


@pytest.mark.parametrize("name", ["shapes", "digits"])
def test_boxes_are_tight_around_changed_pixels(tmp_path: Path, name: str) -> None:
    data_yaml = make_dataset(name, tmp_path, train_images=10, val_images=1, imgsz=96, **CLEAN)
    for image, label in split_files(data_yaml, "train"):
        img = cv2.imread(str(image))
        colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
        ys, xs = np.nonzero(np.any(img != colours[counts.argmax()], axis=2))
        ((_, cx, cy, w, h),) = read_labels(label)
        box = [round(v * 96) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)]
        assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], image.name


def test_digits_are_ten_classes_of_small_objects(generated: dict[str, Path]) -> None:
    names = yaml.safe_load(generated["digits"].read_text())["names"]
    assert list(names.values()) == [str(d) for d in range(10)]
    sides = [
        max(w, h)
        for _, label in split_files(generated["digits"], "train")
        for _, _, _, w, h in read_labels(label)
    ]
    assert len(sides) >= 2 * SMALL["train_images"]
    assert np.median(sides) < 0.25


def test_digit_splits_use_disjoint_source_images() -> None:
    train, val = set(datasets._digit_pool("train")), set(datasets._digit_pool("val"))
    assert train and val and not train & val
    assert len(train | val) == len(datasets._digits()[1])


def test_shapes_have_all_classes_and_a_range_of_sizes(tmp_path: Path) -> None:
    data_yaml = make_dataset("shapes", tmp_path, train_images=40, val_images=1, imgsz=160)
    rows = [r for _, label in split_files(data_yaml, "train") for r in read_labels(label)]
    assert {r[0] for r in rows} == set(range(len(datasets.SHAPE_NAMES)))
    sides = np.array([max(r[3], r[4]) for r in rows])
    assert sides.min() < 0.12 and sides.max() > 0.4
    assert 1 <= len(rows) / 40 <= 4


@pytest.mark.parametrize(
    ("args", "bad"),
    [
        ({"name": "circles"}, "circles"),
        ({"train_images": 0}, "train_images=0"),
        ({"val_images": -1}, "val_images=-1"),
        ({"imgsz": 0}, "imgsz=0"),
        ({"seed": -2}, "seed=-2"),
        ({"objects": (3, 1)}, "objects=(3, 1)"),
        ({"size": (0.5, 2.0)}, "size=(0.5, 2.0)"),
        ({"backgrounds": ("plaid",)}, "plaid"),
        ({"colour": "red"}, "colour"),
        ({"max_occlusion": "lots"}, "max_occlusion='lots'"),
    ],
)
def test_make_dataset_rejects_bad_arguments(tmp_path: Path, args: dict[str, object], bad: str) -> None:
    kwargs = dict(SMALL, **args)
    name = kwargs.pop("name", "shapes")
    with pytest.raises(AblateError) as err:
        make_dataset(name, tmp_path, **kwargs)
    assert bad in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def write_user_dataset(root: Path, **overrides: object) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
    data = {"train": "images/train", "val": "images/val", "names": ["cat", "dog"], **overrides}
    data = {k: v for k, v in data.items() if v is not None}
    path = root / "user.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_resolve_accepts_a_good_user_yaml(tmp_path: Path) -> None:
    relative = write_user_dataset(tmp_path / "rel")  # no `path`: splits are relative to the yaml's dir
    assert resolve_data_yaml(relative) == relative.resolve()
    absolute = write_user_dataset(tmp_path / "abs", path=str(tmp_path / "rel"), train="images/train")
    shutil.rmtree(tmp_path / "abs" / "images")  # splits live under `path`, not beside the yaml
    assert resolve_data_yaml(str(absolute)) == absolute.resolve()


@pytest.mark.parametrize(
    ("case", "bad"),
    [
        ("missing file", "nope.yaml"),
        ("no names", "names"),
        ("missing split", "images/missing"),
        ("no val key", "'val'"),
        ("not yaml", "not valid YAML"),
        ("unknown name", "cocoa"),
    ],
)
def test_resolve_rejects_bad_specs_with_one_line_errors(tmp_path: Path, case: str, bad: str) -> None:
    spec: str | Path
    if case == "missing file":
        spec = tmp_path / "nope.yaml"
    elif case == "no names":
        spec = write_user_dataset(tmp_path, names=None)
    elif case == "missing split":
        spec = write_user_dataset(tmp_path, val="images/missing")
    elif case == "no val key":
        spec = write_user_dataset(tmp_path, val=None)
    elif case == "not yaml":
        spec = tmp_path / "broken.yaml"
        spec.write_text("names: [a, b\ntrain: {")
    else:
        spec = "cocoa"
    with pytest.raises(AblateError) as err:
        resolve_data_yaml(spec)
    message = str(err.value)
    assert bad in message and "\n" not in message
    if case == "unknown name":
        assert all(choice in message for choice in ("shapes", "digits", "neon_trees", "coco8", "VOC"))


@pytest.mark.parametrize(
    ("spec", "expected"), [("coco8", "coco8.yaml"), ("VOC", "VOC.yaml"), ("visdrone", "VisDrone.yaml")]
)
def test_resolve_passes_ultralytics_names_through(spec: str, expected: str) -> None:
    assert resolve_data_yaml(spec) == Path(expected)


def test_contact_sheet_tiles_images(generated: dict[str, Path], tmp_path: Path) -> None:
    out = datasets.contact_sheet(generated["shapes"], tmp_path / "sheet.png", count=6, cols=4, scale=2)
    sheet = cv2.imread(str(out))
    assert sheet.shape == (2 * 96 * 2, 4 * 96 * 2, 3)
    assert (sheet == (0, 255, 0)).all(axis=2).any()  # boxes drawn


def test_the_small_object_variant_is_all_small_objects(tmp_path: Path) -> None:
    """conf/dataset/shapes_small.yaml: the shapes generator, every box under COCO's 32 px "small" limit."""
    from ablate.experiment import experiment_from_config
    from ablate.run import dataset_names, materialize_dataset

    from .helpers import config

    cfg = config(
        ["dataset=shapes_small", "dataset.train_images=8", "dataset.val_images=32"], tmp_path, tmp_path
    )
    exp = experiment_from_config(cfg)
    assert exp.dataset["name"] == "shapes_small" and dataset_names(exp.dataset) == list(datasets.SHAPE_NAMES)
    data_yaml = Path(materialize_dataset(exp))
    boxes = [b for p in sorted((data_yaml.parent / "labels" / "val").glob("*.txt")) for b in read_labels(p)]
    assert len(boxes) >= 3 * 32
    sides = np.array([max(w, h) * 96 for _, _, _, w, h in boxes])
    assert sides.max() < 32 and sides.min() >= 5


def test_neon_trees_is_named_without_work_and_materialized_through_the_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conf/dataset/neon_trees.yaml: class names without fetching anything; materializing dispatches to
    ablate/neon_trees.py with the YAML's settings, which (no wheel, pip failing) is one error line."""
    import subprocess

    from ablate import neon_trees
    from ablate.experiment import experiment_from_config
    from ablate.run import dataset_names, materialize_dataset

    from .helpers import config

    calls: list[Path] = []

    def offline(directory: Path) -> subprocess.CompletedProcess[str]:
        calls.append(directory)
        return subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(neon_trees, "_pip_download", offline)
    exp = experiment_from_config(config(["dataset=neon_trees"], tmp_path / "results", tmp_path / "data"))
    assert dataset_names(exp.dataset) == ["tree"] == datasets.class_names("neon_trees")
    assert not calls and not (tmp_path / "data").exists()
    with pytest.raises(AblateError) as err:
        materialize_dataset(exp)
    downloads = tmp_path / "data" / neon_trees.DOWNLOADS
    assert str(err.value) == (
        "dataset=neon_trees needs the deepforest 2.1.0 wheel: run `python -m pip download --no-deps "
        f"--only-binary=:all: deepforest==2.1.0 -d {downloads}`"
    )
    assert len(calls) == 1 and not list(downloads.iterdir())
