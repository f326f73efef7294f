"""make table: runs.csv, summary statistics, paired Δs, LaTeX/Markdown, figures, CLI filters and errors.

The fixture writes records with known metrics; expected values are computed here independently with
numpy and scipy.stats.ttest_rel.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from ablate import report as reporting
from ablate.records import RunRecord, run_dir, versions, write_record
from ablate.report import load, render, statistics
from ablate.report.__main__ import main as report_main

from .helpers import skip_or_fail_in_ci

REPO = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]
QUICK = {"name": "quick", "epochs": 40, "imgsz": 96, "batch": 8, "lr0": 0.001, "extra": {}}
LONG = {**QUICK, "epochs": 80}
HASH_Q, HASH_L = "q" * 16, "l" * 16

# (train settings, dataset, attn, pos) -> per-seed (map50, map50_95, ap_small); params, gflops, latency
MAP = {
    (HASH_Q, "shapes", "none", "none"): [(0.50, 0.30, 0.10), (0.52, 0.32, 0.12), (0.51, 0.31, 0.11)],
    (HASH_Q, "shapes", "rala", "neck"): [(0.58, 0.360, 0.15), (0.59, 0.381, 0.16), (0.61, 0.369, 0.18)],
    (HASH_Q, "shapes", "fla", "neck"): [(0.53, 0.31, 0.12), (0.50, 0.30, 0.09), (0.54, 0.33, 0.13)],
    (HASH_Q, "shapes", "mhsa", "p5"): [(0.49, 0.29, 0.10)],  # one seed: no test
    (HASH_Q, "digits", "none", "none"): [(0.40, 0.20, 0.05), (0.42, 0.22, 0.07), (0.41, 0.21, 0.06)],
    (HASH_Q, "digits", "rala", "neck"): [(0.44, 0.23, 0.08), (0.43, 0.25, 0.06), (0.47, 0.22, 0.09)],
    # the same configuration under longer training: never averaged with the quick one
    (HASH_L, "shapes", "none", "none"): [(0.70, 0.50, 0.30), (0.72, 0.52, 0.32)],
    (HASH_L, "shapes", "rala", "neck"): [(0.80, 0.60, 0.40), (0.81, 0.63, 0.42)],
    # no baseline on this dataset
    (HASH_Q, "odd_set", "tssa", "p4"): [(0.10, 0.05, 0.01), (0.12, 0.06, 0.02)],
}
MEASURES = {  # attn -> (params, gflops, latency of the architecture from the measurement phase)
    "none": (2_560_000, 0.150, 10.2),
    "rala": (2_650_000, 0.162, 12.1),
    "fla": (2_640_000, 0.160, 12.7),
    "mhsa": (2_700_000, 0.170, 15.0),
    "tssa": (2_600_000, 0.155, 11.1),
}
LATENCY_SETTINGS = {
    "latency_backend": "torch",
    "latency_device": "Test CPU",
    "latency_dtype": "float32",
    "latency_batch": 1,
    "latency_threads": 2,
}


def _ckey(train_hash: str, dataset: str, attn: str, pos: str, action: str = "train") -> str:
    return f"{action[:2]}{train_hash[:2]}{dataset[:3]}{attn}{pos}"


def _record(train_hash: str, dataset: str, attn: str, pos: str, seed: int, **kw: object) -> RunRecord:
    action = str(kw.pop("action", "train"))
    settings = QUICK if train_hash == HASH_Q else LONG
    base = dict(
        key=f"{_ckey(train_hash, dataset, attn, pos, action)}-s{seed}",
        status="ok",
        action=action,
        model="yolo12n",
        scale="n",
        attn=attn,
        attn_params={"rope": False} if attn == "rala" else {},
        pos=pos,
        layers=[14, 17, 20] if pos == "neck" else ([8] if pos == "p5" else []),
        mode="after" if attn != "none" else "none",
        dataset=dataset,
        seed=seed,
        epochs=settings["epochs"],
        imgsz=96,
        batch=8,
        train="quick",
        config_key=_ckey(train_hash, dataset, attn, pos, action),
        baseline_key=_ckey(train_hash, dataset, "none", "none", action),
        train_hash=train_hash,
        train_settings=settings,
        versions={"torch": "2.14.1", "python": "3.11"},
    )
    base.update(kw)
    return RunRecord(**base)


def _arch(dataset: str, attn: str, pos: str) -> str:
    return f"arch-{dataset}-{attn}-{pos}"


def write_measure(results: Path, dataset: str, attn: str, pos: str) -> None:
    """The measurement phase's file for the architecture of (dataset, attn, pos)."""
    lat, base = MEASURES[attn][2], MEASURES["none"][2]
    entry = {
        "arch_key": _arch(dataset, attn, pos),
        "latency_ms": lat,
        "latency_p10_ms": lat - 0.1,
        "latency_p90_ms": lat + 0.2,
        "latency_ratio": lat / base,
        "latency_ratio_p10": lat / base - 0.01,
        "latency_ratio_p90": lat / base + 0.01,
        "phase": "2026-01-01T00:00:00+00:00",
        **LATENCY_SETTINGS,
    }
    store = results / "measures" / "torch-test"
    store.mkdir(parents=True, exist_ok=True)
    (store / f"{entry['arch_key']}.json").write_text(json.dumps(entry))


def write_fixture(results: Path) -> None:
    for (h, ds, attn, pos), values in MAP.items():
        params, gflops, lat = MEASURES[attn]
        for seed, (m50, m5095, aps) in zip(SEEDS, values, strict=False):
            rec = _record(h, ds, attn, pos, seed, map50=m50, map50_95=m5095, ap_small=aps)
            rec.params, rec.gflops, rec.arch_key = params, gflops, _arch(ds, attn, pos)
            write_record(run_dir(results, rec.key), rec)
        write_measure(results, ds, attn, pos)
    # a failed run (excluded, counted)
    failed = _record(HASH_Q, "shapes", "rala", "neck", 3, status="failed", error="boom")
    write_record(run_dir(results, failed.key), failed)
    # profile runs: measures, no mAP
    for attn, pos in (("none", "none"), ("rala", "neck")):
        params, gflops, lat = MEASURES[attn]
        rec = _record(HASH_Q, "shapes", attn, pos, 0, action="profile", params=params, gflops=gflops)
        rec.arch_key = _arch("shapes", attn, pos)
        write_record(run_dir(results, rec.key), rec)
    # unreadable records: truncated JSON, and JSON that is not a record
    bad = run_dir(results, "truncated")
    bad.mkdir(parents=True)
    (bad / "record.json").write_text('{"key": "truncated", "status": "ok", "map50": 0.')
    other = run_dir(results, "notarecord")
    other.mkdir(parents=True)
    (other / "record.json").write_text("[1, 2, 3]")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, reporting.Report]:
    results = tmp_path_factory.mktemp("results")
    write_fixture(results)
    (results / "bench").mkdir()
    _write_bench_csv(results / "bench" / "modules.csv")
    return results, reporting.make_tables(results)


