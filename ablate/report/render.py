"""Renderers of the table model: LaTeX (booktabs only), Markdown, and the terminal summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from ..families import latency_note
from ..measure.coco import BEST_ON_TEST, LAST_ON_VAL
from .columns import AP_COLUMNS, AP_LATEX, DASH, MEASURE_COLUMNS
from .layout import Cell, Row, SingleSeed, Table, _decimals, _evaluated, _f, data_versions, single_seed_hints
from .statistics import (
    CORRECTION_NAMES,
    IDENTICAL_CAUSE,
    StatOptions,
    family_size,
    identical_rows,
    identical_text,
)

DAGGER_TEX, GEQ_TEX = r"^\dagger", r"$\geq$"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "—": "---",
    "–": "--",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: str) -> str:
    """``text`` safe in LaTeX text mode (specials escaped, non-ASCII dropped to ``?``)."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return out.encode("ascii", "replace").decode("ascii")


def _num(v: float, decimals: int) -> str:
    return f"{v:.{decimals}f}"


def _cell_text(cell: Cell, decimals: int, n_modal: int, latex: bool, measure: bool = False) -> str:
    """``mean ± std`` (bold when best), ``n`` when unusual, then the Δ with its interval; a measure drops a
    zero std. A Δ on one paired seed has no interval and no mark, and says n = 1."""
    if cell.mean is None:
        return "---" if latex else DASH
    mean = _num(cell.mean, decimals)
    mean = (rf"\textbf{{{mean}}}" if latex else f"**{mean}**") if cell.bold else mean
    text = mean
    if cell.seeds_identical:
        text += " (identical seeds)"
    elif cell.n >= 2 and cell.std is not None and not (measure and round(cell.std, decimals) == 0):
        text += (r" $\pm$ " if latex else " ± ") + _num(cell.std, decimals)
    if cell.n != n_modal:
        text += rf"${{}}_{{n={cell.n}}}$" if latex else f" (n={cell.n})"
    if cell.ratio is not None:
        text += rf" ({cell.ratio:.2f}$\times$)" if latex else f" ({cell.ratio:.2f}×)"
    elif cell.apart:
        text += r" ($\times$ n/a)" if latex else " (× n/a)"
    if cell.baseline_missing:
        text += " (---)" if latex else f" ({DASH})"
    elif cell.delta is not None:
        text += f" ({_delta_text(cell, decimals, latex)})"
    return text


def _signed(v: float, decimals: int, latex: bool) -> str:
    text = f"{v:+.{decimals}f}"
    return text.replace("-", "$-$") if latex else text.replace("-", "−")


def _delta_text(cell: Cell, decimals: int, latex: bool) -> str:
    """``+0.3 [−0.1, +0.7]†`` (interval, mark where the adjusted p < α), ``+0.3; n=1``, or
    ``+0.3; identical seeds, n=3`` (the same Δ on every paired seed: no interval, no mark)."""
    assert cell.delta is not None
    delta = _signed(cell.delta, decimals, latex)
    if cell.identical:
        n = f"$n{{=}}{cell.delta_n}$" if latex else f"n={cell.delta_n}"
        return f"{delta}; identical seeds, {n}"
    if cell.ci is None:
        return f"{delta}; $n{{=}}{cell.delta_n}$" if latex else f"{delta}; n={cell.delta_n}"
    low, high = (_signed(v, decimals, latex) for v in cell.ci)
    mark = (r"$^\dagger$" if latex else "†") if cell.sig else ""
    return f"{delta} [{low}, {high}]{mark}"


def describe_test(options: StatOptions, family: int, latex: bool = False) -> str:
    """The test, interval, correction, family size and α, in one sentence (caption, footnote, terminal)."""
    level = f"{100 * options.level:g}"
    pct = "\\%" if latex else "%"
    ci = (
        f"paired bootstrap ({options.resamples:,} resamples of the seeds, seed {options.seed}, percentile)"
        if options.ci == "bootstrap"
        else "paired $t$"
        if latex
        else "paired t"
    )
    dagger, alpha, tt = (
        (r"$^\dagger$", rf"$\alpha = {options.alpha:g}$", "$t$")
        if latex
        else ("†", f"α = {options.alpha:g}", "t")
    )
    if options.correction == "none":
        corr = f"uncorrected for the {family} comparison{'s' * (family != 1)} of the table"
    else:
        corr = (
            f"adjusted by {CORRECTION_NAMES[options.correction]} over the {family} comparison"
            f"{'s' * (family != 1)} of the table"
        )
    return (
        f"[low, high]: {level}{pct} CI of the mean per-seed difference ({ci}); {dagger}: two-sided paired "
        f"{tt}-test {'$p$' if latex else 'p'} {corr} below {alpha}."
    )


