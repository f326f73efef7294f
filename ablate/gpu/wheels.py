"""The wheels a lent GPU machine needs to run ``python -m ablate.gpu_check``, and the command that runs it.

    python -m ablate.gpu.wheels [--dest .gpu-wheels]
    make gpu-wheels

The device machine (docs/gpu.md) has Python 3.12 with its own torch, torchvision, numpy, pandas, scipy,
matplotlib, OpenCV, ONNX Runtime, rich, joblib and pytest, but no ultralytics, Hydra or pycocotools, and
no network. This downloads the pinned cp312 manylinux wheels of what is missing, without their
dependencies (``--no-deps``), into ``--dest`` (git-ignored), builds the one that PyPI has only as a source
archive (antlr4-python3-runtime, pure Python), removes wheels of other versions (two versions of one
package stop the whole install), checks that the folder and the checkout together stay under the 64 MiB
that travels, and prints the exact device command with its ``carry`` list and time limit.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from .plan import ROOT

WHEEL_DIR = ".gpu-wheels"
PYTHON_VERSION = "3.12"
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# The versions of this project's environment (ultralytics is pinned in pyproject.toml; the others are the
# versions the tests ran with). wandb is not carried: the check runs with logger=none.
PINS: dict[str, str] = {
    "ultralytics": "8.4.190",
    "ultralytics-thop": "2.2.3",
    "ultralytics-platform": "0.1.99",
    "polars": "2.1.0",  # ultralytics' trainer reads its results.csv with polars when it saves a checkpoint
    "polars-runtime-32": "2.1.0",  # 54 MB: most of the folder
    "hydra-core": "1.3.8",
    "omegaconf": "2.3.1",
    "antlr4-python3-runtime": "4.9.3",
    "hydra-joblib-launcher": "1.2.0",
    "hydra-submitit-launcher": "1.2.0",
    "submitit": "1.5.4",
    "pycocotools": "2.0.11",
    "orjson": "3.13.0",
}
SOURCE_ONLY = frozenset({"antlr4-python3-runtime"})  # no wheel on PyPI: built here (pure Python)
LIMIT_BYTES = 64 * 2**20  # what travels to the device machine: the checkout and the carried folders
TIMEOUT_S = 560  # the run's limit: the check's 420 s budget, the install and some slack


def wheel_stem(name: str) -> str:
    """A distribution name as wheel file names spell it (``polars-runtime-32`` -> ``polars_runtime_32``)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_of(path: Path) -> tuple[str, str]:
    """(normalised name, version) of a wheel file."""
    name, version = path.name.split("-")[:2]
    return wheel_stem(name), version


def download_args(name: str, version: str, dest: Path) -> list[str]:
    """pip's arguments that fetch the cp312 manylinux wheel of ``name==version`` alone."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(dest),
        f"{name}=={version}",
    ]


def build_args(name: str, version: str, dest: Path) -> list[str]:
    """pip's arguments that build a wheel of a pure-Python source archive."""
    return ["wheel", "--no-deps", "-w", str(dest), f"{name}=={version}"]


def present(dest: Path) -> dict[str, Path]:
    """The wheels in ``dest`` by normalised name."""
    return {wheel_of(p)[0]: p for p in sorted(dest.glob("*.whl"))}


def stale(dest: Path, pins: dict[str, str] = PINS) -> list[Path]:
    """Wheels in ``dest`` that are not a pinned version of a pinned package."""
    wanted = {wheel_stem(n): v for n, v in pins.items()}
    return [p for p in sorted(dest.glob("*.whl")) if wanted.get(wheel_of(p)[0]) != wheel_of(p)[1]]


def missing(dest: Path, pins: dict[str, str] = PINS) -> list[str]:
    """The pinned packages without a wheel of their pinned version in ``dest``."""
    have = {wheel_of(p) for p in dest.glob("*.whl")}
    return [n for n, v in pins.items() if (wheel_stem(n), v) not in have]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def tree_bytes(root: Path = ROOT) -> int:
    """What of the checkout travels: tracked files and untracked files git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    files = (root / f for f in out.split("\0") if f)
    return sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())


def device_command(dest: str = WHEEL_DIR) -> str:
    """The bash command the device tool runs (in the checkout's root, ``dest`` carried)."""
    return (
        "export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 MPLBACKEND=Agg; "
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
        f"{dest}/*.whl || exit 3; export PYTHONPATH=/tmp/site:$PWD; "
        "python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 "
        "|| echo 'ablate not pip-installed: imported from the checkout'; "
        "python3 -m ablate.gpu_check --out $OUT --work /tmp/gpu-check"
    )


def run_spec(dest: str = WHEEL_DIR) -> str:
    """The device tool's call, as it is to be made."""
    return f'run(command="{device_command(dest)}", carry=["{dest}"], timeout_s={TIMEOUT_S})'


def pip(args: list[str]) -> None:
    print("$ pip " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def prepare(dest: Path, pins: dict[str, str] = PINS) -> None:
    """Fetch or build every missing pinned wheel into ``dest``; remove the others."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in stale(dest, pins):
        print(f"removing {path.name} (not a pinned version)")
        path.unlink()
    for name in missing(dest, pins):
        build = build_args if name in SOURCE_ONLY else download_args
        pip(build(name, pins[name], dest))
    left = missing(dest, pins)
    if left:
        raise RuntimeError(f"no wheel for {', '.join(left)} in {dest}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablate.gpu.wheels", description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", default=WHEEL_DIR, help="folder in the checkout's root (default: %(default)s)")
    args = p.parse_args(argv)
    dest = ROOT / args.dest
    try:
        prepare(dest)
    except (subprocess.CalledProcessError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    wheels, tree = folder_bytes(dest), tree_bytes()
    print(f"{len(list(dest.glob('*.whl')))} wheels in {dest}: {wheels / 2**20:.1f} MiB")
    print(f"travels: {(wheels + tree) / 2**20:.1f} MiB (checkout {tree / 2**20:.1f} MiB), limit 64 MiB")
    if wheels + tree > LIMIT_BYTES:
        print("error: over the 64 MiB that travels", file=sys.stderr)
        return 1
    print("device call (from the checkout the device tool sends):")
    print(run_spec(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