def _write_bench_csv(path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["module", "impl", "peer_of", "channels", "tokens", "grid", "status", "gflops_fwd", "fwd_ms"]
        )
        for name, impl, exp in (
            ("rala", "ours", 1.0),
            ("mhsa", "ours", 2.0),
            ("ultra_aattn", "ultralytics", 1.8),
        ):
            for g in (20, 40, 80):
                n = g * g
                w.writerow([name, impl, "", 128, n, g, "ok", 1e-6 * n**exp, 1e-3 * n**exp])


def _summary_row(report: reporting.Report, h: str, ds: str, attn: str, pos: str) -> dict[str, object]:
    s = report.summary
    rows = s[s["config_key"] == _ckey(h, ds, attn, pos)]
    assert len(rows) == 1
    return rows.iloc[0].to_dict()


def _col(values: list[tuple[float, float, float]], i: int) -> np.ndarray:
    return np.array([v[i] for v in values])


def _family_p(summary: object) -> dict[tuple[str, str], float]:
    """Every p value the table's Δ cells carry: (config_key, metric) -> p (n ≥ 2 paired seeds)."""
    out = {}
    for r in summary.to_dict("records"):  # type: ignore[attr-defined]
        for m in ("map50", "map50_95", "ap_small"):
            if not math.isnan(r[f"delta_{m}_p"]):
                out[(r["config_key"], m)] = r[f"delta_{m}_p"]
    return out


def _holm_by_hand(ps: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """Holm's step-down adjustment written out: the i-th smallest p times (m − i), running maximum, ≤ 1."""
    ranked = sorted(ps.items(), key=lambda kv: kv[1])
    out, running = {}, 0.0
    for i, (key, p) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - i) * p))
        out[key] = running
    return out


# ------------------------------------------------------------------------------------------- tests