def _notes(table: Table, latex: bool) -> list[str]:
    """The footnote lines (n and the seeds, Δ, its interval and the test, single seeds, where the measures
    come from, bold, failures)."""
    seeds = f" (seeds {table.seeds.replace(' ', ', ')})" if table.seeds else ""
    n = f"$n$ = {table.n_modal}" if latex else f"n = {table.n_modal}"
    pm, delta = (r"$\pm$", r"$\Delta$") if latex else ("±", "Δ")
    pct = "\\%" if latex else "%"
    first = (
        f"{n} seeds per cell{seeds} unless marked; mean {pm} sample std (ddof 1); AP in {pct}."
        if table.n_modal
        else "No successful run."
    )
    notes = [
        first,
        f"{delta} (in parentheses): mean over the seeds both have of the per-seed difference to the baseline "
        f"of the same dataset and training settings; " + describe_test(table.options, table.family, latex),
    ]
    notes += [single_seed_text(hint, latex) for hint in table.single_seed]
    notes += [
        "Params, GFLOPs and latency: of the architecture on the first dataset column that has them "
        "(the Detect head depends on the number of classes).",
        _latency_note(table, latex),
        "Bold: best in its column and block (highest AP; lowest params, GFLOPs, latency), baseline included.",
    ]
    if table.warm == "shared":
        notes.append(
            "Warm start: every seed of a row fine-tunes one base checkpoint (the baseline trained from "
            "scratch, the lowest-training-loss of its candidates), so the spread over seeds leaves out the "
            "variance of training that base."
        )
    elif table.warm:
        notes.append(
            "Warm start: each seed fine-tunes its own base checkpoint, trained from scratch with that seed."
        )
    notes += _identity_notes(table, latex)
    if table.missing_baseline:
        notes.append(f"({'---' if latex else DASH}): no baseline run with the same seeds.")
    if table.n_failed:
        notes.append(f"{table.n_failed} failed run{'s' if table.n_failed != 1 else ''} excluded.")
    return notes


EVALUATED_TEXT = {
    LAST_ON_VAL: "the final epoch's weights on the val split, no checkpoint selected on it",
    BEST_ON_TEST: "the checkpoint with the best val fitness (best.pt), scored on the held-out test split",
    "": "not recorded (runs from before ablate recorded it: best.pt, possibly selected on the val split "
    "it is scored on)",
}


def _text_or_tex(text: str, latex: bool) -> str:
    """``text`` as is, or for LaTeX: specials escaped, Δ as ``$\\Delta$``."""
    return latex_escape(text.replace("Δ", "\x00")).replace("\x00", r"$\Delta$") if latex else text


def evaluated_text(evaluated: dict[str, int], latex: bool = False) -> str:
    """``AP evaluated: last epoch on val (…).``: which checkpoint on which split the AP columns come from."""
    parts = []
    for value, n in evaluated.items():
        what = "; ".join(EVALUATED_TEXT.get(v, v) for v in value.split("; ")) if value else EVALUATED_TEXT[""]
        count = f", {n} configuration{'s' * (n != 1)}" if len(evaluated) > 1 else ""
        parts.append(f"{value or 'unknown'} ({what}{count})")
    text = f"AP evaluated: {'; '.join(parts)}."
    if len(evaluated) > 1:
        text += " Rows evaluated differently are not comparable; Δs pair runs of one configuration."
    return _text_or_tex(text, latex)


def base_mismatch_text(pairs: int, latex: bool = False) -> str:
    """The (variant, baseline) seed pairs left out of Δ because they fine-tuned different base runs."""
    why = "fine-tuned different base runs (init_run differs); re-run them from one base."
    return _left_out_text(pairs, why, latex)


def data_mismatch_text(pairs: int, latex: bool = False) -> str:
    """The (variant, baseline) seed pairs left out of Δ because they were trained on different data."""
    why = (
        "were trained on different data (data_hash differs: the dataset changed between their runs); run the "
        "older one again on the current data."
    )
    return _left_out_text(pairs, why, latex)


