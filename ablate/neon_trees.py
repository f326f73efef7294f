"""``dataset=neon_trees``: real airborne RGB imagery of tree crowns, tiled to YOLO format (one class).

The source is the ``deepforest`` 2.1.0 wheel (package MIT, Weinstein et al.; the imagery is NEON
Airborne Observation Platform RGB, released CC0). Its folder ``deepforest/data/`` holds four rasters with
human-labelled crown boxes (Pascal VOC XML):

* ``2019_YELL_2_528000_4978000_image_crop2`` 2299x2472 px, 574 crowns (Yellowstone)
* ``2019_YELL_2_541000_4977000_image_crop`` 1249x1035 px, 279 crowns (Yellowstone, 13 km away)
* ``OSBS_029`` 400x400 px, 61 crowns (Ordway-Swisher, Florida)
* ``SOAP_061`` 400x400 px, 37 crowns labelled Dead / Alive (Soaproot Saddle, California)

The wheel is fetched once with pip (``pip download --no-deps``; deepforest itself is never imported, it
pulls pytorch-lightning) into ``<data root>/downloads/``, its sha256 checked, and read with ``zipfile``.
Conversion (deterministic; no randomness):

* Every label becomes class 0 ``tree``. VOC boxes are 1-based and inclusive (in the four XMLs xmin and
  ymin reach 1 and never 0, xmax and ymax reach the raster's width and height), so a box covers pixels
  ``[xmin - 1, xmax)`` in 0-based half-open coordinates.
* Train and val come from different rasters (``train_rasters`` / ``val_rasters``, disjoint): no pixel
  is in both splits. Train rasters are cut into ``tile`` px squares every ``tile * (1 - overlap)`` px,
  the last row and column aligned to the raster's edge (a raster smaller than a tile: one tile, padded
  as below). Val rasters are partitioned into ``tile`` px
  cells (no pixel in two val tiles); cells past the raster's edge are padded with grey 114,
  ultralytics' letterbox colour, so every tile has the same scale.
* A crown cut by a tile's edge keeps its clipped part when at least ``min_visible`` of its area is
  inside the tile; smaller fragments are not labelled. The default 0.4 follows the labellers' own
  convention at raster edges: of the 48 labelled crowns cut by one raster edge, the smallest shows 0.40
  of its extent along the edge across it, none less (interior crowns: width/height 0.76-1.23,
  5th-95th percentile).
* Tiles without a crown are kept (real background: road, meadow, shadow).
* Tiles are stored at ``imgsz`` px (area interpolation), the side to train at, as the embedded
  datasets are rendered at theirs: COCO's small/medium/large buckets then apply at the training scale.

The result is cached under ``<data root>/neon_trees-<hash>/`` (hash of the conversion version, the
wheel's sha256 and every setting) with ``tiles.json`` (every tile's raster, offset and boxes) and a
completion marker written last, like the embedded datasets.

    python -m ablate.neon_trees --stats      # fetch + convert once (conf/dataset/neon_trees.yaml), statistics
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from ablate.datasets import (
    COMPLETE_MARKER,
    MIN_IMGSZ,
    SPLITS,
    _data_yaml,
    _refresh_path,
    _remove_stale_temps,
    _write_yaml,
    cache_key,
    default_data_root,
    is_complete,
    label_text,
)
from ablate.errors import AblateError
from ablate.paths import CONF_DIR

log = logging.getLogger(__name__)

NAME = "neon_trees"
NAMES = ("tree",)
REQUIREMENT = "deepforest==2.1.0"
WHEEL = "deepforest-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
WHEEL_DATA = "deepforest/data/"
DOWNLOADS = "downloads"  # under the data root
CONVERSION_VERSION = 1  # bump when any change alters converted bytes; it is part of the cache key
PAD_VALUE = 114  # grey of the padded part of a val tile past the raster's edge (ultralytics' letterbox)
TILES_JSON = "tiles.json"
PIP_TIMEOUT_S = 900

# the four labelled rasters of deepforest/data/ (stem: width, height); the PNG is the image
RASTERS: dict[str, tuple[int, int]] = {
    "2019_YELL_2_528000_4978000_image_crop2": (2299, 2472),
    "2019_YELL_2_541000_4977000_image_crop": (1249, 1035),
    "OSBS_029": (400, 400),
    "SOAP_061": (400, 400),
}

# conf/dataset/neon_trees.yaml repeats these (a test keeps the two equal)
DEFAULTS: dict[str, Any] = {
    "tile": 320,
    "imgsz": 160,
    "overlap": 0.5,
    "min_visible": 0.4,
    "train_rasters": ["2019_YELL_2_528000_4978000_image_crop2"],
    "val_rasters": ["2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061"],
}

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, 0-based, x1 and y1 exclusive


@dataclass(frozen=True)
class Settings:
    """Conversion settings; every field is part of the cache key."""

    tile: int
    imgsz: int
    overlap: float
    min_visible: float
    train_rasters: tuple[str, ...]
    val_rasters: tuple[str, ...]

    @property
    def stride(self) -> int:
        """Pixels between neighbouring train tiles."""
        return max(1, round(self.tile * (1 - self.overlap)))


@dataclass
class Tile:
    """One tile: where it was cut (source pixels) and its crowns in tile pixels (source scale)."""

    split: str
    raster: str
    x: int
    y: int
    boxes: list[Box]
    clipped: int = 0  # crowns cut by the tile's edge whose visible part is labelled
    dropped: int = 0  # crowns cut by the tile's edge whose visible part is below min_visible

    @property
    def stem(self) -> str:
        return f"{self.raster}_x{self.x:04d}_y{self.y:04d}"


# ------------------------------------------------------------------------------------------- settings


def _int_option(key: str, value: Any, lo: int, hi: int | None = None) -> int:
    ok = not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= lo
    if not ok or (hi is not None and value > hi):
        bound = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
        raise AblateError(f"dataset {NAME} option {key}={value!r} is invalid; expected {bound}")
    return int(value)


def _float_option(key: str, value: Any, lo: float, hi: float, *, hi_open: bool) -> float:
    try:
        v = float(value)
        ok = not isinstance(value, bool) and lo <= v and (v < hi if hi_open else v <= hi)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        bound = f"[{lo}, {hi})" if hi_open else f"({lo}, {hi}]"
        raise AblateError(f"dataset {NAME} option {key}={value!r} is invalid; expected a number in {bound}")
    return v


def _rasters(key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else None
    if not items:
        raise AblateError(
            f"dataset {NAME} option {key}={value!r} is invalid; "
            f"expected a non-empty list of: {', '.join(RASTERS)}"
        )
    for item in items:
        if item not in RASTERS:
            raise AblateError(f"dataset {NAME} {key}: raster {item!r} is not one of: {', '.join(RASTERS)}")
    if len(set(items)) != len(items):
        raise AblateError(f"dataset {NAME} option {key}={items!r} lists a raster twice")
    return tuple(items)


def settings(**kw: Any) -> Settings:
    """:data:`DEFAULTS` overridden by ``kw``, validated; bad or unknown options raise AblateError."""
    unknown = sorted(set(kw) - set(DEFAULTS))
    if unknown:
        raise AblateError(f"unknown option '{unknown[0]}' for dataset {NAME}; valid: {', '.join(DEFAULTS)}")
    v = {**DEFAULTS, **kw}
    tile = _int_option("tile", v["tile"], MIN_IMGSZ)
    s = Settings(
        tile=tile,
        imgsz=_int_option("imgsz", v["imgsz"], MIN_IMGSZ, tile),
        overlap=_float_option("overlap", v["overlap"], 0.0, 1.0, hi_open=True),
        min_visible=_float_option("min_visible", v["min_visible"], 0.0, 1.0, hi_open=False),
        train_rasters=_rasters("train_rasters", v["train_rasters"]),
        val_rasters=_rasters("val_rasters", v["val_rasters"]),
    )
    if s.min_visible == 0.0:
        raise AblateError(f"dataset {NAME} option min_visible=0 is invalid; expected a number in (0, 1]")
    shared = sorted(set(s.train_rasters) & set(s.val_rasters))
    if shared:
        raise AblateError(
            f"dataset {NAME}: raster {shared[0]!r} is in both train_rasters and val_rasters; "
            "train and val must come from different rasters"
        )
    return s


# ----------------------------------------------------------------------------------------------- wheel


def wheel_path(root: Path) -> Path:
    """Where the pinned wheel lives under the data root."""
    return Path(root) / DOWNLOADS / WHEEL


def fetch_command(directory: Path) -> list[str]:
    """The pip command that downloads the pinned wheel (and nothing else) into ``directory``."""
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", REQUIREMENT,
        "-d", str(directory),
    ]  # fmt: skip


def _fetch_text(directory: Path) -> str:
    return f"python -m pip download --no-deps --only-binary=:all: {REQUIREMENT} -d {directory}"


def _fetch_hint(directory: Path) -> str:
    return f"dataset={NAME} needs the deepforest 2.1.0 wheel: run `{_fetch_text(directory)}`"


def _pip_download(directory: Path) -> subprocess.CompletedProcess[str]:
    """Run pip; its output is kept for the log (a test replaces this function)."""
    return subprocess.run(
        fetch_command(directory), capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, place: Path) -> None:
    """``path`` (the wheel at ``place``, or pip's download meant for it) must be the pinned wheel."""
    got = file_sha256(path)
    if got == WHEEL_SHA256:
        return
    if path == place:
        raise AblateError(
            f"{place} has sha256 {got}, but the pinned {WHEEL} has {WHEEL_SHA256}: delete the file and "
            f"fetch it again: `{_fetch_text(place.parent)}`"
        )
    raise AblateError(
        f"pip fetched {WHEEL} with sha256 {got}, but the pinned wheel has {WHEEL_SHA256}; nothing was "
        f"kept: check the package index pip uses (pip config list), then run `{_fetch_text(place.parent)}`"
    )


def fetch_wheel(root: Path) -> Path:
    """The pinned wheel under ``root``, downloaded with pip when absent; its sha256 checked.

    The download goes to a temp dir and is moved into place only after the checksum matched. Raises
    AblateError with the command to run when pip cannot get it (no network), or on a checksum mismatch.
    """
    path = wheel_path(root)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch.", dir=path.parent))
        try:
            log.info("fetching %s with pip into %s", REQUIREMENT, path.parent)
            try:
                proc = _pip_download(tmp)
                failed = proc.returncode != 0 or not (tmp / WHEEL).is_file()
                if failed:
                    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    log.info("pip download failed (exit %s): %s", proc.returncode, last)
            except (OSError, subprocess.SubprocessError) as e:
                log.info("pip download failed: %s", e)
                failed = True
            if failed:
                raise AblateError(_fetch_hint(path.parent))
            _check_sha256(tmp / WHEEL, path)
            os.replace(tmp / WHEEL, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _check_sha256(path, path)
    return path


# ------------------------------------------------------------------------------------------ conversion


def parse_voc(text: bytes | str) -> tuple[int, int, list[tuple[str, Box]]]:
    """Width, height and ``(label, box)`` of every object of a Pascal VOC annotation.

    VOC pixel coordinates are 1-based and inclusive; the boxes returned are 0-based and half-open.
    """
    root = ET.fromstring(text)
    width, height = (int(root.findtext(f"size/{k}", "0")) for k in ("width", "height"))
    objects = []
    for obj in root.iter("object"):
        xmin, ymin, xmax, ymax = (
            float(obj.findtext(f"bndbox/{k}", "nan")) for k in ("xmin", "ymin", "xmax", "ymax")
        )
        objects.append((str(obj.findtext("name")), (xmin - 1, ymin - 1, xmax, ymax)))
    return width, height, objects


def tile_origins(length: int, tile: int, stride: int, *, partition: bool) -> list[int]:
    """Offsets of the tiles along one axis of ``length`` px.

    ``partition``: every ``tile`` px, the last cell running past the edge (it is padded). Otherwise every
    ``stride`` px with the last tile aligned to the edge (a raster shorter than a tile: one padded tile).
    """
    if partition:
        return list(range(0, length, tile))
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile, stride))
    return [*origins, length - tile]


