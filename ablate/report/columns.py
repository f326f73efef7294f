"""The names every part of the report shares: metrics, configuration columns, table columns, file names."""

from __future__ import annotations

from dataclasses import fields

from ..records import RunRecord

AP_METRICS = (
    "map50",
    "map50_95",
    "ap_small",
    "ap_medium",
    "ap_large",
    "map50_coco",
    "map50_95_coco",
    "precision",
    "recall",
)
COST_METRICS = (
    "params",
    "params_attn",
    "gflops",
    "gflops_ultralytics",
    "latency_ms",  # the measurement phase's, joined by arch_key (ablate.measure.phase)
    "latency_p10_ms",
    "latency_p90_ms",
    "latency_ratio",
    "peak_memory_train_mb",
)
METRICS = (*AP_METRICS, *COST_METRICS, "train_seconds")
HIGHER_IS_BETTER = frozenset(AP_METRICS)
# metrics compared with the baseline, paired by seed (summary.csv's delta_<m>_* columns)
DELTA_METRICS = ("map50", "map50_95", "ap_small", "ap_medium", "ap_large")
LATENCY_SETTINGS = ("latency_backend", "latency_device", "latency_dtype", "latency_batch", "latency_threads")
# how far a row's latency can be trusted: timed apart from the baseline shown (no ratio), or under load
LATENCY_CHECKS = ("latency_apart", "latency_loaded", "latency_load", "latency_cores", "latency_jobs")
# descriptive columns of a configuration (identical for every seed of one config_key)
CONFIG_COLUMNS = (
    "action",
    "model",
    "family",
    "scale",
    "dataset",
    "dataset_name",  # the records' name; dataset is name@hash where one name holds several data
    "data_hash",
    "data_note",
    "pos",
    "layers",
    "strides",
    "mode",
    "attn",
    "attn_params",
    "attn_variant",
    "train",
    "train_hash",
    "init",
    "epochs",
    "imgsz",
    "batch",
    "baseline_key",
    *LATENCY_SETTINGS,
    *LATENCY_CHECKS,
)
# table columns: (metric, header, scale)
MEASURE_COLUMNS = (
    ("params", "Params (M)", 1e-6),
    ("gflops", "GFLOPs", 1.0),
    ("latency_ms", "Latency (ms)", 1.0),
)
AP_COLUMNS = (("map50", "mAP50"), ("map50_95", "mAP50-95"), ("ap_small", "AP_S"))
AP_LATEX = {"map50": "mAP50", "map50_95": "mAP50-95", "ap_small": "AP$_S$"}
# the comparisons one table draws conclusions from: its Δ cells (every row × dataset × these metrics);
# p values are adjusted over this family
FAMILY_METRICS = tuple(m for m, _ in AP_COLUMNS)
POS_ORDER = ("none", "backbone", "a2c2f", "c2psa", "neck", "p3", "p4", "p5", "custom")
RUNS_CSV, SUMMARY_CSV = "runs.csv", "summary.csv"
TABLE_TEX, TABLE_MD = "tables/ablation.tex", "tables/ablation.md"
RECORD_FIELDS = tuple(f.name for f in fields(RunRecord))
INT_FIELDS = tuple(f.name for f in fields(RunRecord) if str(f.type).startswith("int"))
DASH = "—"
INIT_LABELS = {"warm": "warm start", "scratch": "from scratch", "weights": "from model.weights"}
WHOLE_JSON = ("attn_params", "train_settings", "data")  # dict fields also kept whole in runs.csv, as JSON
