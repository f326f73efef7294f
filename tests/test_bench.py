"""Module complexity benchmark: CSV rows and columns, plot files, FLOPs exponents, skip reasons.

No timing assertions: the timings only have to exist.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ablate.benchmarks import complexity as bench

NAMES = ["rala", "mhsa", "halo", bench.TIMM_HALO, "area", bench.ULTRA_AATTN]
GRIDS = [4, 8, 16, 32]
COLUMNS = {
    "module",
    "impl",
    "peer_of",
    "channels",
    "heads",
    "grid",
    "tokens",
    "status",
    "params",
    "gflops_fwd",
    "gflops_fwdbwd",
    "saved_act_mb",
    "fwd_ms",
    "fwd_reps",
    "fwdbwd_ms",
    "fwdbwd_reps",
}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> bench.BenchResult:
    pytest.importorskip("timm")
    out = tmp_path_factory.mktemp("bench")
    return bench.run_bench(
        [16], GRIDS, NAMES, repeats=2, warmup=0, min_time_s=0.0, out=out, fit_from=16, plot_channels=16
    )


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_rows_and_columns(result: bench.BenchResult) -> None:
    rows = _csv(result.csv_path)
    assert set(rows[0]) >= COLUMNS
    # One row per (module, grid); a module and its peer alternate grid by grid (timed side by side).
    assert len(rows) == len(NAMES) * len(GRIDS)
    assert {(r["module"], int(r["grid"])) for r in rows} == {(n, g) for n in NAMES for g in GRIDS}
    assert [r["module"] for r in rows[8:12]] == ["halo", bench.TIMM_HALO] * 2
    for r in rows:
        assert int(r["tokens"]) == int(r["grid"]) ** 2 and r["channels"] == "16"
        if r["status"] == "ok":
            assert float(r["gflops_fwd"]) > 0 and float(r["gflops_fwdbwd"]) > float(r["gflops_fwd"])
            assert float(r["fwd_ms"]) > 0 and float(r["fwdbwd_ms"]) > 0 and int(r["fwd_reps"]) >= 2
            assert float(r["saved_act_mb"]) > 0
        else:
            assert r["fwd_ms"] == "" and r["gflops_fwd"] == ""
    peers = {r["module"]: r["peer_of"] for r in rows}
    assert peers[bench.TIMM_HALO] == "halo" and peers[bench.ULTRA_AATTN] == "area" and peers["rala"] == ""


def test_skipped_rows_carry_a_reason(result: bench.BenchResult) -> None:
    rows = _csv(result.csv_path)
    statuses = {(r["module"], int(r["grid"])): r["status"] for r in rows}
    # timm's HaloAttn needs H, W divisible by its block size 8: 4×4 cannot run, the others can.
    assert (
        statuses[(bench.TIMM_HALO, 4)].startswith("skipped: ")
        and "block_size" in statuses[(bench.TIMM_HALO, 4)]
    )
    assert all(s == "ok" for (name, g), s in statuses.items() if (name, g) != (bench.TIMM_HALO, 4))
    for s in statuses.values():
        assert s == "ok" or len(s.removeprefix("skipped: ")) > 5


def test_budget_skips_are_recorded(tmp_path: Path) -> None:
    res = bench.run_bench(
        [16], [8, 16, 32], ["mhsa"], repeats=1, warmup=0, min_time_s=0.0, out=tmp_path, mem_budget_mb=0.05
    )
    status = [r.status for r in res.rows]
    assert status[0] == "ok"  # nothing measured yet, nothing to extrapolate from
    assert all(s.startswith("skipped: predicted activation memory") for s in status[1:])
    assert _csv(tmp_path / "modules.csv")[2]["status"] == status[2]


def test_flops_exponents(result: bench.BenchResult) -> None:
    exps = {e.module: e for e in result.exponents}
    assert exps["rala"].grids == "16-32" and exps["mhsa"].grids == "16-32"
    assert exps["rala"].exp_flops == pytest.approx(1.0, abs=0.15)
    assert exps["halo"].exp_flops == pytest.approx(1.0, abs=0.15)
    assert exps["mhsa"].exp_flops == pytest.approx(2.0, abs=0.15)
    rows = _csv(result.exponents_path)
    assert {r["module"] for r in rows} == set(NAMES)


def test_fit_exponent_is_the_log_log_slope() -> None:
    assert bench.fit_exponent([1, 4, 16], [3, 48, 768]) == pytest.approx(2.0)
    assert bench.fit_exponent([4], [1.0]) is None


def test_plot_and_ratios(result: bench.BenchResult) -> None:
    assert result.plot_path.is_file() and result.plot_path.stat().st_size > 0
    assert result.plot_path.with_suffix(".pdf").is_file()
    pairs = {(r["peer"], r["grid"]) for r in result.ratios}
    assert pairs == {(bench.TIMM_HALO, g) for g in GRIDS[1:]} | {(bench.ULTRA_AATTN, g) for g in GRIDS}
    table = bench.format_table(result)
    assert "halo / timm_halo time at C=16 8²" in table and "skipped timm_halo C=16 4²" in table


def test_default_modules_put_peers_beside_theirs() -> None:
    names = bench.default_modules()
    assert names.index(bench.TIMM_HALO) == names.index("halo") + 1
    assert names.index(bench.ULTRA_AATTN) == names.index("area") + 1