def cut(split: str, raster: str, width: int, height: int, crowns: list[Box], s: Settings) -> list[Tile]:
    """The tiles of one raster with their crowns (see the module docstring for the rules)."""
    partition = split == "val"
    xs = tile_origins(width, s.tile, s.stride, partition=partition)
    ys = tile_origins(height, s.tile, s.stride, partition=partition)
    tiles = []
    for y in ys:
        for x in xs:
            t = Tile(split, raster, x, y, [])
            x1, y1 = min(x + s.tile, width), min(y + s.tile, height)  # the raster's part of the tile
            for bx0, by0, bx1, by1 in crowns:
                cx0, cy0, cx1, cy1 = max(bx0, x), max(by0, y), min(bx1, x1), min(by1, y1)
                if cx1 <= cx0 or cy1 <= cy0:
                    continue
                inside = (cx1 - cx0) * (cy1 - cy0) / ((bx1 - bx0) * (by1 - by0))
                if inside < 1.0:
                    if inside < s.min_visible:
                        t.dropped += 1
                        continue
                    t.clipped += 1
                t.boxes.append((cx0 - x, cy0 - y, cx1 - x, cy1 - y))
            tiles.append(t)
    return tiles


def _decode(data: bytes, name: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise AblateError(f"{name} in {WHEEL} is not a readable image; delete the wheel and fetch it again")
    return img


def read_raster(wheel: zipfile.ZipFile, raster: str) -> tuple[np.ndarray, list[tuple[str, Box]]]:
    """A raster of the wheel (BGR uint8) and its labelled crowns; sizes are checked against the XML."""
    img = _decode(wheel.read(f"{WHEEL_DATA}{raster}.png"), f"{raster}.png")
    width, height, objects = parse_voc(wheel.read(f"{WHEEL_DATA}{raster}.xml"))
    if (img.shape[1], img.shape[0]) != (width, height) or (width, height) != RASTERS[raster]:
        raise AblateError(
            f"{raster}: image {img.shape[1]}x{img.shape[0]}, XML {width}x{height}, expected "
            f"{RASTERS[raster][0]}x{RASTERS[raster][1]}; delete the wheel and fetch it again"
        )
    return img, objects


def tile_image(img: np.ndarray, t: Tile, s: Settings) -> np.ndarray:
    """The tile's pixels (padded with grey past the raster's edge), resized to ``imgsz``."""
    crop = img[t.y : t.y + s.tile, t.x : t.x + s.tile]
    if crop.shape[:2] != (s.tile, s.tile):
        padded = np.full((s.tile, s.tile, 3), PAD_VALUE, np.uint8)
        padded[: crop.shape[0], : crop.shape[1]] = crop
        crop = padded
    if s.imgsz == s.tile:
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (s.imgsz, s.imgsz), interpolation=cv2.INTER_AREA)


