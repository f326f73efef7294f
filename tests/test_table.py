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
import pytest
import yaml
from scipy import stats

from ablate import table
from ablate.records import RunRecord, run_dir, write_record

REPO = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]
QUICK = {"name": "quick", "epochs": 40, "imgsz": 96, "batch": 8, "lr0": 0.001, "extra": {}}
LONG = {**QUICK, "epochs": 80}
HASH_Q, HASH_L = "q" * 16, "l" * 16

# (train settings, dataset, attn, pos) -> per-seed (map50, map50_95, ap_small); params, gflops, latency
MAP = {
    (HASH_Q, "shapes", "none", "none"): [(0.50, 0.30, 0.10), (0.52, 0.32, 0.12), (0.51, 0.31, 0.11)],
    (HASH_Q, "shapes", "rala", "neck"): [(0.58, 0.36, 0.15), (0.59, 0.37, 0.16), (0.61, 0.38, 0.18)],
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
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, table.Report]:
    results = tmp_path_factory.mktemp("results")
    write_fixture(results)
    (results / "bench").mkdir()
    _write_bench_csv(results / "bench" / "modules.csv")
    return results, table.make_tables(results)


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


def _summary_row(report: table.Report, h: str, ds: str, attn: str, pos: str) -> dict[str, object]:
    s = report.summary
    rows = s[s["config_key"] == _ckey(h, ds, attn, pos)]
    assert len(rows) == 1
    return rows.iloc[0].to_dict()


def _col(values: list[tuple[float, float, float]], i: int) -> np.ndarray:
    return np.array([v[i] for v in values])


# ------------------------------------------------------------------------------------------- tests


def test_runs_csv_one_row_per_readable_record(made: tuple[Path, table.Report]) -> None:
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
    made: tuple[Path, table.Report], h: str, ds: str, attn: str, pos: str
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
        assert bool(row[f"delta_{m}_sig"]) == (test.pvalue < 0.05)
        if test.pvalue < 0.05:
            assert math.isnan(row[f"delta_{m}_seeds_needed"])
        else:  # n ≈ 15.7·σ²/δ², σ² the mean of the two arms' variances
            sigma2 = (v.var(ddof=1) + b.var(ddof=1)) / 2
            assert row[f"delta_{m}_seeds_needed"] == max(2, math.ceil(15.7 * sigma2 / d.mean() ** 2))
    # latency: one measurement of the architecture, the same for every seed (so no spread)
    assert row["latency_ms_mean"] == pytest.approx(MEASURES[attn][2]) and row["latency_ms_std"] == 0
    assert row["latency_ratio_mean"] == pytest.approx(MEASURES[attn][2] / MEASURES["none"][2])
    assert row["params_mean"] == MEASURES[attn][0] and row["params_std"] == 0


def test_expected_significance_pattern(made: tuple[Path, table.Report]) -> None:
    """The fixture is built so that RALA's gain on shapes is significant and FLA's is not."""
    _, report = made
    assert _summary_row(report, HASH_Q, "shapes", "rala", "neck")["delta_map50_95_sig"]
    fla = _summary_row(report, HASH_Q, "shapes", "fla", "neck")
    assert not fla["delta_map50_95_sig"] and fla["delta_map50_95_seeds_needed"] >= 2


def test_failed_runs_excluded_and_counted(made: tuple[Path, table.Report]) -> None:
    _, report = made
    row = _summary_row(report, HASH_Q, "shapes", "rala", "neck")
    assert row["n"] == 3 and row["n_failed"] == 1 and report.n_failed == 1


def test_train_settings_never_averaged(made: tuple[Path, table.Report]) -> None:
    _, report = made
    quick = _summary_row(report, HASH_Q, "shapes", "rala", "neck")
    long = _summary_row(report, HASH_L, "shapes", "rala", "neck")
    assert long["n"] == 2 and long["map50_95_mean"] == pytest.approx(0.615)
    assert quick["block"] != long["block"] and "llllllll" in long["block"]
    d = _col(MAP[(HASH_L, "shapes", "rala", "neck")], 1) - _col(MAP[(HASH_L, "shapes", "none", "none")], 1)
    assert long["delta_map50_95"] == pytest.approx(d.mean()) and long["delta_map50_95_n"] == 2