def _left_out_text(pairs: int, why: str, latex: bool) -> str:
    seeds = "those seeds" if pairs != 1 else "that seed"
    pair = f"{pairs} (variant, baseline) seed pair{'s' * (pairs != 1)}"
    text = f"{pair} left out of Δ: on {seeds} the variant and its baseline {why}"
    return _text_or_tex(text, latex)


def data_versions_text(versions: list[str], latex: bool = False) -> str:
    """The dataset names whose runs were trained on different data, and the column each data got."""
    text = (
        "One name, different data (data_hash): "
        + " | ".join(versions)
        + ". Each data has its own column; runs on different data are never averaged or paired."
    )
    return _text_or_tex(text, latex)


def identical_note(rows: list[str], latex: bool = False) -> str:
    """The footnote on rows whose seeds gave identical results."""
    text = (
        f"Identical seeds ({len(rows)} row{'s' * (len(rows) != 1)}: {'; '.join(rows)}): the seeds gave "
        "identical metrics or the same Δ on every paired seed. Zero spread is no evidence: no interval, p "
        f"or mark; {IDENTICAL_CAUSE}."
    )
    return _text_or_tex(text, latex)


def _identity_notes(table: Table, latex: bool) -> list[str]:
    """Footnotes on what the Δs rest on: identical seeds, one name on different data, pairs on different
    data or with different bases, how AP was evaluated."""
    notes = []
    if table.identical:
        notes.append(identical_note(table.identical, latex))
    if table.data_versions:
        notes.append(data_versions_text(table.data_versions, latex))
    if table.data_mismatch:
        notes.append(data_mismatch_text(table.data_mismatch, latex))
    if table.base_mismatch:
        notes.append(base_mismatch_text(table.base_mismatch, latex))
    if table.evaluated:
        notes.append(evaluated_text(table.evaluated, latex))
    return notes


def single_seed_text(hint: SingleSeed, latex: bool = False) -> str:
    """``shapes: 4 Δ cells rest on one paired seed: not evidence. …`` with the calibrate-style hint."""
    name = latex_escape(hint.dataset) if latex else hint.dataset
    delta, sigma = (r"$\Delta$", r"$\sigma$") if latex else ("Δ", "σ")
    text = (
        f"{name}: {hint.cells} {delta} cell{'s' * (hint.cells != 1)} from one paired seed (n = 1): not "
        f"evidence, no interval, no mark."
    )
    if hint.sigma is None:
        return (
            text + " No baseline has 2 seeds to estimate the spread: run at least 3 seeds (make calibrate)."
        )
    at = "/".join(str(n) for n in hint.detectable)
    smallest = "/".join(f"{v:.1f}" for v in hint.detectable.values())
    return (
        text + f" At the baselines' seed spread ({sigma} = {hint.sigma:.2f} points mAP50-95) a paired test "
        f"detects {delta} mAP50-95 of {smallest} points with n = {at} seeds (power 0.8)."
    )


def _latency_note(table: Table, latex: bool) -> str:
    """Where the latency column comes from: the measurement phase and its settings."""
    times = r"$\times$" if latex else "×"
    if not table.latency:
        return "Latency: not measured yet (python -m ablate.measure)."
    where = "; ".join(latex_escape(t) if latex else t for t in table.latency)
    text = (
        f"Latency (ms): median forward pass of the measurement phase ({where}), every variant timed with "
        "its baseline in interleaved rounds of one phase, the phase the baseline's ms shown come from; "
        f"({times}): ratio to the baseline timed in the same rounds (median over rounds)."
    )
    dashes = "-{}-" if latex else "--"  # LaTeX would set -- as an en dash
    if table.latency_apart:
        n = table.latency_apart
        text += (
            f" ({times} n/a): {n} variant{'s' * (n != 1)} timed in another phase than the baseline's ms "
            f"shown: no ratio, not compared for bold (python -m ablate.measure [{dashes}force] times "
            f"{'it' if n == 1 else 'them'} with the baseline)."
        )
    if table.latency_load:
        load = "; ".join(table.latency_load)
        text += (
            f" Timed on a busy machine ({load}; measured with {dashes}force-load): those latencies may "
            "be inflated and their ratios noisier."
        )
    nms = latency_note(table.families)  # per family: whether NMS is in the timed forward
    return f"{text} {latex_escape(nms) if latex else nms}" if nms else text