def convert(wheel: Path, s: Settings, out: Path) -> dict[str, Any]:
    """Write images/{train,val}, labels/{train,val} under ``out``; returns the tile index (tiles.json)."""
    index: dict[str, Any] = {"rasters": {}, "tiles": []}
    with zipfile.ZipFile(wheel) as zf:
        for split in SPLITS:
            images, labels = out / "images" / split, out / "labels" / split
            images.mkdir(parents=True)
            labels.mkdir(parents=True)
            for raster in s.train_rasters if split == "train" else s.val_rasters:
                img, objects = read_raster(zf, raster)
                crowns = [box for _, box in objects]
                index["rasters"][raster] = {
                    "split": split,
                    "width": img.shape[1],
                    "height": img.shape[0],
                    "labels": {
                        k: [lab for lab, _ in objects].count(k) for k in sorted({o[0] for o in objects})
                    },
                    "boxes": [list(b) for b in crowns],
                }
                for t in cut(split, raster, img.shape[1], img.shape[0], crowns, s):
                    if not cv2.imwrite(str(images / f"{t.stem}.png"), tile_image(img, t, s)):
                        raise OSError(f"could not write {images / t.stem}.png")
                    (labels / f"{t.stem}.txt").write_text(label_text([(0, *b) for b in t.boxes], s.tile))
                    index["tiles"].append(dataclasses.asdict(t))
    return index


