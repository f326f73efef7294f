"""The fidelity study: its statistics on known numbers, its input checks, and the pipeline end to end."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from ablate.errors import AblateError
from ablate.experiment import experiment_from_config
from ablate.fidelity import agreement
from ablate.fidelity.study import _candidate_keys, load_study, sweep_commands

from .helpers import SMALL, config

PROTOCOLS = ("quick", "reference")


def pairs_frame(
    deltas: dict[tuple[str, str], list[float]], kinds: dict[str, tuple[str, str]]
) -> pd.DataFrame:
    """Per-seed pairs whose Δ are the given numbers (comparator 50 points, variant 50 + Δ)."""
    rows = []
    for (protocol, comparison), values in deltas.items():
        kind, expect = kinds.get(comparison, ("module", ""))
        for seed, d in enumerate(values):
            rows.append(
                {"dataset": "d", "protocol": protocol, "comparison": comparison, "kind": kind,
                 "expect": expect, "seed": seed, "variant": 50.0 + d, "versus": 50.0, "same_base": True}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_deltas_are_paired_t_intervals_and_identical_seeds_are_flagged() -> None:
    pairs = pairs_frame({("quick", "a"): [1.0, 2.0, 4.0], ("quick", "b"): [0.5, 0.5, 0.5]}, {})
    d = agreement.deltas(pairs).set_index("comparison")
    values = np.array([1.0, 2.0, 4.0])
    low, high = stats.t.interval(0.95, 2, loc=values.mean(), scale=stats.sem(values))
    assert d.loc["a", "delta"] == pytest.approx(7 / 3)
    assert (d.loc["a", "ci_low"], d.loc["a", "ci_high"]) == pytest.approx((low, high))
    assert not d.loc["a", "identical"] and d.loc["b", "identical"] and d.loc["b", "n"] == 3


def test_mismatched_bases_are_left_out_and_counted() -> None:
    pairs = pairs_frame({("quick", "a"): [1.0, 2.0, 9.0]}, {})
    pairs.loc[2, "same_base"] = False
    d = agreement.deltas(pairs).iloc[0]
    assert d["n"] == 2 and d["delta"] == pytest.approx(1.5) and d["mismatched_bases"] == 1


def study_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    deltas = {
        ("quick", "big"): [3.0, 3.5, 2.5], ("reference", "big"): [5.0, 6.0, 5.5],
        ("quick", "neg"): [-1.0, -1.5, -1.2], ("reference", "neg"): [-2.0, -2.5, -2.2],
        ("quick", "tiny"): [0.3, -0.1, 0.2], ("reference", "tiny"): [-0.4, -0.2, -0.3],
        ("quick", "null"): [0.0, 0.0, 0.0], ("reference", "null"): [0.0, 0.0, 0.0],
        ("quick", "drop"): [-3.0, -2.0, -2.5], ("reference", "drop"): [-4.0, -3.0, -3.5],
    }  # fmt: skip
    kinds = {"null": ("null", ""), "drop": ("positive", "-")}
    pairs = pairs_frame(deltas, kinds)
    return pairs, agreement.side_by_side(agreement.deltas(pairs), PROTOCOLS)


def test_agreement_figures_on_a_known_study() -> None:
    pairs, rows = study_rows()
    by = rows.set_index("comparison")
    assert by.loc["tiny", "flip"] and not by.loc["big", "flip"] and not by.loc["neg", "flip"]
    # reference CIs: big, neg, tiny and drop exclude 0 (tiny flipped), null does not (identical seeds)
    assert agreement.sign_agreement(rows) == (3, 4)
    bins = dict((label, (f, n)) for label, f, n in agreement.flips_by_bin(rows))
    assert bins["0–0.5"] == (1, 2) and bins["1–2"] == (0, 1) and bins["2–5"] == (0, 2)
    assert agreement.kept_sign_from(rows) == (pytest.approx(1.2333, abs=1e-3), 3)
    quick = [by.loc[c, "quick_delta"] for c in by.index]
    ref = [by.loc[c, "reference_delta"] for c in by.index]
    tau, low, high = agreement.tau_with_ci(pairs, "d", PROTOCOLS, resamples=300)
    assert tau == pytest.approx(stats.kendalltau(quick, ref).statistic)
    assert -1 <= low <= tau <= high <= 1


def test_control_verdicts() -> None:
    _, rows = study_rows()
    v = pd.DataFrame(agreement.control_verdicts(rows)).set_index(["comparison", "protocol"])
    assert v.loc[("null", "quick"), "ok"] and v.loc[("null", "quick"), "identical"]
    assert v.loc[("drop", "quick"), "ok"] and v.loc[("drop", "reference"), "ok"]
    _, flipped = study_rows()
    flipped.loc[flipped["comparison"] == "drop", "expect"] = "+"
    w = pd.DataFrame(agreement.control_verdicts(flipped)).set_index(["comparison", "protocol"])
    assert not w.loc[("drop", "quick"), "ok"]  # detected, but with the wrong sign


def test_kept_sign_is_none_when_the_largest_flips() -> None:
    rows = pd.DataFrame({"quick_delta": [2.0, 0.1], "reference_delta": [-1.0, 0.2]})
    rows["flip"] = np.sign(rows["quick_delta"]) != np.sign(rows["reference_delta"])
    assert agreement.kept_sign_from(rows) is None
    assert math.isnan(agreement.kendall_tau(np.array([1.0, 2.0]), np.array([1.0, 2.0])))


def test_default_study_and_its_sweeps(tmp_path: Path) -> None:
    study = load_study(
        "default", only=["rala", "identity", "no_area_attention", "yolo12s"], datasets=["shapes"]
    )
    assert [c.name for c in study.comparisons] == ["rala", "identity", "no_area_attention", "yolo12s"]
    assert study.protocols == PROTOCOLS and study.seeds == (0, 1, 2)
    commands = [" ".join(c[3:]) for c in sweep_commands(study, tmp_path, jobs=2)]
    # per protocol: one sweep of the modules at neck, one at a2c2f, the baseline, yolo12s, yolo12n
    assert len(commands) == 10
    assert any(
        c.startswith("+pos=neck +attn=rala,identity dataset=shapes seed=0,1,2 train=quick") for c in commands
    )
    assert sum("model=yolo12s" in c for c in commands) == 2
    assert all(c.endswith("-m") and "baseline=false" in c for c in commands)


def test_default_study_runs_its_run_list_without_only() -> None:
    # sized to one session: halo, tssa, no_area_attention and the scale control are in the study, run
    # with --only; by default the modules the first study found an effect of, and the working controls
    study = load_study("default", datasets=["shapes"])
    names = [c.name for c in study.comparisons]
    assert names == ["rala", "fla", "area", "identity", "low_res"]
    assert {c.kind for c in study.comparisons} == {"module", "null", "positive"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "nonesuch"}, "study 'nonesuch' is not defined; valid: default"),
        ({"only": ["rala", "resnet"]}, "comparison 'resnet' is not in study 'default'"),
        ({"seeds": [0]}, "at least 2"),
        ({"overrides": ["seed=3"]}, "'seed=3' is set by the fidelity study itself"),
        ({"datasets": ["nonesuch"]}, "dataset=nonesuch"),
    ],
)
def test_bad_input_is_one_line_before_any_work(kwargs: dict, message: str) -> None:
    with pytest.raises(AblateError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_study(**{"name": "default", **kwargs})


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.fidelity", "--only", "resnet", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: comparison 'resnet'")
    assert len(proc.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())


def test_fidelity_end_to_end_on_two_configurations(tmp_path: Path) -> None:
    """Two comparisons (a module and the null control), both protocols, two seeds, tiny settings."""
    study = tmp_path / "tiny.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "comparisons": {
                    "rala": {"kind": "module", "variant": ["+attn=rala", "+pos=neck"], "versus": []},
                    "identity": {"kind": "null", "variant": ["+attn=identity", "+pos=neck"], "versus": []},
                },
                "datasets": ["shapes"],
                "protocols": ["quick", "reference"],
                "seeds": [0, 1],
                "metric": "map50_95",
            }
        )
    )
    tiny = [o for o in SMALL if not o.startswith("measure.")] + [
        "train.base.epochs=1",
        "train.base.candidates=1",
        "measure.latency.after_sweep=false",
    ]
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "ablate.fidelity", "--study", str(study), "--results", str(results), *tiny]
    proc = subprocess.run(
        [*cmd, f"data.dir={tmp_path / 'data'}"], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    csv = pd.read_csv(results / "fidelity" / "fidelity.csv")
    assert sorted(csv["comparison"]) == ["identity", "rala"]
    assert (csv["quick_n"] == 2).all() and (csv["reference_n"] == 2).all()
    null = csv.set_index("comparison").loc["identity"]
    # the null control through the whole machinery: exactly the baseline's numbers on every seed
    assert null["quick_delta"] == 0 and null["reference_delta"] == 0 and null["quick_identical"]
    assert "Control identity (must read 0) under quick: ok" in proc.stdout
    assert (results / "figures" / "fidelity.png").stat().st_size > 0
    assert "Kendall τ" in (results / "fidelity" / "fidelity.md").read_text()


def test_arms_with_bases_of_their_own_are_paired_by_seed_not_by_base(tmp_path: Path) -> None:
    # a module and its baseline choose from one set of base candidates (a pair that fine-tuned two different
    # bases is left out); another input size trains bases of its own, so its pairs are kept
    def exp(*overrides: str) -> Any:
        return experiment_from_config(config(["dataset=shapes", *overrides], tmp_path / "r", tmp_path / "d"))

    base = _candidate_keys(exp())
    assert base and _candidate_keys(exp("+attn=rala", "+pos=neck")) == base
    assert _candidate_keys(exp("train.imgsz=64")) != base
    assert _candidate_keys(exp("train.init=scratch")) == ()
