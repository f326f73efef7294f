"""Labels and order of the summary's rows, applied after the statistics: blocks (model × training setting ×
action), position and attention labels, and the table order (baseline first, positions by preset, then
by layer index)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pandas as pd

from .columns import DASH, INIT_LABELS, POS_ORDER
from .hints import train_overrides


def train_notes(runs: pd.DataFrame) -> dict[str, str]:
    """train_hash -> the recorded settings that differ from the named preset (epochs and imgsz aside)."""
    if "train_settings" not in runs or "train_hash" not in runs:
        return {}
    out = {}
    for r in runs.drop_duplicates("train_hash")[["train_hash", "train", "train_settings"]].to_dict("records"):
        overrides = train_overrides(str(r.get("train") or ""), r)
        skip = ("train.epochs=", "train.imgsz=")  # in the label already
        keep = [o.removeprefix("+").removeprefix("train.") for o in overrides if not o.startswith(skip)]
        out[str(r["train_hash"])] = " ".join(keep)
    return out


def label(s: pd.DataFrame, train_notes: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Block, row labels and sort order shared by the tables and the figures."""
    s["is_baseline"] = (s["attn"] == "none") | (s["config_key"] == s["baseline_key"])
    s["train_label"] = (
        s["train"].fillna("").astype(str) + " (" + s["train_hash"].fillna("").astype(str).str[:8] + ")"
    )
    action = s["action"].fillna("train").astype(str)
    schedule = s["epochs"].map(lambda e: "" if pd.isna(e) else f", {int(e)} ep") + s["imgsz"].map(
        lambda i: "" if pd.isna(i) else f", {int(i)} px"
    )
    notes = s["train_hash"].astype(str).map(lambda h: (train_notes or {}).get(h, ""))
    init = s["init"].astype(object).fillna("scratch").astype(str).map(lambda i: INIT_LABELS.get(i, i))
    s["block"] = (
        s["model"].astype(str)
        + ", train "
        + s["train_label"]
        + schedule
        + notes.map(lambda n: f", {n}" if n else "")
        + init.where(action == "train", "").map(lambda i: f", {i}" if i else "")
        + action.where(action != "train", "").map(lambda a: f", {a}" if a else "")
    )
    layers = s["layers"].map(lambda v: json.dumps(layer_list(v)))
    pos_label = s["pos"].astype(str).where(s["pos"] != "custom", "custom " + layers)
    pos_label = pos_label.where(s["mode"] != "replace", pos_label + " (replace)")
    s["pos_label"] = pos_label.where(~s["is_baseline"], DASH)
    variant = pd.Series("", index=s.index)
    if "attn_variant" in s:
        variant = s["attn_variant"].astype(object).fillna("").astype(str)
    attn = s["attn"].astype(str).where(variant == "", s["attn"].astype(str) + " (" + variant + ")")
    params = pd.Series([v if isinstance(v, str) else "{}" for v in s["attn_params"]], index=s.index)
    # hyper-parameter variants of one module at one position: name the parameters
    ambiguous = s.groupby(["block", "pos_label", "attn"])["attn_params"].transform("nunique") > 1
    attn = attn.where(~ambiguous, attn + " " + params)
    s["attn_label"] = attn.where(~s["is_baseline"], "none (baseline)")
    # configurations that agree on every label but differ otherwise (dataset size, measure settings...)
    dup = s.groupby(["block", "dataset", "pos_label", "attn_label"])["config_key"].transform("nunique") > 1
    s.loc[dup, "attn_label"] = s.loc[dup, "attn_label"] + " [cfg " + s.loc[dup, "config_key"].str[:6] + "]"
    s["pos_order"] = position_order(s)
    block_keys = s[["action", "model", "train", "train_hash"]].astype(str)
    s["_block_rank"] = (block_keys["action"] != "train").astype(int)
    s = s.sort_values(
        [
            "_block_rank",
            "model",
            "train",
            "train_hash",
            "action",
            "is_baseline",
            "pos_order",
            "attn_label",
            "dataset",
        ],
        ascending=[True, True, True, True, True, False, True, True, True],
        kind="stable",
    )
    return s.drop(columns=["_block_rank"]).reset_index(drop=True)


def layer_list(value: object) -> list[int]:
    """A record's ``layers`` (a list, or runs.csv's JSON text) as a list of ints ([] when unreadable)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    if isinstance(value, list | tuple):
        return [int(v) for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    return []


def position_order(s: pd.DataFrame) -> pd.Series:
    """Rank of every row's position over the whole summary: presets in :data:`POS_ORDER`, then custom
    placements by layer index (``[4]`` before ``[14]``; lists compared element-wise), then mode."""
    rank = {p: i for i, p in enumerate(POS_ORDER)}
    keys = [
        (rank.get(str(pos), len(POS_ORDER)), str(pos), tuple(layer_list(layers)), str(mode))
        for pos, layers, mode in zip(s["pos"], s["layers"], s["mode"], strict=True)
    ]
    order = {k: i for i, k in enumerate(sorted(set(keys)))}
    return pd.Series([order[k] for k in keys], index=s.index, dtype=int)
