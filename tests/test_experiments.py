"""Experiment presets (conf/experiment/): named sweeps. ``experiment=demo`` plans exactly the jobs of the
demo's former command line; each preset's dry run prints its plan and runs nothing; attn_zoo covers every
module at every placement preset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ablate import overrides
from ablate.cli import group_options
from ablate.errors import AblateError
from ablate.paths import CONF_DIR
from ablate.placement import expand_scans
from ablate.plan import composed_command, make_plan, plan_command

from .helpers import config

ROOT = Path(__file__).resolve().parents[1]
# the demo's command line (conf/experiment/demo.yaml holds it as a preset)
OLD_DEMO = [
    "+attn=rala",
    "+pos=neck",
    "dataset=shapes",
    "seed=0,1,2",
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=2",
]


def where(tmp_path: Path) -> list[str]:
    return [f"results.dir={tmp_path / 'results'}", f"data.dir={tmp_path / 'data'}"]


def jobs_of(plan) -> list[tuple[str, str | None, bool]]:  # noqa: ANN001
    return sorted((j.role, j.key, j.cached) for j in plan.jobs)


def test_the_demo_preset_plans_the_jobs_of_the_old_demo_line(tmp_path: Path) -> None:
    old = plan_command([*OLD_DEMO, *where(tmp_path)])
    new = plan_command(["experiment=demo", *where(tmp_path)])
    # 2 base candidates, 3 baselines, rala x 3 seeds; the same run keys, two jobs at a time
    assert len(new.jobs) == 8 and [new.added("base"), new.added("baseline")] == [2, 3]
    assert jobs_of(new) == jobs_of(old)
    assert new.parallel == old.parallel == 2
    assert all("experiment=demo" in j.overrides for j in new.jobs)
    # and make demo runs the preset
    recipe = subprocess.run(
        ["make", "-n", "demo", "RESULTS=/tmp/demo-results"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "-m ablate experiment=demo results.dir=/tmp/demo-results" in recipe and " -m;" in recipe


@pytest.mark.parametrize(
    ("preset", "narrow", "header"),
    [
        ("demo", [], "8 job(s): 8 to run, 0 cached; 3 baseline(s) and 2 base run(s) added"),
        # narrowed on the command line (a command-line key replaces the preset's): 6 modules x 6 positions
        (
            "attn_zoo",
            ["dataset=shapes", "seed=0"],
            "39 job(s): 39 to run, 0 cached; 1 baseline(s) and 2 base",
        ),
        # 21 layer indices of yolo12n before its Detect head
        (
            "position_scan",
            ["+attn=rala", "seed=0"],
            "24 job(s): 24 to run, 0 cached; 1 baseline(s) and 2 base",
        ),
    ],
)
def test_each_preset_dry_runs_without_running_anything(
    tmp_path: Path, preset: str, narrow: list[str], header: str
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "ablate",
        f"experiment={preset}",
        *narrow,
        *where(tmp_path),
        "dry_run=true",
        "-m",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"dry run: {header}"), proc.stdout[:500]
    assert f"experiment={preset}" in proc.stdout.splitlines()[1]  # "every job: ..."
    assert not (tmp_path / "results").exists()  # no sweep directory, no record


def preset_jobs(preset: str, tmp_path: Path) -> list[list[str]]:
    """A preset's jobs before position scans expand: hydra.sweeper.params as the sweeper expands them."""
    with composed_command([f"experiment={preset}", *where(tmp_path)]) as (cfg, loader):
        params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
        return overrides.expand([*params, *map(str, cfg.hydra.overrides.task)], loader)


def grid(jobs: list[list[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for job in jobs:
        for o in job:
            out.setdefault(overrides.key(o), set()).add(str(overrides.values(o)[0]))
    return out


def test_attn_zoo_is_every_module_at_every_placement_preset_over_five_seeds(tmp_path: Path) -> None:
    jobs = preset_jobs("attn_zoo", tmp_path)
    axes = grid(jobs)
    presets = yaml.safe_load((CONF_DIR / "model" / "_yolo12.yaml").read_text())["presets"]
    attentions = {
        name for name in group_options("attn")
        if yaml.safe_load((CONF_DIR / "attn" / f"{name}.yaml").read_text()).get("kind") != "control"
    }  # fmt: skip
    assert axes["attn"] == attentions and "identity" not in attentions  # a new attention joins the zoo
    assert axes["pos"] == set(presets)  # every placement preset of the default model's family
    assert axes["dataset"] == {"shapes", "shapes_small"}  # the default grid's datasets
    assert axes["seed"] == {"0", "1", "2", "3", "4"}  # seed=range(0,5)
    assert len(jobs) == len({tuple(j) for j in jobs}) == 6 * len(presets) * 2 * 5


def test_position_scan_is_one_job_per_layer_index(tmp_path: Path) -> None:
    jobs = preset_jobs("position_scan", tmp_path)
    assert len(jobs) == 5 * 3 and all("+pos=scan" in j for j in jobs)
    scans = expand_scans(jobs, lambda job: config(list(job), tmp_path / "r", tmp_path / "d"))
    assert len(scans) == 5 * 21 * 3  # yolo12n: the Detect head is layer 21
    assert {o for j in scans for o in j if o.startswith("pos.layers=")} == {
        f"pos.layers=[{i}]" for i in range(21)
    }


def test_a_preset_that_selects_attention_in_its_defaults_gets_no_wrong_baseline(tmp_path: Path) -> None:
    """A preset with ``override /attn: rala`` in its defaults list: the job without +attn still composes
    attention, so its would-be baseline is no baseline; the plan says so instead of running it as one."""

    def load(job: list[str]):  # noqa: ANN202 - every job composes with attention, as such a preset would
        preset = [] if overrides.sets(job, "attn") else ["+attn=rala", "+pos=p5"]
        return config([*job, *preset], tmp_path / "r", tmp_path / "d")

    with pytest.raises(AblateError, match="not in a defaults list"):
        make_plan([["+attn=rala", "seed=0"]], load)