def test_one_seed_and_missing_baseline(
    made: tuple[Path, table.Report], caplog: pytest.LogCaptureFixture
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
    preset = yaml.safe_load((Path(table.__file__).parents[1] / "conf/train/quick.yaml").read_text())
    differing = "".join(
        f" train.{k}={v}" for k, v in QUICK.items() if k not in ("name", "extra") and preset[k] != v
    )
    assert report.baseline_commands == [
        f"python -m ablate model=yolo12n dataset=odd_set train=quick{differing} seed=0,1 -m"
    ]
    with caplog.at_level(logging.WARNING, logger="ablate.table"):
        table.make_tables(results, figures=False)
    warning = next(r.getMessage() for r in caplog.records if "baseline" in r.getMessage())
    assert "dataset=odd_set" in warning and "seed=0,1 -m" in warning and "python -m ablate" in warning


def _tex_row(tex: str, attn: str, block: str) -> list[str]:
    part = tex.split(block, 1)[1]
    line = next(ln for ln in part.splitlines() if f" & {attn} & " in ln or ln.startswith(f"--- & {attn}"))
    return [c.strip() for c in line.removesuffix(r"\\").split(" & ")]


def test_latex_contents_bold_and_markers(made: tuple[Path, table.Report]) -> None:
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
    assert f"(${100 * (v - b).mean():+.1f}^\\dagger$)" in cell
    f = _col(MAP[(HASH_Q, "shapes", "fla", "neck")], 1)
    assert f"(${100 * (f - b).mean():+.1f}$)" in fla[col("shapes", 1)]  # not significant: no dagger
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
    profile = _tex_row(tex, "rala", "profile}")
    assert profile[col("shapes", 1)] == "---" and profile[2] == "2.65"


def test_latex_compiles(made: tuple[Path, table.Report], tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not on PATH (apt-get install texlive-latex-base texlive-latex-recommended)")
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


def test_markdown_and_terminal_table(made: tuple[Path, table.Report]) -> None:
    results, report = made
    md = (results / "tables" / "ablation.md").read_text()
    v = _col(MAP[(HASH_Q, "shapes", "rala", "neck")], 1)
    assert f"**{100 * v.mean():.1f}** ± {100 * v.std(ddof=1):.1f}" in md and "†)" in md
    assert "| Position | Attention | Params (M) |" in md
    text = table.summary_table(results)
    assert text == table.format_summary(report.summary)
    fla_line = next(ln for ln in text.splitlines() if " fla " in ln and "shapes" in ln)
    need = int(_summary_row(report, HASH_Q, "shapes", "fla", "neck")["delta_map50_95_seeds_needed"])
    assert f"~{need} seeds" in fla_line
    assert "significant" in next(ln for ln in text.splitlines() if " rala " in ln and "shapes" in ln)


def test_figures_written(made: tuple[Path, table.Report]) -> None:
    results, report = made
    names = {p.name for p in report.figures}
    for stem in ("map_vs_latency", "map_vs_gflops", "delta_heatmap", "bench_complexity"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    for p in report.figures:
        assert p.parent == results / "figures" and p.stat().st_size > 1000


def test_pareto_front() -> None:
    from ablate.figures import pareto_front

    x = np.array([1.0, 2.0, 3.0, 2.5, 1.0])
    y = np.array([10.0, 12.0, 11.0, 13.0, 9.0])
    assert pareto_front(x, y).tolist() == [True, True, False, True, False]


def test_latex_escape() -> None:
    assert table.latex_escape("a_b & 50% #1 {x} ~^$\\") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\$\textbackslash{}"
    )


def test_cli_where_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fixture(tmp_path)
    table.main(
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
    report = table.make_tables(tmp_path, table.parse_where(["attn=rala", "seed=0,1"]), figures=False)
    s = report.summary
    row = s[s["config_key"] == _ckey(HASH_Q, "shapes", "rala", "neck")].iloc[0]
    v = _col(MAP[(HASH_Q, "shapes", "rala", "neck")], 1)[:2]
    b = _col(MAP[(HASH_Q, "shapes", "none", "none")], 1)[:2]
    assert row["n"] == 2 and row["delta_map50_95_n"] == 2
    assert row["delta_map50_95_p"] == pytest.approx(stats.ttest_rel(v, b).pvalue)


def test_write_runs_csv_for_sweeps(tmp_path: Path) -> None:
    write_fixture(tmp_path)
    path = table.write_runs_csv(tmp_path, {"dataset": "shapes", "status": "failed"})
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert path == tmp_path / "runs.csv" and len(rows) == 1 and rows[0]["error"] == "boom"


def test_cli_bad_where_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fixture(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exc:
        table.main(["--results", str(tmp_path), "--where", "datasett=shapes"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "'datasett'" in err and "dataset" in err and "valid:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_bad_where_subprocess(tmp_path: Path) -> None:
    """The real entry point: one line on stderr, exit 2, no traceback, nothing written."""
    write_fixture(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.table", "--results", str(tmp_path), "--where", "colour=red", "-q"],
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
        table.main(["--results", str(tmp_path)])
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
    report = table.make_tables(tmp_path, figures=False)
    row = report.summary[report.summary["attn"] == "rala"].iloc[0]
    assert row["n"] == 2 and row["delta_map50_95_n"] == 2
    assert row["delta_map50_95"] == pytest.approx(np.mean([0.06, 0.04]))
    assert math.isnan(row["map50_mean"]) and report.baseline_commands == []


def test_all_runs_failed(tmp_path: Path) -> None:
    rec = _record(HASH_Q, "shapes", "rala", "neck", 0, status="failed", error="boom")
    write_record(run_dir(tmp_path, rec.key), rec)
    report = table.make_tables(tmp_path)
    assert report.n_failed == 1 and report.figures == []
    assert report.summary["n"].tolist() == [0] and report.summary["n_failed"].tolist() == [1]
    tex = report.tex.read_text()
    assert "No successful run." in tex and "1 failed run excluded." in tex
    assert "no successful run" in table.format_summary(report.summary)


def test_t_distribution_matches_scipy() -> None:
    t = np.array([0.0, 0.3, 1.0, 2.0, 2.776, 4.3, 9.9, 63.7, 1e4, np.inf, -2.5])
    for df in range(1, 31):
        np.testing.assert_allclose(
            table.t_test_p(t, df), 2 * stats.t.sf(np.abs(t), df), rtol=1e-9, atol=1e-15
        )
    assert np.isnan(table.t_test_p(1.0, 0)) and np.isnan(table.t_test_p(np.nan, 3))


@pytest.mark.parametrize("workers", [1, 2])
def test_figures_in_process_and_in_workers(
    made: tuple[Path, table.Report], tmp_path: Path, workers: int
) -> None:
    from ablate import figures

    _, report = made
    paths = figures.write_figures(report.summary, tmp_path, None, workers=workers)
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
    report = table.make_tables(tmp_path, figures=False)
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
    report = table.make_tables(tmp_path, figures=False)
    assert set(report.summary["block"]) == {"yolo12n, train quick (qqqqqqqq), 40 ep, 96 px, warm start"}
    md = Path(report.md).read_text()
    if shared:
        assert "every seed of a row fine-tunes one base checkpoint" in md and "leaves out the variance" in md
    else:
        assert "each seed fine-tunes its own base checkpoint" in md
    with open(report.runs_csv) as f:  # the base run is listed, not tabulated
        assert any(r["role"] == "base" for r in csv.DictReader(f))
