"""Position scans: +pos=scan expands to one single-layer job per index; records carry the strides; tables
and figures sort positions by layer index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.placement import expand_scans
from ablate.report import make_tables
from ablate.report.load import load_records

from .helpers import config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def load(tmp_path: Path):  # noqa: ANN201
    return lambda job: config(job, tmp_path / "results", tmp_path / "data")


def test_scan_visits_every_layer_before_the_head(load) -> None:  # noqa: ANN001
    jobs = expand_scans([["+attn=rala", "+pos=scan", "seed=0"], ["seed=0"]], load)
    scans = [j for j in jobs if "+pos=custom" in j]
    assert [j[-1] for j in scans] == [f"pos.layers=[{i}]" for i in range(21)]  # yolo12n: Detect is 21
    assert all("seed=0" in j and "+attn=rala" in j and "+pos=scan" not in j for j in scans)
    assert ["seed=0"] in jobs  # other jobs untouched


def test_scan_of_given_indices_and_of_attention_blocks(load) -> None:  # noqa: ANN001
    jobs = expand_scans([["+attn=rala", "+pos=scan", "pos.layers=[14,2]"]], load)
    assert jobs == [
        ["+attn=rala", "+pos=custom", "pos.layers=[14]"],
        ["+attn=rala", "+pos=custom", "pos.layers=[2]"],
    ]
    replace = expand_scans([["+attn=area", "+pos=scan", "pos.mode=replace"]], load)
    assert [j[-1] for j in replace] == ["pos.layers=[6]", "pos.layers=[8]"]  # yolo12n's A2C2f blocks
    assert all("pos.mode=replace" in j for j in replace)


def test_scan_outside_a_sweep_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ablate",
            "+attn=rala",
            "+pos=scan",
            "action=inspect",
            f"results.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: pos=scan is a sweep over layer indices")
    assert not (tmp_path / "runs").exists()


def test_profile_scan_sweep_records_strides_and_sorts_by_index(tmp_path: Path) -> None:
    results = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "ablate", "+attn=tssa", "+pos=scan", "pos.layers=[14,2,4]", "action=profile",
        "logger=none", "dataset=shapes", "seed=0", "train.imgsz=64", "measure.latency.after_sweep=false",
        "hydra.callbacks.sweep_summary.table=false", f"results.dir={results}",
        f"data.dir={tmp_path / 'data'}", "-m",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [r for r in load_records(results).records if r["attn"] == "tssa"]
    by_layer = {tuple(r["layers"]): r for r in recs}
    assert set(by_layer) == {(2,), (4,), (14,)} and all(r["pos"] == "custom" for r in recs)
    # yolo12n: layer 2 is a P2/4 map, 4 the P3/8 backbone map, 14 the P3/8 neck output
    assert [by_layer[(i,)]["strides"] for i in (2, 4, 14)] == [[4], [8], [8]]
    report = make_tables(results, figures=False)
    rows = report.summary[report.summary["attn"] == "tssa"]
    assert list(rows["pos_label"]) == ["custom [2]", "custom [4]", "custom [14]"]
    md = (results / "tables" / "ablation.md").read_text()
    assert md.index("custom [2]") < md.index("custom [4]") < md.index("custom [14]")
    assert json.loads(rows.iloc[0]["layers"]) == [2]