def _value_cells(table: Table, row: Row, latex: bool) -> list[str]:
    """A row's measure cells, then its AP cells per dataset, as LaTeX or Markdown text."""
    cells = [
        _cell_text(row.cells[("", m)], table.decimals[m], row.cells[("", m)].n, latex, True)
        for m, _, _ in MEASURE_COLUMNS
    ]
    return cells + [
        _cell_text(row.cells[(ds, m)], 1, table.n_modal, latex)
        for ds in table.datasets
        for m, _ in AP_COLUMNS
    ]


def to_latex(table: Table) -> str:
    """The booktabs table (needs ``\\usepackage{booktabs}`` only)."""
    nd = len(table.datasets)
    ncols = 2 + len(MEASURE_COLUMNS) + len(AP_COLUMNS) * nd
    lines = [
        "% generated by ablate.report; needs \\usepackage{booktabs} (no other package)",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\caption{Attention ablation: mean $\pm$ std over seeds; in parentheses $\Delta$ vs the baseline on "
        r"the same seeds; "
        + describe_test(table.options, table.family, latex=True)
        + r" Bold: best per column.}",
        r"\label{tab:ablation}",
        r"\begin{tabular}{ll" + "r" * len(MEASURE_COLUMNS) + "c" * (len(AP_COLUMNS) * nd) + "}",
        r"\toprule",
    ]
    first_ap = 3 + len(MEASURE_COLUMNS)
    if nd:
        head = " & " * (first_ap - 2) + " & ".join(
            rf"\multicolumn{{{len(AP_COLUMNS)}}}{{c}}{{{latex_escape(ds)}}}" for ds in table.datasets
        )
        rules = " ".join(
            rf"\cmidrule(lr){{{first_ap + i * len(AP_COLUMNS)}-{first_ap + (i + 1) * len(AP_COLUMNS) - 1}}}"
            for i in range(nd)
        )
        lines += [head + r" \\", rules]
    names = ["Position", "Attention", *(h for _, h, _ in MEASURE_COLUMNS)] + [
        AP_LATEX[m] for _ in table.datasets for m, _ in AP_COLUMNS
    ]
    lines += [" & ".join(names) + r" \\", r"\midrule"]
    for i, block in enumerate(table.blocks):
        if i:
            lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{ncols}}}{{l}}{{\textit{{{latex_escape(block.label)}}}}} \\")
        for row in block.rows:
            cells = [latex_escape(row.pos) if not row.baseline else "---", latex_escape(row.attn)]
            cells += _value_cells(table, row, latex=True)
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"{\footnotesize\raggedright"]
    lines.append(" \\\\\n".join(_notes(table, True)))
    lines += [r"\par}", r"\end{table}", ""]
    return "\n".join(lines)


def to_markdown(table: Table) -> str:
    """The same table in Markdown: one table per block."""
    out: list[str] = []
    names = ["Position", "Attention", *(h for _, h, _ in MEASURE_COLUMNS)] + [
        f"{ds} {h}" for ds in table.datasets for _, h in AP_COLUMNS
    ]
    for block in table.blocks:
        out += [f"**{block.label}**", "", "| " + " | ".join(names) + " |"]
        out.append("|" + "|".join([":--", ":--"] + ["--:"] * (len(names) - 2)) + "|")
        for row in block.rows:
            cells = [row.pos, row.attn, *_value_cells(table, row, latex=False)]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    out += [f"- {note}" for note in _notes(table, False)]
    return "\n".join(out) + "\n"


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    x = _f(v)
    return DASH if x is None else format(x * scale, spec)


def _p(p: Any) -> str:
    x = _f(p)
    return DASH if x is None else ("<0.001" if x < 0.001 else f"{x:.3f}")


def _hint(r: Mapping[str, Any], m: str = "map50_95") -> str:
    """Significance and the seeds hint of the Δ of ``m``, for the terminal."""
    if r["is_baseline"] or _f(r.get(f"{m}_mean")) is None:
        return ""
    if not r.get("baseline_found", False):
        return "no baseline"
    k = int(r.get(f"delta_{m}_n", 0) or 0)
    if k == 0 and r.get("data_mismatch"):
        return "no pair: different data"
    if k == 0 and r.get("base_mismatch"):
        return "no pair: different base runs"
    if k == 0:
        return "no common seed with baseline" if not r.get("paired_seeds") else "baseline lacks it"
    if k >= 2 and r.get(f"delta_{m}_identical"):
        return "identical seeds: no test (ultralytics #6820)"
    need = _f(r.get(f"delta_{m}_seeds_needed"))
    more = "" if need is None else f": ~{int(need) if need < 1000 else '1000+'} seeds"
    if k < 2:
        return "n=1, not evidence" + more
    if r[f"delta_{m}_sig"]:
        return "significant"
    return "n.s." + more