def _params(s: Settings) -> dict[str, Any]:
    return {
        "name": NAME,
        "version": CONVERSION_VERSION,
        "wheel_sha256": WHEEL_SHA256,
        "pad_value": PAD_VALUE,
        **dataclasses.asdict(s),
    }


def dataset_dir(root: Path | str | None, s: Settings) -> Path:
    """The cache directory of these settings under ``root`` (default: the data root)."""
    return Path(root if root is not None else default_data_root()) / f"{NAME}-{cache_key(_params(s))}"


def make(root: Path | str | None = None, *, seed: int = 0, **kw: Any) -> Path:
    """Convert (or reuse from cache) the NEON tree dataset under ``root``; returns its data.yaml.

    ``kw`` overrides :data:`DEFAULTS`. ``seed`` exists for the embedded datasets' interface: the
    conversion has no randomness, so only 0 is accepted. Bad settings, a wheel pip cannot fetch and a
    checksum mismatch raise AblateError before anything is written.
    """
    if seed != 0:
        raise AblateError(f"dataset {NAME} is converted, not generated: generator_seed={seed!r} must be 0")
    s = settings(**kw)
    root = Path(root if root is not None else default_data_root())
    out = dataset_dir(root, s)
    if is_complete(out):
        log.info("using cached dataset %s", out)
        _refresh_path(out)
        return out / "data.yaml"
    wheel = fetch_wheel(root)
    log.info("converting %s into %s: %d px tiles stored at %d px", WHEEL, out, s.tile, s.imgsz)
    _convert_into(wheel, s, out)
    return out / "data.yaml"


