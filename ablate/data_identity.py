"""What data a run used: the data YAML, its splits, their counts and a content hash, and the name of a
user's own dataset.

**Identity.** :func:`identify` reads a YOLO data YAML the way ultralytics does (``path``, ``train``/``val``/
``test``: directories, image lists or single images; label files beside ``images/`` in ``labels/``) and
returns a dict: ``source`` (``file``: a user's YAML, ``embedded``/``converted``: ablate's own data, whose
generator settings ``params.json`` are kept under ``generator``; ``ultralytics``: a named ultralytics
dataset), ``yaml``, ``root``, ``splits`` (the resolved directories, lists or files of each split), ``nc``,
per split ``images``, ``labels`` (label files found) and ``boxes`` (label lines), ``split_hashes`` and
``hash``. A split's hash covers the names (relative to ``root``) and bytes of its images and label files;
``hash`` covers the class names and every split's hash: any edited label, added image or renamed file
changes it, moving the dataset directory does not.

**Cache.** A file's digest is kept in ``<data.dir>/.hashes/<dataset>.json`` under its path with its size
and mtime; a file whose size and mtime match is not read again, so a sweep hashes its data once and each
later job only stats the files. A digest taken within :data:`RACY_S` of the file's mtime is not trusted
(the file may have changed again within the clock's resolution) and is taken again next time: data
generated a moment before its first run is read once more by the next job, then never again.

**Runs.** A record carries ``data_hash`` and ``data`` (:func:`record_fields`). The hash is not part of the
run key (the keys of unchanged data stay what they were); instead the cache check refuses a record of a
user's YAML whose data hash differs from the data there now (:func:`still_current`), so an edited dataset
is trained again, and the report never averages or pairs runs on different data.

**Names.** ``dataset=custom dataset.path=DATA.yaml`` is named after the YAML (:func:`custom_name`): its
``name:`` key, else its file stem (the parent directory's name for a generic stem such as ``data``),
unless ``dataset.name`` is given. Names only label; two datasets with one name never share a table
column: the report tells them apart by their data hash (``name@hash``).

    python -m ablate.data_identity path/to/data.yaml    # the identity and hash a record would carry
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from . import datasets
from .errors import AblateError
from .paths import CONF_DIR

if TYPE_CHECKING:
    from .records import RunRecord

log = logging.getLogger(__name__)

HASH_CHARS = 16  # length of a data hash (hex)
SHORT_CHARS = 8  # the part of it a table heading shows: name@1a2b3c4d
SPLIT_KEYS = ("train", "val", "test")
# as ultralytics.data.utils.IMG_FORMATS: the files of an image directory it trains on
IMG_FORMATS = frozenset(
    {"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"}
)
CACHE_DIR = ".hashes"  # under the data root: <data.dir>/.hashes/<dataset>.json
RACY_S = 2.0  # a digest taken this close after a file's mtime is taken again next time
# file stems that say nothing about the data: such a YAML is named after its directory
GENERIC_STEMS = frozenset({"data", "dataset", "datasets", "custom", "config", "default", "yolo"})


# ------------------------------------------------------------------------------------------------ names


@functools.cache
def placeholder_names() -> frozenset[str]:
    """Dataset names that stand for no user data: ``custom`` and every ``conf/dataset`` config of generated
    data (``path: null``); with ``dataset.path`` set, such a name came from the config group, not the user."""
    names = {"custom"}
    for conf in (CONF_DIR / "dataset").glob("*.yaml"):
        try:
            d = yaml.safe_load(conf.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(d, dict) and d.get("path") is None:
            names.update({conf.stem, str(d.get("name") or conf.stem)})
    return frozenset(names)


def is_local_yaml(path: str) -> bool:
    """Whether a ``dataset.path`` names a user's data YAML, not an ultralytics dataset (``coco8.yaml``)."""
    return datasets._ultralytics_name(path) is None or Path(path).expanduser().is_file()


