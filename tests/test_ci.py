"""A green CI means the cluster and LaTeX tests ran: a missing tool skips here and fails under CI=true."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import skip_or_fail_in_ci

ROOT = Path(__file__).resolve().parents[1]


def test_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no pdflatex"):
        skip_or_fail_in_ci("no pdflatex")


def test_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but no SLURM test cluster"):
        skip_or_fail_in_ci("no SLURM test cluster")


def test_ci_script_stops_when_an_install_fails() -> None:
    """.ci/run exits non-zero when installing pdflatex or SLURM fails (it no longer warns and goes on)."""
    script = (ROOT / ".ci" / "run").read_text()
    assert "warning: could not install" not in script
    assert script.count("|| fail_install") == 2