def _convert_into(wheel: Path, s: Settings, out: Path) -> None:
    """Convert into a temp dir beside ``out``, mark it complete, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    if is_complete(out):  # another process finished it since we looked
        return
    if out.exists():
        log.warning("dataset dir %s is incomplete (no %s); converting again", out, COMPLETE_MARKER)
        shutil.rmtree(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        index = convert(wheel, s, tmp)
        (tmp / TILES_JSON).write_text(json.dumps(index) + "\n")
        (tmp / "params.json").write_text(json.dumps(_params(s), indent=2, sort_keys=True) + "\n")
        _write_yaml(tmp / "data.yaml", _data_yaml(out, NAMES))
        (tmp / COMPLETE_MARKER).write_text(cache_key(_params(s)) + "\n")
        tmp.chmod(0o755)
        try:
            os.rename(tmp, out)
        except OSError:
            if not is_complete(out):
                raise
            log.info("dataset %s was completed by another process; using it", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------ statistics

COCO_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))


def box_stats(boxes: Sequence[Box], scale: float = 1.0) -> dict[str, Any]:
    """Count, side sqrt(w*h) in px (median, min, max) and COCO area-bucket shares, at ``scale``."""
    wh = np.array([(b[2] - b[0], b[3] - b[1]) for b in boxes], float).reshape(-1, 2) * scale
    side = np.sqrt(wh[:, 0] * wh[:, 1])
    area = side**2
    out: dict[str, Any] = {"count": len(side)}
    if len(side):
        out.update(median=float(np.median(side)), min=float(side.min()), max=float(side.max()))
        out.update({k: float(np.mean((area >= lo) & (area < hi))) for k, lo, hi in COCO_BUCKETS})
    return out


def _crown_coverage(index: dict[str, Any], split: str, s: Settings) -> tuple[int, int]:
    """Crowns of ``split``'s rasters labelled in no tile, and labelled (whole or clipped) in several."""
    unlabelled = several = 0
    for name, r in index["rasters"].items():
        if r["split"] != split:
            continue
        for box in r["boxes"]:
            n = sum(len(t.boxes) for t in cut(split, name, r["width"], r["height"], [tuple(box)], s))
            unlabelled += n == 0
            several += n > 1
    return unlabelled, several