def _yaml_name(path: Path) -> str | None:
    """The ``name:`` of a data YAML, when it has a non-empty string one (None when unreadable)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name.strip() if isinstance(name, str) and name.strip() else None


def custom_name(given: Any, path: str | Path) -> str:
    """The name of a user's dataset at ``path``: ``given`` (``dataset.name``) unless it is a placeholder
    (:func:`placeholder_names`), else the YAML's ``name:`` key, else its file stem, or for a generic stem
    (``data.yaml``) its directory's name."""
    if given is not None and str(given).strip() and str(given) not in placeholder_names():
        return str(given).strip()
    p = Path(str(path)).expanduser()
    from_yaml = _yaml_name(p)
    if from_yaml:
        return from_yaml
    stem = p.stem
    if stem.lower() in GENERIC_STEMS:
        parent = p.resolve().parent.name
        if parent and parent.lower() not in GENERIC_STEMS:
            return parent
    return stem


def dataset_spec(d: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset part of an experiment for a ``dataset.path``: its name and the path as given.

    A user's YAML is named by :func:`custom_name`; an ultralytics dataset keeps its config's name (or stem).
    """
    path = str(d["path"])
    if not is_local_yaml(path):
        return {"name": d.get("name") or Path(path).stem, "path": path}
    return {"name": custom_name(d.get("name"), path), "path": path}


# ------------------------------------------------------------------------------------------------ cache


def cache_dir(data_dir: Path | str | None = None) -> Path:
    """Where the digests are cached: ``<data_dir>/.hashes`` (default: the data root, ``$ABLATE_DATA``)."""
    return Path(data_dir if data_dir is not None else datasets.default_data_root()) / CACHE_DIR


def _file_digest(path: str) -> tuple[str, int | None]:
    """sha256 of a file's bytes, and its number of non-empty lines for a label file (``.txt``)."""
    with open(path, "rb") as f:
        data = f.read()
    lines = sum(1 for line in data.splitlines() if line.strip()) if path.endswith(".txt") else None
    return hashlib.sha256(data).hexdigest(), lines


@dataclass
class DigestCache:
    """The digests of one dataset's files: path -> [size, mtime_ns, digest, lines, hashed_ns]."""

    path: Path | None
    entries: dict[str, list[Any]] = field(default_factory=dict)
    changed: bool = False
    read: int = 0  # files whose bytes were read (for the log line)

    @classmethod
    def load(cls, path: Path | None) -> DigestCache:
        try:
            data = json.loads(path.read_text()) if path is not None else {}
        except (OSError, ValueError):
            data = {}
        entries = data.get("files") if isinstance(data, dict) else None
        return cls(path, entries if isinstance(entries, dict) else {})

    def digest(self, file: str) -> tuple[str, int | None]:
        """The file's digest and line count, read from the cache when its size and mtime match."""
        try:
            st = os.stat(file)
        except OSError as e:
            raise AblateError(
                f"dataset file '{file}' cannot be read ({e.strerror}); expected an image or label file"
            ) from None
        entry = self.entries.get(file)
        if (
            isinstance(entry, list)
            and len(entry) == 5
            and entry[0] == st.st_size
            and entry[1] == st.st_mtime_ns
            and entry[4] - st.st_mtime_ns > RACY_S * 1e9
        ):
            return str(entry[2]), entry[3]
        digest, lines = _file_digest(file)
        self.read += 1
        self.entries[file] = [st.st_size, st.st_mtime_ns, digest, lines, time.time_ns()]
        self.changed = True
        return digest, lines

    def save(self, keep: Iterable[str]) -> None:
        """Write the cache (atomically), without entries of files the dataset no longer has."""
        keep = set(keep)
        stale = set(self.entries) - keep
        if self.path is None or not (self.changed or stale):
            return
        for f in stale:
            del self.entries[f]
        try:
            from .records import write_json_atomic

            write_json_atomic(self.path, {"files": self.entries})
        except OSError as e:  # a read-only data root: hash again next time
            log.warning("could not cache data hashes in %s: %s", self.path, e)


def _cache_file(yaml_path: Path, data_dir: Path | str | None) -> Path:
    key = hashlib.sha256(str(yaml_path).encode()).hexdigest()[:16]
    return cache_dir(data_dir) / f"{yaml_path.parent.name}-{yaml_path.stem}-{key}.json"


# ------------------------------------------------------------------------------------------- the splits


def _split_targets(base: Path, value: Any) -> list[Path]:
    """The paths a split names (a string or a list), resolved against ``base`` as ultralytics does."""
    out = []
    for item in value if isinstance(value, list) else [value]:
        target = (base / str(item)).resolve()
        if not target.exists() and str(item).startswith("../"):
            target = (base / str(item)[3:]).resolve()
        out.append(target)
    return out


def _is_image(name: str) -> bool:
    return name.rpartition(".")[-1].lower() in IMG_FORMATS


def image_files(targets: Iterable[Path]) -> list[str]:
    """The image files of a split's targets as ultralytics lists them: every image under a directory
    (recursively), the lines of an image list (``./`` relative to the list), or an image file; sorted."""
    files: list[str] = []  # absolute: the targets are resolved
    for p in targets:
        if p.is_dir():
            for root, _, names in os.walk(p, followlinks=True):
                files += [os.path.join(root, n) for n in names if _is_image(n)]
        elif p.is_file() and _is_image(p.name):
            files.append(str(p))
        elif p.is_file():
            lines = p.read_text(encoding="utf-8-sig").strip().splitlines()
            parent = str(p.parent) + os.sep
            for x in (line.strip() for line in lines):
                x = x.replace("./", parent, 1) if x.startswith("./") else x
                files.append(os.path.abspath(x) if _is_image(x) else x)
        else:
            raise AblateError(
                f"dataset split '{p}' does not exist; expected an image directory, image list or image file"
            )
    return sorted(f for f in files if _is_image(f))


def label_file(image: str) -> str:
    """The label file ultralytics reads for ``image``: the last ``/images/`` becomes ``/labels/``, the
    extension ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return sb.join(image.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt"


def _relative(path: str, base: Path) -> str:
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return path


def _source_of(yaml_path: Path) -> tuple[str, dict[str, Any] | None]:
    """``embedded``/``converted`` with its ``params.json`` for ablate's own cached data, else ``file``."""
    params_file = yaml_path.parent / "params.json"
    if datasets.is_complete(yaml_path.parent) and params_file.is_file():
        try:
            params = json.loads(params_file.read_text())
        except (OSError, ValueError):
            params = None
        if isinstance(params, dict):
            kind = "converted" if params.get("name") in datasets.CONVERTED else "embedded"
            return kind, params
    return "file", None


def identify(data_yaml: Path | str, data_dir: Path | str | None = None) -> dict[str, Any]:
    """The identity of the data behind a data YAML (module docstring), its digests cached under
    ``data_dir`` (:func:`cache_dir`). A named ultralytics dataset (``coco8.yaml``) that is not on disk yet
    has no hash. Raises :class:`AblateError` for a YAML or split that cannot be read."""
    spec = str(data_yaml)
    if not Path(spec).expanduser().is_file() and datasets._ultralytics_name(spec) is not None:
        return _ultralytics_identity(spec, data_dir)
    yaml_path = Path(spec).expanduser().resolve()
    data = datasets._load_yaml(yaml_path)
    source, generator = _source_of(yaml_path)
    return _identity(yaml_path, data, source, generator, data_dir)


def _identity(
    yaml_path: Path,
    data: dict[str, Any],
    source: str,
    generator: dict[str, Any] | None,
    data_dir: Path | str | None,
) -> dict[str, Any]:
    if "val" not in data and "validation" in data:
        data["val"] = data["validation"]
    base = datasets.dataset_base(yaml_path, data).resolve()
    names = data.get("names")
    names = list(names.values()) if isinstance(names, dict) else list(names or [])
    cache = DigestCache.load(_cache_file(yaml_path, data_dir))
    t0 = time.perf_counter()
    out: dict[str, Any] = {"source": source, "yaml": str(yaml_path), "root": str(base), "splits": {}}
    out.update(nc=len(names), images={}, labels={}, boxes={}, split_hashes={})
    seen: list[str] = []
    for split in SPLIT_KEYS:
        if not data.get(split):
            continue
        targets = _split_targets(base, data[split])
        images = image_files(targets)
        h = hashlib.sha256()
        n_labels = n_boxes = 0
        for image in images:
            digest, _ = cache.digest(image)
            h.update(f"image\t{_relative(image, base)}\t{digest}\n".encode())
            label = label_file(image)
            if os.path.isfile(label):
                digest, lines = cache.digest(label)
                h.update(f"label\t{_relative(label, base)}\t{digest}\n".encode())
                n_labels, n_boxes = n_labels + 1, n_boxes + (lines or 0)
                seen.append(label)
        seen += images
        out["splits"][split] = [str(t) for t in targets]
        out["images"][split], out["labels"][split], out["boxes"][split] = len(images), n_labels, n_boxes
        out["split_hashes"][split] = h.hexdigest()[:HASH_CHARS]
    whole = json.dumps({"names": [str(n) for n in names], "splits": out["split_hashes"]}, sort_keys=True)
    out["hash"] = hashlib.sha256(whole.encode()).hexdigest()[:HASH_CHARS]
    if generator is not None:
        out["generator"] = generator
    cache.save(seen)
    if cache.read:
        log.info(
            "hashed %d of %d files of %s in %.1f s (digests cached in %s)",
            cache.read,
            len(seen),
            yaml_path,
            time.perf_counter() - t0,
            cache.path,
        )
    return out


def _ultralytics_identity(spec: str, data_dir: Path | str | None) -> dict[str, Any]:
    """A named ultralytics dataset: hashed when it is on disk already (ultralytics downloads it when it
    trains), else only named."""
    name = datasets._ultralytics_name(spec)
    out: dict[str, Any] = {"source": "ultralytics", "yaml": f"{name}.yaml", "hash": None}
    try:
        from ultralytics.utils import DATASETS_DIR
        from ultralytics.utils.checks import check_yaml

        packaged = Path(check_yaml(f"{name}.yaml"))
        data = yaml.safe_load(packaged.read_text())
        root = Path(data.get("path") or "")
        data["path"] = str(root if root.is_absolute() else DATASETS_DIR / root)
        if all(t.exists() for s in ("train", "val") for t in _split_targets(Path(data["path"]), data[s])):
            return {**_identity(packaged, data, "ultralytics", None, data_dir), "yaml": f"{name}.yaml"}
    except (AblateError, OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        log.debug("ultralytics dataset %s not hashed: %s", name, e)
    out["note"] = "not on disk when the run started (ultralytics downloads it): no hash"
    return out


# ------------------------------------------------------------------------------------------------- runs


def record_fields(data_yaml: Path | str, data_dir: Path | str | None = None) -> dict[str, Any]:
    """The record fields of the data a run uses: ``data_hash`` and ``data`` (:func:`identify`)."""
    identity = identify(data_yaml, data_dir)
    return {"data_hash": identity.get("hash"), "data": identity}


def generator_version(name: str) -> int | None:
    """The current version of an embedded generator or converter (None for neither)."""
    if name in datasets.CONVERTED:
        return getattr(datasets._converter(name), "CONVERSION_VERSION", None)
    return datasets.GENERATOR_VERSION if name in datasets.EMBEDDED else None


class UsesData(Protocol):
    """What :func:`still_current` reads of an experiment (ablate.experiment.Experiment)."""

    @property
    def dataset(self) -> dict[str, Any]: ...

    @property
    def data_dir(self) -> Path: ...


def current(exp: UsesData) -> Callable[[RunRecord], bool]:
    """The test that an ok record of ``exp``'s run key is a result on the data ``exp`` uses now, for
    :func:`ablate.records.reusable_record`: a record of data edited since is run again, not reused."""
    return functools.partial(still_current, exp)


def still_current(exp: UsesData, record: RunRecord) -> bool:
    """Whether an ok ``record`` of ``exp``'s run key is still a result on the data ``exp`` uses now.

    A user's YAML: the record's ``data_hash`` equals the data's hash now (a record without one, or data
    that can no longer be read, is kept). Embedded or converted data: the record's generator version
    equals the current one (its settings are part of the run key). Logs why a record is refused.
    """
    recorded = getattr(record, "data_hash", None)
    data = getattr(record, "data", None) or {}
    spec = exp.dataset
    if spec.get("path"):
        if not recorded or not is_local_yaml(str(spec["path"])):
            return True
        try:
            now = identify(datasets.resolve_data_yaml(str(spec["path"])), exp.data_dir).get("hash")
        except AblateError as e:
            log.warning("run %s: its data cannot be read to compare (%s); keeping its record", record.key, e)
            return True
        if now == recorded:
            return True
        log.info(
            "run %s was trained on data %s, but %s now hashes %s (edited): running it again",
            record.key,
            recorded,
            spec["path"],
            now,
        )
        return False
    generator = data.get("generator") if isinstance(data, dict) else None
    if not isinstance(generator, dict) or "version" not in generator:
        return True
    current = generator_version(str(generator.get("name")))
    if current is None or generator["version"] == current:
        return True
    log.info(
        "run %s was trained on %s generator version %s; it is now %s: running it again",
        record.key,
        generator.get("name"),
        generator["version"],
        current,
    )
    return False


# ----------------------------------------------------------------------------------------------- status


def short(data_hash: str | None) -> str:
    return str(data_hash or "")[:SHORT_CHARS]


def label(name: str, data_hash: str | None) -> str:
    """A table heading for ``name`` on data ``data_hash``, when one name holds several data."""
    return f"{name}@{short(data_hash)}" if data_hash else name


def describe(data: Mapping[str, Any] | None) -> str:
    """``/x/data.yaml, 16 train / 8 val images`` (the YAML and the counts a record's ``data`` holds)."""
    if not isinstance(data, Mapping) or not data:
        return "data not recorded"
    images = data.get("images") or {}
    counts = " / ".join(f"{n} {s}" for s, n in images.items()) if isinstance(images, Mapping) else ""
    where = str(data.get("yaml") or "")
    if data.get("source") in ("embedded", "converted") and isinstance(data.get("generator"), Mapping):
        where = f"{data['source']} {data['generator'].get('name')} ({where})"
    return f"{where}, {counts} images" if counts else where


def _records(results_dir: Path) -> list[dict[str, Any]]:
    from .records import RECORD, RUNS

    out = []
    for path in sorted((Path(results_dir) / RUNS).glob(f"*/{RECORD}")):
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("status") == "ok" and d.get("data_hash"):
            out.append(d)
    return out


def _current_hash(data: Mapping[str, Any]) -> str | None:
    """The hash of a user's YAML as it is now (None when it is not a user's YAML or cannot be read)."""
    if data.get("source") != "file" or not data.get("yaml"):
        return None
    try:
        return identify(str(data["yaml"])).get("hash")
    except (AblateError, OSError) as e:
        log.debug("cannot hash %s now: %s", data.get("yaml"), e)
        return None


def mixed_data(results_dir: Path | str) -> list[str]:
    """Lines for ``make status``: each dataset name whose ok runs were trained on different data (data
    hashes, older data first), with the runs on each, which is the data there now, and what to do."""
    by_name: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for d in _records(Path(results_dir)):
        by_name.setdefault(str(d.get("dataset") or ""), {}).setdefault(str(d["data_hash"]), []).append(d)
    lines: list[str] = []
    for name, found in sorted(by_name.items()):
        if len(found) < 2:
            continue
        # the older data first: by the earliest finish of its runs (then by hash)
        order = sorted(found, key=lambda h: (min(str(r.get("finished_at") or "") for r in found[h]), h))
        versions = {h: found[h] for h in order}
        headings = ", ".join(label(name, h) for h in versions)
        lines.append(
            f"data: dataset '{name}' holds runs on {len(versions)} different data ({headings}): runs on "
            "different data are never averaged or paired; the table shows them in separate columns"
        )
        current = None
        for h, runs in versions.items():
            current = current or _current_hash(runs[0].get("data") or {})
            seeds = ", ".join(str(s) for s in sorted({int(r.get("seed") or 0) for r in runs}))
            lines.append(
                f"  {label(name, h)}: {len(runs)} run{'s' * (len(runs) != 1)} (seeds {seeds}), "
                f"{describe(runs[0].get('data'))}"
            )
        if current in versions:
            lines.append(
                f"  the data there now is {label(name, current)}: running the other runs' configurations "
                "again trains them on it (the cache refuses a record whose data changed)"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m ablate.data_identity",
        description="The identity a run record would carry for a data YAML: splits, counts, content hash.",
    )
    p.add_argument("data", help="a YOLO data YAML (or a named ultralytics dataset already downloaded)")
    p.add_argument("--data-dir", default=None, help="data root whose .hashes/ caches the digests")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(json.dumps(identify(args.data, args.data_dir), indent=2))
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
