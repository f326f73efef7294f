"""Override strings read with Hydra's own parser (ablate/overrides.py) and everything that reads them:
sweeps, scans, status commands, labels, group checks, hints. Hydra's edge cases: ranges, quoted values with
commas, lists that are no sweep, glob(), deletions, force-adds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from ablate import overrides
from ablate.cli import check_group_overrides
from ablate.errors import AblateError
from ablate.live import job_labels
from ablate.paths import CONF_DIR
from ablate.placement import scan_index
from ablate.report.hints import _override_value, train_overrides
from ablate.status import fold


@pytest.mark.parametrize(
    ("text", "key", "prefix", "choices"),
    [
        ("+attn=rala,tssa", "attn", "+", ["rala", "tssa"]),
        ("seed=range(0,5)", "seed", "", ["0", "1", "2", "3", "4"]),
        ("seed=choice(1,2)", "seed", "", ["1", "2"]),
        ("pos.layers=[0,2]", "pos.layers", "", ["[0,2]"]),  # a list: one value, no sweep
        ("pos.layers='[0,2]'", "pos.layers", "", ["'[0,2]'"]),  # quoted: the string
        ("+pos.layers=[6,8],[8]", "pos.layers", "+", ["[6,8]", "[8]"]),  # a sweep over two lists
        ("~pos", "pos", "~", []),
        ("++x=y", "x", "++", ["y"]),
        ("a='b,c'", "a", "", ["'b,c'"]),  # a quoted comma is no sweep
        ('a="b=c"', "a", "", ['"b=c"']),
        ("a='x,y',z", "a", "", ["'x,y'", "z"]),
        ("dataset=shapes, shapes_small", "dataset", "", ["shapes", "shapes_small"]),
        ("hydra/launcher=joblib", "hydra/launcher", "", ["joblib"]),
        ("attn@foo=rala", "attn", "", ["rala"]),
    ],
)
def test_hydra_reads_keys_prefixes_and_values(text: str, key: str, prefix: str, choices: list[str]) -> None:
    assert overrides.key(text) == key
    assert overrides.prefix(text) == prefix
    assert overrides.choices(text) == choices


def test_values_are_what_hydra_hands_the_config() -> None:
    assert overrides.values("seed=range(0,3)") == [0, 1, 2]
    assert overrides.values("a='x,y',z") == ["x,y", "z"]
    assert overrides.values("pos.layers=[0,2]") == [[0, 2]]
    assert overrides.values("pos.layers='[0,2]'") == ["[0,2]"]
    assert overrides.values("force=true") == [True] and overrides.values("~pos") == []


def test_what_cannot_be_listed_and_what_is_no_override() -> None:
    assert overrides.choices("a=interval(0,1)") is None
    assert overrides.choices("+attn=glob(*)") is None  # needs the config's groups
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        assert overrides.choices("+attn=glob(r*)", loader) == ["rala"]
        assert overrides.choices("+attn=glob(*,exclude=[mhsa,area])", loader) == [
            "fla",
            "halo",
            "identity",
            "rala",
            "tssa",
        ]
        jobs = overrides.expand(["+attn=glob([fla,halo])", "seed=0"], loader)
        assert jobs == [["+attn=fla", "seed=0"], ["+attn=halo", "seed=0"]]
    for bad in ("-m", "a b c=", "a=(", "a=b,c,"):
        with pytest.raises(AblateError, match="is not a Hydra override"):
            overrides.key(bad)


def test_baselines_are_told_by_key_not_by_text() -> None:
    job = ["dataset=shapes", "seed=1", "++attn=rala", "+pos=neck", "attn.params.head_dim=16", "force=true"]
    assert overrides.baseline_overrides(job) == ["dataset=shapes", "seed=1"]
    assert overrides.baseline_overrides(["~pos", "+pos.layers=[6,8]", "+attn=fla", "train.epochs=3"]) == [
        "train.epochs=3"
    ]
    assert overrides.is_baseline(["dataset=digits", "attention=x", "position=y", "forced=true"])
    assert not overrides.is_baseline(["dataset=digits", "attn@x=tssa"])
    assert overrides.sets(["+action=base"], "action", "base") and not overrides.sets(
        ["action=train"], "action", "base"
    )


def test_expand_is_hydras_basic_sweeper() -> None:
    """params first, the command line after: a key given twice keeps its first place and its last value;
    ranges and choice() expand, lists and quoted commas do not."""
    jobs = overrides.expand(
        [
            "dataset=shapes,shapes_small",
            "seed=0,1,2",
            "+attn=rala,tssa",
            "seed=range(3,5)",
            "a='b,c'",
            "l=[0,2]",
        ]
    )
    assert len(jobs) == 2 * 2 * 2
    assert jobs[0] == ["dataset=shapes", "seed=3", "+attn=rala", "a='b,c'", "l=[0,2]"]
    assert {j[1] for j in jobs} == {"seed=3", "seed=4"}
    with pytest.raises(AblateError, match="does not support sweep type"):
        overrides.expand(["lr=interval(0,1)"])


@pytest.mark.parametrize(
    "text",
    ["a b", " lead", "1.0", "true", "null", "x,y", "it's", "a\\'b", "/tmp/x", "c:\\dir\\", "[1]", "a=b", ""],
)
def test_quote_is_read_back_as_the_same_string(text: str) -> None:
    quoted = overrides.quote(text)
    assert overrides.parse(f"k={quoted}").value() == text
    assert overrides.quote("/tmp/results") == "/tmp/results"  # plain where nothing needs quoting


def test_group_check_sees_sweeps_and_quotes_like_hydra() -> None:
    check_group_overrides(["+attn=rala,tssa", "dataset='shapes'", "+pos=neck", "seed=0,1", "-m"])
    check_group_overrides(["+attn=glob(*)", "+pos.layers=[6,8]", "model.weights=a,b", "~attn", "a=("])
    for argv, message in (
        (["+attn=rala,nope"], "attn='nope' is not valid; valid: area, fla, halo"),
        (["dataset=choice(shapes,imagenet)"], "dataset='imagenet' is not valid"),
        (["experiment=nope"], "experiment='nope' is not valid; valid: attn_zoo, demo, position_scan"),
        (["++model= yolo99 "], "model='yolo99' is not valid"),
    ):
        with pytest.raises(AblateError, match=message):
            check_group_overrides(argv)


def test_scans_status_folds_and_labels_read_overrides_like_hydra() -> None:
    assert scan_index(["seed=0", "++pos=scan"]) == 1
    assert scan_index(["pos.name=scan", "+pos='scan,x'"]) is None
    # quoted values with commas fold into a sweep Hydra reads back; lists and mixed prefixes never fold
    assert fold([["a='x,y'", "seed=0"], ["a=z", "seed=0"]]) == [["a='x,y',z", "seed=0"]]
    assert fold([["+pos.layers=[6,8]"], ["+pos.layers=[8]"]]) == [["+pos.layers=[6,8]"], ["+pos.layers=[8]"]]
    assert fold([["+x=1"], ["++x=2"]]) == [["+x=1"], ["++x=2"]]
    assert fold([["seed=0", "+attn=rala"], ["seed=1", "+attn=rala"], ["seed=1", "+attn=halo"]]) == [
        ["seed=0,1", "+attn=rala"],
        ["seed=1", "+attn=halo"],
    ]
    labels = job_labels([["seed=0", "a='b,c'"], ["seed=0", "a='b'", "+attn=x"], ["+action=base", "seed=0"]])
    assert labels == ["baseline a='b,c'", "a='b' +attn=x", "base run"]


def test_hints_write_values_hydra_reads_back(tmp_path: Path) -> None:
    for value in ("SGD", "a,b", "1.0", "null", "it's", 0.5, True, [1, 2]):
        text = _override_value(value)
        assert overrides.parse(f"train.x={text}").value() == value, (value, text)
    extra = train_overrides("quick", {"train_settings": {"optimizer": "x,y", "epochs": 24}})
    assert extra == ["train.optimizer='x,y'"]
    assert overrides.choices(extra[0]) == ["'x,y'"]  # one value, not a sweep


def test_calibrate_reads_its_overrides_like_hydra() -> None:
    from ablate.calibrate import check_overrides, datasets_of

    assert datasets_of(["dataset='shapes', shapes_small", "train.epochs=2"]) == (
        ["shapes", "shapes_small"],
        ["train.epochs=2"],
    )
    assert datasets_of(["dataset.path=/data/x.yaml"]) == ([None], ["dataset.path=/data/x.yaml"])
    assert datasets_of([]) == (["shapes", "shapes_small"], [])  # the default grid's
    check_overrides(["model=yolo12s", "dataset=shapes,digits", "train.epochs=3"])
    for bad in ("++attn=rala", "seed=range(0,3)", "hydra/launcher=joblib", "~pos", "attn.gamma=1", "-m"):
        with pytest.raises(AblateError, match="is set by ablate.calibrate"):
            check_overrides([bad])