def test_runs_csv_one_row_per_readable_record(made: tuple[Path, reporting.Report]) -> None:
    results, report = made
    with (results / "runs.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    n_ok = sum(len(v) for v in MAP.values())
    assert len(rows) == n_ok + 1 + 2  # + the failed run + 2 profile runs; unreadable ones skipped
    assert {r["key"] for r in rows}.isdisjoint({"truncated", "notarecord"})
    assert sorted(p.parent.name for p in report.skipped) == ["notarecord", "truncated"]
    header = rows[0].keys()
    assert {"versions.torch", "train_settings.epochs", "train_settings.extra", "attn_params"} <= set(header)
    assert {"config_key", "baseline_key", "train_hash", "map50_95", "latency_ms", "status"} <= set(header)
    rala = next(r for r in rows if r["attn"] == "rala" and r["status"] == "ok")
    assert json.loads(rala["layers"]) == [14, 17, 20] and rala["attn_params.rope"] == "False"


@pytest.mark.parametrize(
    ("h", "ds", "attn", "pos"),
    [
        (HASH_Q, "shapes", "rala", "neck"),
        (HASH_Q, "shapes", "fla", "neck"),
        (HASH_Q, "digits", "rala", "neck"),
    ],
)
def test_summary_means_stds_deltas_significance(
    made: tuple[Path, reporting.Report], h: str, ds: str, attn: str, pos: str
) -> None:
    _, report = made
    row = _summary_row(report, h, ds, attn, pos)
    variant, base = MAP[(h, ds, attn, pos)], MAP[(h, ds, "none", "none")]
    assert row["n"] == 3 and row["seeds"] == "0 1 2"
    for i, m in enumerate(("map50", "map50_95", "ap_small")):
        v, b = _col(variant, i), _col(base, i)
        assert row[f"{m}_mean"] == pytest.approx(v.mean())
        assert row[f"{m}_std"] == pytest.approx(v.std(ddof=1))
        d = v - b
        test = stats.ttest_rel(v, b)
        assert row[f"delta_{m}"] == pytest.approx(d.mean())
        assert row[f"delta_{m}_std"] == pytest.approx(d.std(ddof=1))
        assert row[f"delta_{m}_n"] == 3
        assert row[f"delta_{m}_p"] == pytest.approx(test.pvalue, rel=1e-6)
        low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert row[f"delta_{m}_ci_low"] == pytest.approx(low) and row[f"delta_{m}_ci_high"] == pytest.approx(
            high
        )
        family = _family_p(report.summary)
        adjusted = _holm_by_hand(family)
        assert row[f"delta_{m}_p_adj"] == pytest.approx(adjusted[row["config_key"], m])
        assert bool(row[f"delta_{m}_sig"]) == (adjusted[row["config_key"], m] < 0.05)
        if row[f"delta_{m}_sig"]:
            assert math.isnan(row[f"delta_{m}_seeds_needed"])
        else:  # n ≈ 2(z_{1-α/2m} + z_0.8)²·σ²/δ², σ² the mean of the two arms' variances
            sigma2 = (v.var(ddof=1) + b.var(ddof=1)) / 2
            factor = 2 * (stats.norm.ppf(1 - 0.05 / (2 * len(family))) + stats.norm.ppf(0.8)) ** 2
            assert row[f"delta_{m}_seeds_needed"] == max(2, math.ceil(factor * sigma2 / d.mean() ** 2))
    # latency: one measurement of the architecture, the same for every seed (so no spread)
    assert row["latency_ms_mean"] == pytest.approx(MEASURES[attn][2]) and row["latency_ms_std"] == 0
    assert row["latency_ratio_mean"] == pytest.approx(MEASURES[attn][2] / MEASURES["none"][2])
    assert row["params_mean"] == MEASURES[attn][0] and row["params_std"] == 0


def test_expected_significance_pattern(made: tuple[Path, reporting.Report]) -> None:
    """The fixture is built so that RALA's gain on shapes is significant and FLA's is not."""
    _, report = made
    assert _summary_row(report, HASH_Q, "shapes", "rala", "neck")["delta_map50_95_sig"]
    fla = _summary_row(report, HASH_Q, "shapes", "fla", "neck")
    assert not fla["delta_map50_95_sig"] and fla["delta_map50_95_seeds_needed"] >= 2


def test_failed_runs_excluded_and_counted(made: tuple[Path, reporting.Report]) -> None:
    _, report = made
    row = _summary_row(report, HASH_Q, "shapes", "rala", "neck")
    assert row["n"] == 3 and row["n_failed"] == 1 and report.n_failed == 1


def test_train_settings_never_averaged(made: tuple[Path, reporting.Report]) -> None:
    _, report = made
    quick = _summary_row(report, HASH_Q, "shapes", "rala", "neck")
    long = _summary_row(report, HASH_L, "shapes", "rala", "neck")
    assert long["n"] == 2 and long["map50_95_mean"] == pytest.approx(0.615)
    assert quick["block"] != long["block"] and "llllllll" in long["block"]
    d = _col(MAP[(HASH_L, "shapes", "rala", "neck")], 1) - _col(MAP[(HASH_L, "shapes", "none", "none")], 1)
    assert long["delta_map50_95"] == pytest.approx(d.mean()) and long["delta_map50_95_n"] == 2


def test_one_seed_and_missing_baseline(
    made: tuple[Path, reporting.Report], caplog: pytest.LogCaptureFixture
) -> None:
    results, report = made
    mhsa = _summary_row(report, HASH_Q, "shapes", "mhsa", "p5")
    assert (
        mhsa["delta_map50_95_n"] == 1
        and not mhsa["delta_map50_95_sig"]
        and math.isnan(mhsa["delta_map50_95_p"])
    )
    odd = _summary_row(report, HASH_Q, "odd_set", "tssa", "p4")
    assert odd["delta_map50_95_n"] == 0 and math.isnan(odd["delta_map50_95"])
    # only the recorded settings that differ from conf/train/quick.yaml become overrides (the fixture's
    # records have the QUICK settings)
    preset = yaml.safe_load((Path(reporting.__file__).parents[2] / "conf/train/quick.yaml").read_text())
    differing = "".join(
        f" train.{k}={v}" for k, v in QUICK.items() if k not in ("name", "extra") and preset[k] != v
    )
    assert report.baseline_commands == [
        f"python -m ablate model=yolo12n dataset=odd_set train=quick{differing} seed=0,1 -m"
    ]
    with caplog.at_level(logging.WARNING, logger="ablate.report.hints"):
        reporting.make_tables(results, figures=False)
    warning = next(r.getMessage() for r in caplog.records if "baseline" in r.getMessage())
    assert "dataset=odd_set" in warning and "seed=0,1 -m" in warning and "python -m ablate" in warning


def _tex_row(tex: str, attn: str, block: str) -> list[str]:
    part = tex.split(block, 1)[1]
    line = next(ln for ln in part.splitlines() if f" & {attn} & " in ln or ln.startswith(f"--- & {attn}"))
    return [c.strip() for c in line.removesuffix(r"\\").split(" & ")]


def test_latex_contents_bold_and_markers(made: tuple[Path, reporting.Report]) -> None:
    results, _ = made
    tex = (results / "tables" / "ablation.tex").read_text()
    assert tex.isascii()
    assert r"\toprule" in tex and r"\caption{" in tex and r"\label{tab:ablation}" in tex
    assert "odd\\_set" in tex and "odd_set" not in tex.replace("odd\\_set", "")
    quick_block = "yolo12n, train quick (qqqqqqqq), 40 ep, 96 px, from scratch}"
    base = _tex_row(tex, "none (baseline)", quick_block)
    rala = _tex_row(tex, "rala", quick_block)
    fla = _tex_row(tex, "fla", quick_block)
    # columns: pos, attn, params, gflops, latency, then map50, map50_95, ap_small per dataset
    datasets = ["digits", "odd_set", "shapes"]

    def col(ds: str, m: int) -> int:
        return 5 + 3 * datasets.index(ds) + m

    v = _col(MAP[(HASH_Q, "shapes", "rala", "neck")], 1)
    b = _col(MAP[(HASH_Q, "shapes", "none", "none")], 1)
    cell = rala[col("shapes", 1)]
    assert cell.startswith(rf"\textbf{{{100 * v.mean():.1f}}} $\pm$ {100 * v.std(ddof=1):.1f}")
    d = v - b
    low, high = (100 * x for x in stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d)))
    assert f"({100 * d.mean():+.1f} [{low:+.1f}, {high:+.1f}]$^\\dagger$)" in cell
    f = _col(MAP[(HASH_Q, "shapes", "fla", "neck")], 1)
    fla_cell = fla[col("shapes", 1)]
    assert f"({100 * (f - b).mean():+.1f} [" in fla_cell and "dagger" not in fla_cell  # not significant
    mhsa = _tex_row(tex, "mhsa", quick_block)[col("shapes", 1)]  # one paired seed: no interval, no mark
    assert mhsa.endswith("; $n{=}1$)") and "[" not in mhsa and "dagger" not in mhsa
    assert not fla[col("shapes", 1)].startswith(r"\textbf")
    # lower is better for cost: the baseline has the fewest params, GFLOPs and the lowest latency
    assert (
        base[2] == r"\textbf{2.56}" and base[3] == r"\textbf{0.150}" and base[4].startswith(r"\textbf{10.2}")
    )
    assert rala[2] == "2.65" and base[col("shapes", 1)].startswith("31.0 $\\pm$ 1.0")
    assert rala[4] == r"12.1 (1.19$\times$)" and "$\\times$" not in base[4]  # ratio to the baseline
    assert "measurement phase (torch on Test CPU, 2 threads, float32, batch 1)" in tex
    assert base[col("odd_set", 1)] == "---"  # no baseline run on odd_set
    odd = _tex_row(tex, "tssa", quick_block)
    assert odd[col("odd_set", 1)].endswith("(---)")
    assert "1 failed run excluded" in tex and "paired $t$-test" in tex
    caption = tex.split(r"\caption{", 1)[1].split(r"\label", 1)[0]
    family = len(_family_p(made[1].summary))
    assert f"adjusted by Holm over the {family} comparisons" in caption and r"$\alpha = 0.05$" in caption
    assert "95\\% CI" in caption and "not evidence" in tex
    profile = _tex_row(tex, "rala", "profile}")
    assert profile[col("shapes", 1)] == "---" and profile[2] == "2.65"