def _ci(r: Mapping[str, Any], m: str = "map50_95") -> str:
    low, high = _f(r.get(f"delta_{m}_ci_low")), _f(r.get(f"delta_{m}_ci_high"))
    if low is None or high is None:
        return ""
    return f"[{100 * low:+.1f}, {100 * high:+.1f}]"


def format_summary(summary: pd.DataFrame, options: StatOptions | None = None) -> str:
    """The plain-text terminal table: one line per configuration, grouped by block, then the test used
    and, per dataset, what the single-seed Δs are worth."""
    options = options or StatOptions()
    level = f"{100 * options.level:g}% CI"
    header = (
        "dataset", "position", "attention", "n", "mAP50", "mAP50-95", "AP_S", "Δ mAP50-95", level, "p",
        "p adj", "seeds hint (Δ mAP50-95)", "params M", "GFLOPs", "latency ms",
    )  # fmt: skip
    out: list[str] = []
    s = summary[summary["n"] > 0]
    decimals = {m: _decimals(list(s[f"{m}_mean"].dropna() * scale)) for m, _, scale in MEASURE_COLUMNS}
    grouped: dict[str, list[dict[str, Any]]] = {}
    for rec in s.to_dict("records"):
        grouped.setdefault(str(rec["block"]), []).append(rec)
    for label, recs in grouped.items():
        rows = [header]
        for r in recs:
            base = bool(r["is_baseline"])
            delta = (
                ""
                if base
                else _fmt(r.get("delta_map50_95"), "+.1f", 100) + ("†" if r.get("delta_map50_95_sig") else "")
            )
            rows.append(
                (
                    str(r["dataset"]),
                    str(r["pos_label"]),
                    str(r["attn_label"]),
                    str(r["n"]),
                    *(
                        _fmt(r[f"{m}_mean"], ".1f", 100)
                        + ("±" + _fmt(r[f"{m}_std"], ".1f", 100) if (r[f"{m}_n"] or 0) > 1 else "")
                        for m in ("map50", "map50_95", "ap_small")
                    ),
                    delta,
                    "" if base else _ci(r),
                    "" if base else _p(r.get("delta_map50_95_p")),
                    "" if base else _p(r.get("delta_map50_95_p_adj")),
                    _hint(r),
                    *(_fmt(r[f"{m}_mean"], f".{decimals[m]}f", scale) for m, _, scale in MEASURE_COLUMNS),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        out.append(f"== {label} ==")
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        out.append("")
    failed = int(summary["n_failed"].sum())
    if s.empty:
        out.append("no successful run")
    alpha_note = "α/m" if options.correction != "none" else "α"
    out.append(
        "mean±std over seeds, AP in %; Δ paired by seed vs the baseline; "
        + describe_test(options, family_size(s))
        + f" Seeds hint: per arm n ≈ 2(z+z_0.8)²σ²/δ² at {alpha_note} (σ: run std); "
        f"{failed} failed run{'s' * (failed != 1)} excluded."
    )
    out += [single_seed_text(hint) for hint in single_seed_hints(s, options)]
    out += [
        "warning: " + identical_text(r, f"{r['dataset']} {r['pos_label']} {r['attn_label']}: ")
        for r in identical_rows(s).to_dict("records")
    ]
    versions = data_versions(s)
    if versions:
        out.append("warning: " + data_versions_text(versions))
    other_data = int(s["data_mismatch"].sum()) if "data_mismatch" in s else 0
    if other_data:
        out.append("warning: " + data_mismatch_text(other_data))
    mismatched = int(s["base_mismatch"].sum()) if "base_mismatch" in s else 0
    if mismatched:
        out.append("warning: " + base_mismatch_text(mismatched))
    evaluated = _evaluated(s)
    if evaluated:
        out.append(evaluated_text(evaluated))
    return "\n".join(out)