def statistics(data_dir: Path) -> dict[str, Any]:
    """Per raster and per split: tiles, crowns, clipped / dropped crowns and box sizes (source px and
    stored px), read from a converted dataset's tiles.json and params.json."""
    index = json.loads((data_dir / TILES_JSON).read_text())
    params = json.loads((data_dir / "params.json").read_text())
    s = Settings(**{k: params[k] for k in DEFAULTS})
    scale = s.imgsz / s.tile
    rasters = {
        name: {
            "split": r["split"],
            "size": f"{r['width']}x{r['height']}",
            "labels": r["labels"],
            "source": box_stats([tuple(b) for b in r["boxes"]]),
        }
        for name, r in index["rasters"].items()
    }
    splits = {}
    for split in SPLITS:
        tiles = [t for t in index["tiles"] if t["split"] == split]
        boxes = [tuple(b) for t in tiles for b in t["boxes"]]
        unlabelled, several = _crown_coverage(index, split, s)
        splits[split] = {
            "rasters": sorted({t["raster"] for t in tiles}),
            "tiles": len(tiles),
            "tiles_with_crowns": sum(bool(t["boxes"]) for t in tiles),
            "crowns_in_rasters": sum(len(index["rasters"][r]["boxes"]) for r in {t["raster"] for t in tiles}),
            "instances": len(boxes),
            "clipped": sum(t["clipped"] for t in tiles),
            "dropped": sum(t["dropped"] for t in tiles),
            "crowns_unlabelled": unlabelled,
            "crowns_in_several_tiles": several,
            "source_px": box_stats(boxes),
            "stored_px": box_stats(boxes, scale),
        }
    return {"params": params, "rasters": rasters, "splits": splits}


def _size_line(st: dict[str, Any]) -> str:
    if not st["count"]:
        return "no boxes"
    return (
        f"side median {st['median']:.1f} px (min {st['min']:.1f}, max {st['max']:.1f}); COCO small "
        f"{st['small']:.0%}, medium {st['medium']:.0%}, large {st['large']:.0%}"
    )


def format_statistics(stats: dict[str, Any]) -> str:
    """The statistics as plain text (what ``--stats`` prints)."""
    p = stats["params"]
    lines = [
        f"neon_trees: {p['tile']} px tiles stored at {p['imgsz']} px (scale {p['imgsz'] / p['tile']:g}), "
        f"train overlap {p['overlap']:g} (stride {Settings(**{k: p[k] for k in DEFAULTS}).stride} px), "
        f"val partitioned; crowns cut by a tile edge kept when >= {p['min_visible']:g} of the area is inside",
        "rasters (source px; side = sqrt(w*h)):",
    ]
    for name, r in stats["rasters"].items():
        labels = ", ".join(f"{k} {v}" for k, v in r["labels"].items())
        lines.append(f"  {r['split']:5s} {name} {r['size']}: {labels}; {_size_line(r['source'])}")
    for split, s in stats["splits"].items():
        lines += [
            f"{split}: {s['tiles']} tiles ({s['tiles_with_crowns']} with crowns) "
            f"from {', '.join(s['rasters'])}",
            f"  {s['crowns_in_rasters']} crowns in the rasters -> {s['instances']} box instances "
            f"({s['clipped']} clipped at a tile edge, {s['dropped']} fragments below min_visible unlabelled)",
            f"  crowns labelled in several tiles {s['crowns_in_several_tiles']}, in none "
            f"{s['crowns_unlabelled']}",
            f"  source px: {_size_line(s['source_px'])}",
            f"  stored px: {_size_line(s['stored_px'])}",
        ]
    return "\n".join(lines)


def config_settings() -> dict[str, Any]:
    """The conversion settings of conf/dataset/neon_trees.yaml (what ``dataset=neon_trees`` uses)."""
    spec = yaml.safe_load((CONF_DIR / "dataset" / f"{NAME}.yaml").read_text())
    return {k: v for k, v in spec.items() if k not in ("name", "path", "generator", "generator_seed")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=None, help="data root (default: $ABLATE_DATA or data/)")
    parser.add_argument("--stats", action="store_true", help="print split and box-size statistics")
    parser.add_argument("--json", action="store_true", help="with --stats: as JSON")
    parser.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet PNG here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        data_yaml = make(args.root, **config_settings())
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"data: {data_yaml}")
    if args.stats:
        stats = statistics(data_yaml.parent)
        print(json.dumps(stats, indent=2) if args.json else format_statistics(stats))
    if args.sheet is not None:
        from ablate.datasets import contact_sheet

        print(f"sheet: {contact_sheet(data_yaml, args.sheet, split='val', count=12)}")


if __name__ == "__main__":
    main()