def test_latex_compiles(made: tuple[Path, reporting.Report], tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        skip_or_fail_in_ci(
            "pdflatex is not on PATH (apt-get install texlive-latex-base texlive-latex-recommended)"
        )
    results, _ = made
    doc = tmp_path / "doc.tex"
    body = (results / "tables" / "ablation.tex").read_text()
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + body + "\\end{document}\n"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_markdown_and_terminal_table(made: tuple[Path, reporting.Report]) -> None:
    results, report = made
    md = (results / "tables" / "ablation.md").read_text()
    v = _col(MAP[(HASH_Q, "shapes", "rala", "neck")], 1)
    assert f"**{100 * v.mean():.1f}** ± {100 * v.std(ddof=1):.1f}" in md and "]†)" in md
    assert "| Position | Attention | Params (M) |" in md
    text = reporting.summary_table(results)
    assert text == render.format_summary(report.summary)
    quick = text.split("train quick (qqqqqqqq)", 1)[1].split("==", 2)[1]  # the quick block's lines
    fla_line = next(ln for ln in quick.splitlines() if " fla " in ln and "shapes" in ln)
    need = int(_summary_row(report, HASH_Q, "shapes", "fla", "neck")["delta_map50_95_seeds_needed"])
    assert f"~{need} seeds" in fla_line
    assert "significant" in next(ln for ln in quick.splitlines() if " rala " in ln and "shapes" in ln)
    mhsa_line = next(ln for ln in quick.splitlines() if " mhsa " in ln)
    assert "n=1, not evidence" in mhsa_line
    assert (
        "adjusted by Holm" in text and "shapes: 1 Δ cell from one paired seed (n = 1): not evidence" in text
    )


def test_figures_written(made: tuple[Path, reporting.Report]) -> None:
    results, report = made
    names = {p.name for p in report.figures}
    for stem in ("map_vs_latency", "map_vs_gflops", "delta_heatmap", "bench_complexity"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    for p in report.figures:
        assert p.parent == results / "figures" and p.stat().st_size > 1000


def test_pareto_front() -> None:
    from ablate.report.figures import pareto_front

    x = np.array([1.0, 2.0, 3.0, 2.5, 1.0])
    y = np.array([10.0, 12.0, 11.0, 13.0, 9.0])
    assert pareto_front(x, y).tolist() == [True, True, False, True, False]


def test_latex_escape() -> None:
    assert render.latex_escape("a_b & 50% #1 {x} ~^$\\") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\$\textbackslash{}"
    )


def test_cli_where_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fixture(tmp_path)
    report_main(
        ["--results", str(tmp_path), "--where", "dataset=digits", "--where", "action=train", "--no-figures"]
    )
    out = capsys.readouterr().out
    assert "digits" in out and "shapes" not in out.split("runs (")[0]
    with (tmp_path / "runs.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and {r["dataset"] for r in rows} == {"digits"}
    with (tmp_path / "summary.csv").open(newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert len(summary) == 2
    # Δ is still paired against the baseline of the filtered runs
    rala = next(r for r in summary if r["attn"] == "rala")
    d = _col(MAP[(HASH_Q, "digits", "rala", "neck")], 1) - _col(MAP[(HASH_Q, "digits", "none", "none")], 1)
    assert float(rala["delta_map50_95"]) == pytest.approx(d.mean())
    assert not (tmp_path / "figures").exists()


def test_cli_where_keeps_baseline_for_delta(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    report = reporting.make_tables(tmp_path, load.parse_where(["attn=rala", "seed=0,1"]), figures=False)
    s = report.summary
    row = s[s["config_key"] == _ckey(HASH_Q, "shapes", "rala", "neck")].iloc[0]
    v = _col(MAP[(HASH_Q, "shapes", "rala", "neck")], 1)[:2]
    b = _col(MAP[(HASH_Q, "shapes", "none", "none")], 1)[:2]
    assert row["n"] == 2 and row["delta_map50_95_n"] == 2
    assert row["delta_map50_95_p"] == pytest.approx(stats.ttest_rel(v, b).pvalue)


def test_write_runs_csv_for_sweeps(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    path = load.write_runs_csv(tmp_path, {"dataset": "shapes", "status": "failed"})
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert path == tmp_path / "runs.csv" and len(rows) == 1 and rows[0]["error"] == "boom"


def test_cli_bad_where_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fixture(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exc:
        report_main(["--results", str(tmp_path), "--where", "datasett=shapes"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "'datasett'" in err and "dataset" in err and "valid:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_bad_where_subprocess(tmp_path: Path) -> None:
    """The real entry point: one line on stderr, exit 2, no traceback, nothing written."""
    write_fixture(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.report", "--results", str(tmp_path), "--where", "colour=red", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING: skipping")]
    assert len(lines) == 1 and lines[0].startswith("error: --where column 'colour'") and "valid: " in lines[0]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_no_records_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        report_main(["--results", str(tmp_path)])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: no run records")
    assert list(tmp_path.iterdir()) == []


def test_records_without_grouping_keys(tmp_path: Path) -> None:
    """Records written before config_key/baseline_key/train_hash existed are grouped by their fields."""
    values = {("none", 0): 0.30, ("none", 1): 0.33, ("rala", 0): 0.36, ("rala", 1): 0.37}
    for (attn, seed), m in values.items():
        d = {
            "key": f"{attn}{seed}",
            "status": "ok",
            "attn": attn,
            "pos": "neck" if attn == "rala" else "none",
        }
        d |= {"model": "yolo12n", "dataset": "shapes", "seed": seed, "train": "quick", "epochs": 40}
        d |= {"imgsz": 96, "batch": 8, "map50_95": m, "map50": "not a number"}
        (tmp_path / "runs" / d["key"]).mkdir(parents=True)
        (tmp_path / "runs" / d["key"] / "record.json").write_text(json.dumps(d))
    report = reporting.make_tables(tmp_path, figures=False)
    row = report.summary[report.summary["attn"] == "rala"].iloc[0]
    assert row["n"] == 2 and row["delta_map50_95_n"] == 2
    assert row["delta_map50_95"] == pytest.approx(np.mean([0.06, 0.04]))
    assert math.isnan(row["map50_mean"]) and report.baseline_commands == []


def test_all_runs_failed(tmp_path: Path) -> None:
    rec = _record(HASH_Q, "shapes", "rala", "neck", 0, status="failed", error="boom")
    write_record(run_dir(tmp_path, rec.key), rec)
    report = reporting.make_tables(tmp_path)
    assert report.n_failed == 1 and report.figures == []
    assert report.summary["n"].tolist() == [0] and report.summary["n_failed"].tolist() == [1]
    tex = report.tex.read_text()
    assert "No successful run." in tex and "1 failed run excluded." in tex
    assert "no successful run" in render.format_summary(report.summary)


def test_t_distribution_matches_scipy() -> None:
    t = np.array([0.0, 0.3, 1.0, 2.0, 2.776, 4.3, 9.9, 63.7, 1e4, np.inf, -2.5])
    for df in range(1, 31):
        np.testing.assert_allclose(
            statistics.t_test_p(t, df), 2 * stats.t.sf(np.abs(t), df), rtol=1e-9, atol=1e-15
        )
    assert np.isnan(statistics.t_test_p(1.0, 0)) and np.isnan(statistics.t_test_p(np.nan, 3))


@pytest.mark.parametrize("workers", [1, 2])
def test_figures_in_process_and_in_workers(
    made: tuple[Path, reporting.Report], tmp_path: Path, workers: int
) -> None:
    from ablate.report.workers import write_figures

    _, report = made
    paths = write_figures(report.summary, tmp_path, None, workers=workers)
    assert sorted(p.name for p in paths) == sorted(
        f"{stem}.{ext}"
        for stem in ("map_vs_latency", "map_vs_gflops", "delta_heatmap")
        for ext in ("png", "pdf")
    )
    assert all(p.stat().st_size > 1000 for p in paths)


def test_module_variants_are_labelled(tmp_path: Path) -> None:
    """A module run unlike its paper's code (RALA without RoPE) says so in its row label."""
    for attn, variant in (("none", ""), ("rala", "no RoPE")):
        for seed in (0, 1):
            rec = _record(
                HASH_Q, "shapes", attn, "neck" if attn != "none" else "none", seed, attn_variant=variant
            )
            rec.map50, rec.map50_95 = 0.5 + 0.01 * seed, 0.3
            write_record(run_dir(tmp_path, rec.key), rec)
    report = reporting.make_tables(tmp_path, figures=False)
    labels = set(report.summary["attn_label"])
    assert labels == {"none (baseline)", "rala (no RoPE)"}
    assert "rala (no RoPE)" in Path(report.tex).read_text()


@pytest.mark.parametrize("shared", [True, False], ids=["shared-base", "base-per-seed"])
def test_warm_start_rows_say_so_in_the_block_and_the_footnote(tmp_path: Path, shared: bool) -> None:
    for attn, pos in (("none", "none"), ("rala", "neck")):
        for seed in (0, 1, 2):
            init_run = "base0" if shared else f"base{seed}"
            rec = _record(HASH_Q, "shapes", attn, pos, seed, init="warm", init_run=init_run)
            rec.map50, rec.map50_95 = 0.8 + 0.01 * seed, 0.6
            write_record(run_dir(tmp_path, rec.key), rec)
    base = _record(HASH_L, "shapes", "none", "none", 0, role="base", map50=0.9, map50_95=0.7)
    write_record(run_dir(tmp_path, base.key), base)
    report = reporting.make_tables(tmp_path, figures=False)
    assert set(report.summary["block"]) == {"yolo12n, train quick (qqqqqqqq), 40 ep, 96 px, warm start"}
    md = Path(report.md).read_text()
    if shared:
        assert "every seed of a row fine-tunes one base checkpoint" in md and "leaves out the variance" in md
    else:
        assert "each seed fine-tunes its own base checkpoint" in md
    with open(report.runs_csv) as f:  # the base run is listed, not tabulated
        assert any(r["role"] == "base" for r in csv.DictReader(f))


# ------------------------------------------------------------------------- intervals and corrections


def test_holm_and_bh_worked_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # Holm: sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(statistics.adjust_p(p, "holm"), [0.03, 0.06, 0.06, 0.02, np.nan])
    # BH: 0.005·4/1 = 0.02, 0.01·4/2 = 0.02, 0.03·4/3 = 0.04, 0.04·4/4 = 0.04 -> running min from the top
    np.testing.assert_allclose(statistics.adjust_p(p, "bh"), [0.02, 0.04, 0.04, 0.02, np.nan])
    np.testing.assert_allclose(statistics.adjust_p(p, "none"), p)
    assert statistics.adjust_p([0.6, 0.5], "holm").tolist() == [1.0, 1.0]  # 0.5·2 = 1.0, then max(1.0, 0.6)
    assert np.isnan(statistics.adjust_p([float("nan")], "holm")).all()


def test_t_interval_and_bootstrap_against_independent_computations() -> None:
    rng = np.random.default_rng(3)
    for n in (2, 3, 5, 10):
        d = rng.normal(0.5, 1.0, n)
        low, high = statistics.t_interval(d.mean(), d.std(ddof=1), n, 0.95)
        ref = stats.t.interval(0.95, n - 1, loc=d.mean(), scale=stats.sem(d))
        assert (float(low), float(high)) == pytest.approx(ref)
    assert np.isnan(statistics.t_interval(1.0, 0.5, 1)[0])
    d = np.array([0.2, 0.5, 0.1, 0.4, 0.3])
    low, high = statistics.bootstrap_interval(d, 0.95, 4000, seed=7)
    means = d[np.random.default_rng(7).integers(0, 5, size=(4000, 5))].mean(axis=1)
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert statistics.bootstrap_interval(d, 0.95, 4000, seed=7) == (low, high)  # fixed seed: reproducible
    assert d.min() <= low < d.mean() < high <= d.max()
    assert statistics.seeds_factor(0.05) == pytest.approx(15.7, abs=0.01)


def test_bootstrap_option_and_corrections_through_the_cli(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    report_main(["--results", str(tmp_path), "--no-figures", "-q", "--ci", "bootstrap", "--correction", "bh"])
    with (tmp_path / "summary.csv").open(newline="") as fh:
        summary = list(csv.DictReader(fh))
    row = next(r for r in summary if r["config_key"] == _ckey(HASH_Q, "shapes", "fla", "neck"))
    d = _col(MAP[(HASH_Q, "shapes", "fla", "neck")], 1) - _col(MAP[(HASH_Q, "shapes", "none", "none")], 1)
    low, high = statistics.bootstrap_interval(d, 0.95, 10_000, seed=0)
    assert float(row["delta_map50_95_ci_low"]) == pytest.approx(low)
    assert float(row["delta_map50_95_ci_high"]) == pytest.approx(high)
    family = {k: float(r[f"delta_{k[1]}_p"]) for r in summary for k in [(r["config_key"], m) for m in
              ("map50", "map50_95", "ap_small")] if r[f"delta_{k[1]}_p"] not in ("", "nan")}  # fmt: skip
    keys = list(family)
    bh = dict(zip(keys, statistics.adjust_p([family[k] for k in keys], "bh"), strict=True))
    assert float(row["delta_map50_95_p_adj"]) == pytest.approx(bh[(row["config_key"], "map50_95")])
    tex = (tmp_path / "tables" / "ablation.tex").read_text()
    assert "paired bootstrap (10,000 resamples" in tex and "Benjamini-Hochberg" in tex
    # uncorrected: the marks follow the raw p values
    report_main(["--results", str(tmp_path), "--no-figures", "-q", "--correction", "none"])
    with (tmp_path / "summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        if r["delta_map50_95_p"] not in ("", "nan"):
            assert (r["delta_map50_95_sig"] == "True") == (float(r["delta_map50_95_p"]) < 0.05)
            assert r["delta_map50_95_p_adj"] == r["delta_map50_95_p"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ci", "jackknife"], "--ci 'jackknife' is not valid; valid: t, bootstrap"),
        (["--correction", "bonf"], "--correction 'bonf' is not valid; valid: holm, bh, none"),
        (["--alpha", "1.5"], "--alpha 1.5 is not valid; it must lie between 0 and 1"),
    ],
)
def test_bad_statistics_options_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    write_fixture(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.report", "--results", str(tmp_path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "runs.csv").exists() and not (tmp_path / "tables").exists()


def _null_family_runs(
    rng: np.random.Generator, effect: float, nulls: int = 20, seeds: int = 5
) -> pd.DataFrame:
    """One baseline and 1 + ``nulls`` variants on ``seeds`` seeds; variant 0 is better by ``effect``.

    Each seed shifts every configuration alike (the shared data order), plus independent run noise.
    """
    rows = []
    shift = rng.normal(0.0, 0.004, seeds)
    for c in range(nulls + 2):
        name = "base" if c == 0 else f"v{c - 1}"
        true = 0.70 + (effect if name == "v0" else 0.0)
        for s in range(seeds):
            value = true + shift[s] + rng.normal(0.0, 0.003)
            rows.append(
                {
                    "config_key": name,
                    "baseline_key": "base",
                    "seed": s,
                    "status": "ok",
                    "attn": "x" if c else "none",
                    "map50_95": value,
                }  # fmt: skip
            )
    return pd.DataFrame(rows)


def test_holm_controls_the_family_wise_error_and_keeps_the_real_effect() -> None:
    """1 real effect among 20 null comparisons (5 seeds each), 200 random tables: Holm marks the real one
    and marks a null comparison in at most 5 % of the tables; uncorrected, about half the tables have one."""
    rng = np.random.default_rng(2026)
    false_holm = false_raw = found = 0
    nulls = [f"v{i}" for i in range(1, 21)]
    for _ in range(200):
        runs = _null_family_runs(rng, effect=0.025)
        s = statistics.summarize(runs, options=statistics.StatOptions(correction="holm")).set_index(
            "config_key"
        )
        false_holm += bool(s.loc[nulls, "delta_map50_95_sig"].to_numpy(bool).any())
        false_raw += bool((s.loc[nulls, "delta_map50_95_p"] < 0.05).any())  # what an uncorrected † would mark
        found += bool(s.loc["v0", "delta_map50_95_sig"])
    print(
        f"family-wise error over 200 tables: Holm {false_holm / 200:.1%}, uncorrected {false_raw / 200:.1%}; "
        f"real effect marked in {found / 200:.1%}"
    )
    assert false_holm / 200 <= 0.05
    assert statistics.family_size(s) == 21  # one metric per comparison in this fixture
    assert found / 200 >= 0.95  # the real effect (≈ 5 run std) survives the correction
    assert false_raw / 200 >= 0.3  # the uncorrected table does mark nulls: the test can fail


# ------------------------------------------------------------------------------------- position scans


def test_position_scan_figure_and_index_order(tmp_path: Path) -> None:
    values = {None: [0.30, 0.32, 0.31], 2: [0.31, 0.33, 0.31], 4: [0.33, 0.35, 0.34], 14: [0.30, 0.31, 0.31]}
    strides = {2: 4, 4: 8, 14: 8}
    for layer, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            attn, pos = ("none", "none") if layer is None else ("rala", f"custom{layer}")
            rec = _record(HASH_Q, "shapes", attn, pos, seed, map50=v, map50_95=v, ap_small=v)
            if layer is not None:
                rec.pos, rec.layers, rec.strides = "custom", [layer], [strides[layer]]
            write_record(run_dir(tmp_path, rec.key), rec)
    report = reporting.make_tables(tmp_path)
    rala = report.summary[report.summary["attn"] == "rala"]
    assert list(rala["pos_label"]) == ["custom [2]", "custom [4]", "custom [14]"]  # by index, not as text
    assert {f"position_scan.{ext}" for ext in ("png", "pdf")} <= {p.name for p in report.figures}
    from ablate.report.figures import scan_rows

    scan = scan_rows(report.summary)
    assert scan["layer"].tolist() == [2, 4, 14] and scan["stride"].tolist() == [4, 8, 8]
    heat = (tmp_path / "figures" / "position_scan.png").stat().st_size
    assert heat > 5000


def test_the_report_does_not_import_torch() -> None:
    """make table reads the measurement store without the measuring code: importing torch costs ~2 s of the
    table's 5 s budget (make table-bench)."""
    code = "import sys, ablate.report.__main__, ablate.report.load; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]


# ------------------------------------------------------------------ what the Δs rest on (issue 19: 4, 5, 6)


def _frame(values: dict[str, list[float]], **extra: list[object]) -> pd.DataFrame:
    """Runs of one baseline ``base`` and variants: config -> per-seed mAP50-95 (seeds 0, 1, ...)."""
    rows = []
    for name, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            row = {"config_key": name, "baseline_key": "base", "seed": seed, "status": "ok", "map50_95": v}
            rows.append(row | {"attn": "none" if name == "base" else "x"})
    frame = pd.DataFrame(rows)
    return frame.assign(**{k: v for k, v in extra.items()}) if extra else frame


@pytest.mark.parametrize("seeds", [2, 3])
def test_identical_per_seed_deltas_get_no_p_no_interval_no_mark_and_leave_the_family(seeds: int) -> None:
    """Every seed 2 points above an unequal baseline: the per-seed Δs agree (s = 0 up to float rounding);
    that is no evidence, not p = 0. The other variant's p is then adjusted over a family of one."""
    base = [0.30, 0.33, 0.31][:seeds]
    runs = _frame(
        {"base": base, "same": [b + 0.02 for b in base], "other": [b + 0.01 * s for s, b in enumerate(base)]}
    )
    s = statistics.summarize(runs).set_index("config_key")
    same = s.loc["same"]
    assert same["delta_map50_95"] == pytest.approx(0.02) and same["delta_map50_95_n"] == seeds
    assert same["delta_map50_95_identical"] and not s.loc["other", "delta_map50_95_identical"]
    for col in ("p", "p_adj", "ci_low", "ci_high", "seeds_needed"):
        assert math.isnan(same[f"delta_map50_95_{col}"]), col
    assert not same["delta_map50_95_sig"]
    assert statistics.family_size(s) == 1  # only "other"
    other = s.loc["other"]
    assert other["delta_map50_95_p_adj"] == pytest.approx(other["delta_map50_95_p"])  # Holm over m = 1
    # equal values on every seed (a configuration, here the variant, whose seeds changed nothing)
    flat = statistics.summarize(_frame({"base": base, "flat": [0.4] * seeds})).set_index("config_key")
    assert flat.loc["flat", "seeds_identical"] and not flat.loc["base", "seeds_identical"]
    flat_base = statistics.summarize(_frame({"base": [0.3] * seeds, "v": base})).set_index("config_key")
    assert flat_base.loc["base", "seeds_identical"] and not flat_base.loc["v", "seeds_identical"]
    assert list(statistics.identical_rows(flat_base).index) == ["base"]


def test_identical_seeds_are_said_in_the_cells_the_footnote_the_terminal_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = {  # (attn, pos) -> per-seed mAP50-95: fla's two seeds agree, rala is 5 points up on both seeds
        ("none", "none"): [0.30, 0.32],
        ("rala", "neck"): [0.35, 0.37],
        ("fla", "neck"): [0.33, 0.33],
    }
    for (attn, pos), per_seed in values.items():
        for seed, v in enumerate(per_seed):
            rec = _record(HASH_Q, "shapes", attn, pos, seed, map50=v + 0.2, map50_95=v, ap_small=v - 0.1)
            write_record(run_dir(tmp_path, rec.key), rec)
    with caplog.at_level(logging.WARNING, logger="ablate.report"):
        report = reporting.make_tables(tmp_path, figures=False)
    md = Path(report.md).read_text()
    rows = {ln.split(" | ")[1]: ln for ln in md.splitlines() if ln.startswith("| ") and " | " in ln}
    rala, fla = rows["rala"], rows["fla"]
    assert "**36.0** ± 1.4 (+5.0; identical seeds, n=2)" in rala and "†" not in rala and "[" not in rala
    assert "33.0 (identical seeds) (+2.0 [" in fla and "±" not in fla.split(" | ")[6]
    assert "31.0 ± 1.4" in rows["none (baseline)"] and "identical" not in rows["none (baseline)"]
    note = next(ln for ln in md.splitlines() if ln.startswith("- Identical seeds"))
    assert note.startswith("- Identical seeds (2 rows: shapes: neck fla; shapes: neck rala): ")
    assert "no interval, p or mark" in note and "ultralytics issue #6820" in note
    text = render.format_summary(report.summary)
    cause = "zero spread, so no interval, p or mark; " + statistics.IDENTICAL_CAUSE + "."
    assert [ln for ln in text.splitlines() if ln.startswith("warning: ")] == [
        "warning: shapes neck fla: metrics identical on seeds 0, 1: " + cause,
        "warning: shapes neck rala: the same Δ on every paired seed (seeds 0, 1): " + cause,
    ]
    rala_line = next(ln for ln in text.splitlines() if " rala " in ln)
    assert "identical seeds: no test" in rala_line and "†" not in rala_line
    logged = [r.getMessage() for r in caplog.records if "#6820" in r.getMessage()]
    assert len(logged) == 2 and logged[1].startswith("shapes neck rala: the same Δ")
    tex = Path(report.tex).read_text()
    assert "Identical seeds (2 rows: shapes: neck fla; shapes: neck rala)" in tex
    assert r"issue \#6820" in tex and r"(+5.0; identical seeds, $n{=}2$)" in tex and tex.isascii()


def test_pairs_that_fine_tuned_different_base_runs_are_left_out_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Warm start, seeds 0-2: on seed 2 the variant fine-tuned base run B and the baseline base run A."""
    values = {("none", "none"): [0.30, 0.32, 0.31], ("rala", "neck"): [0.34, 0.35, 0.20]}
    for (attn, pos), per_seed in values.items():
        for seed, v in enumerate(per_seed):
            init_run = "baseB" if (attn, seed) == ("rala", 2) else "baseA"
            rec = _record(HASH_Q, "shapes", attn, pos, seed, init="warm", init_run=init_run, map50_95=v)
            write_record(run_dir(tmp_path, rec.key), rec)
    with caplog.at_level(logging.WARNING, logger="ablate.report"):
        report = reporting.make_tables(tmp_path, figures=False)
    row = _summary_row(report, HASH_Q, "shapes", "rala", "neck")
    assert row["delta_map50_95_n"] == 2 and row["paired_seeds"] == 3 and row["base_mismatch"] == 1
    assert row["delta_map50_95"] == pytest.approx(np.mean([0.04, 0.03]))  # seeds 0 and 1 only
    assert row["delta_map50_95_p"] == pytest.approx(stats.ttest_rel([0.34, 0.35], [0.30, 0.32]).pvalue)
    line = (
        "1 (variant, baseline) seed pair left out of Δ: on that seed the variant and its baseline fine-tuned "
        "different base runs (init_run differs); re-run them from one base."
    )
    assert f"- {line}" in Path(report.md).read_text()
    assert f"warning: {line}" in render.format_summary(report.summary)
    assert line in [r.getMessage() for r in caplog.records]
    assert r"init\_run differs" in Path(report.tex).read_text()


def test_no_pair_when_every_common_seed_has_another_base(tmp_path: Path) -> None:
    for attn, pos, init_run in (("none", "none", "baseA"), ("rala", "neck", "baseB")):
        for seed in (0, 1):
            rec = _record(
                HASH_Q, "shapes", attn, pos, seed, init="warm", init_run=init_run, map50_95=0.3 + seed / 50
            )
            write_record(run_dir(tmp_path, rec.key), rec)
    report = reporting.make_tables(tmp_path, figures=False)
    row = _summary_row(report, HASH_Q, "shapes", "rala", "neck")
    assert row["delta_map50_95_n"] == 0 and row["base_mismatch"] == row["paired_seeds"] == 2
    assert math.isnan(row["delta_map50_95"]) and report.baseline_commands == []  # the baseline exists
    rala = next(ln for ln in render.format_summary(report.summary).splitlines() if " rala " in ln)
    assert "no pair: different base runs" in rala
    assert "2 (variant, baseline) seed pairs left out of Δ: on those seeds" in Path(report.md).read_text()


@pytest.mark.parametrize("mixed", [False, True], ids=["one-way", "mixed"])
def test_the_footnote_and_the_terminal_say_how_ap_was_evaluated(tmp_path: Path, mixed: bool) -> None:
    from ablate.measure.coco import BEST_ON_TEST, LAST_ON_VAL

    for attn, pos in (("none", "none"), ("rala", "neck")):
        for seed in (0, 1):
            how = BEST_ON_TEST if mixed and attn == "rala" else LAST_ON_VAL
            rec = _record(HASH_Q, "shapes", attn, pos, seed, map50_95=0.3 + seed / 50 + (attn == "rala") / 40)
            rec.evaluated = how
            write_record(run_dir(tmp_path, rec.key), rec)
    report = reporting.make_tables(tmp_path, figures=False)
    md, text = Path(report.md).read_text(), render.format_summary(report.summary)
    if not mixed:
        expected = (
            "AP evaluated: last epoch on val (the final epoch's weights on the val split, no checkpoint "
            "selected on it)."
        )
        assert f"- {expected}" in md and expected in text.splitlines()
        assert "best-on-val" not in md
    else:
        note = next(ln for ln in md.splitlines() if ln.startswith("- AP evaluated: "))
        assert (
            "last epoch on val (the final epoch's weights on the val split, no checkpoint selected on it, "
            "1 configuration)" in note
        )
        assert (
            "best-on-val, reported on test (the checkpoint with the best val fitness (best.pt), scored on "
            "the held-out test split, 1 configuration)" in note
        )
        assert "not comparable" in note
    assert report.summary["evaluated"].tolist() == (
        [LAST_ON_VAL, BEST_ON_TEST] if mixed else [LAST_ON_VAL, LAST_ON_VAL]
    )


def test_records_without_evaluated_say_so(made: tuple[Path, reporting.Report]) -> None:
    results, _ = made
    md = (results / "tables" / "ablation.md").read_text()
    assert "- AP evaluated: unknown (not recorded (runs from before ablate recorded it" in md


def test_latex_with_the_identical_mismatch_and_evaluated_notes_compiles(tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not on PATH (apt-get install texlive-latex-base texlive-latex-recommended)")
    from ablate.measure.coco import BEST_ON_TEST, LAST_ON_VAL

    results = tmp_path / "results"
    values = {("none", "none"): [0.30, 0.32, 0.31], ("rala", "neck"): [0.35, 0.37, 0.36]}
    for (attn, pos), per_seed in values.items():
        for seed, v in enumerate(per_seed):
            init_run = "base_B" if (attn, seed) == ("rala", 2) else "base_A"
            rec = _record(HASH_Q, "shapes", attn, pos, seed, init="warm", init_run=init_run, map50_95=v)
            rec.evaluated = BEST_ON_TEST if attn == "rala" else LAST_ON_VAL
            write_record(run_dir(results, rec.key), rec)
    tex = Path(reporting.make_tables(results, figures=False).tex).read_text()
    assert "Identical seeds (1 row" in tex and "seed pair left out of $\\Delta$" in tex
    assert "AP evaluated: last epoch on val" in tex and "best-on-val, reported on test" in tex
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + tex + "\\end{document}\n"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_a_table_of_runs_trained_on_two_cpus_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def write(cpus: list[str]) -> None:
        for attn, pos in (("none", "none"), ("rala", "neck")):
            for seed, cpu in enumerate(cpus):
                versions = {"torch": "2.14.1", "python": "3.11", "cpu": cpu}
                rec = _record(HASH_Q, "shapes", attn, pos, seed, map50_95=0.3 + seed / 100, versions=versions)
                write_record(run_dir(tmp_path, rec.key), rec)

    write(["CPU A", "CPU A", "CPU A"])
    with caplog.at_level(logging.WARNING, logger="ablate.report"):
        reporting.make_tables(tmp_path, figures=False)
    assert not [r for r in caplog.records if "CPUs" in r.getMessage()]
    assert versions()["cpu"]  # every new record names its CPU
    write(["CPU A", "CPU B", "CPU A"])  # seed 1 re-run on another machine
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ablate.report"):
        reporting.make_tables(tmp_path, figures=False)
    (msg,) = [r.getMessage() for r in caplog.records if "CPUs" in r.getMessage()]
    assert msg.startswith("the runs of this table were trained on 2 CPUs (CPU A: 4 runs; CPU B: 2 runs)")
