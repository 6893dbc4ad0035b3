"""Tables of a run folder: per-segment predictions, per-arm summaries and paired comparisons,
as CSV and Markdown (JSON is written by the callers)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ctxemo.evaluation.evaluate import TRIVIAL
from ctxemo.io import atomic_path, write_text


def format_entry(entry: Dict[str, object]) -> str:
    """A summary entry {mean, std, n} in %: "mean ± std", or "mean (1 fold)" where there is no spread."""
    mean, std = entry["mean"], entry["std"]
    if mean is None or not np.isfinite(mean):
        return "n/a"
    if entry.get("n") == 1:
        return f"{100 * mean:.2f} (1 fold)"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None and np.isfinite(std) else f"{100 * mean:.2f}"


def format_p(value: Optional[float]) -> str:
    """A p-value for a table: 3 significant digits, `n/a` when there is none."""
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3g}"


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_predictions(path: Path, scores, *, manifest, fold: int, binary_threshold: float,
                      fine_thresholds: Optional[np.ndarray]) -> Path:
    """One row per scored segment: ids, fold, probabilities, decisions and gold labels (no audio, no text)."""
    labels = list(manifest.taxonomy.labels)
    header = ["call_id", "caller_id", "segment_index", "fold", "p_negative", "pred_negative", "negative",
              *[f"p_{name}" for name in labels], "gold_labels"]
    rows = []
    for i, row in enumerate(scores.rows):
        rows.append([manifest.call_id[row], manifest.caller_id[row], int(manifest.segment_index[row]), fold,
                     f"{scores.p_negative[i]:.6f}", int(scores.p_negative[i] >= binary_threshold),
                     int(scores.negative[i]), *[f"{p:.6f}" for p in scores.p_fine[i]],
                     ";".join(n for n, v in zip(labels, scores.fine[i]) if v)])
    return write_csv(path, header, rows)


def write_summary_tables(run_dir: Path, summary: Dict[str, Dict], *, metrics: Sequence[str]) -> None:
    """summary.csv (every metric) and summary.md (headline metrics, in %, beside the trivial predictors)
    for one configuration."""
    write_csv(run_dir / "summary.csv", ["metric", "mean", "std", "folds"],
              [[name, s["mean"], s["std"], ";".join(f"{v:.6f}" for v in s["folds"])] for name, s in summary.items()])
    shown = [name for name in metrics if name in summary]
    trivial = [t for t in TRIVIAL if any(f"{t}.{m}" in summary for m in shown)]
    rows = [[name, format_entry(summary[name]), *(format_entry(summary[f"{t}.{name}"]) if f"{t}.{name}" in summary else "n/a"
                                           for t in trivial)] for name in shown]
    write_text(run_dir / "summary.md", "Mean ± std over folds, in %" + (TRIVIAL_NOTE if trivial else ".") + "\n\n"
               + markdown_table(["metric", "value", *trivial], rows))


TRIVIAL_NOTE = ("; beside the model the trivial predictors on the same test folds (all_negative: every segment "
                "negative; training_prior: the training callers' shares).")


def _trivial_rows(summary: Dict[str, Dict], metrics: Sequence[str]) -> List[List[str]]:
    """Rows "(all_negative)", "(training_prior)" of a comparison table, from the reference's summary."""
    return [[f"({t})", *(format_entry(summary[f"{t}.{m}"]) if f"{t}.{m}" in summary else "n/a" for m in metrics)]
            for t in TRIVIAL if any(f"{t}.{m}" in summary for m in metrics)]


def comparison_rows(arms: Dict[str, Dict], paired: Dict[str, Dict], *, reference: str,
                    metrics: Sequence[str]) -> List[List[str]]:
    """One row per arm: mean ± std per metric, then difference vs the reference with its p-value."""
    rows = []
    for arm, summary in arms.items():
        row = [arm]
        for name in metrics:
            cell = format_entry(summary[name]) if name in summary else "n/a"
            if arm != reference and name in paired.get(arm, {}):
                test = paired[arm][name]
                cell += f" (Δ {100 * test['mean_diff']:+.2f}, p={format_p(test['p_ttest'])})"
            row.append(cell)
        rows.append(row)
    return rows


def comparison_markdown(arms: Dict[str, Dict], paired: Dict[str, Dict], *, reference: str,
                        metrics: Sequence[str]) -> str:
    header = ["arm", *metrics]
    note = (f"Mean ± std over folds, in %. Δ = paired mean difference vs `{reference}` over the same folds; "
            "p = paired t-test over folds. Rows in parentheses: trivial predictors on the same test folds "
            "(all_negative: every segment negative; training_prior: the training callers' shares).\n\n")
    rows = comparison_rows(arms, paired, reference=reference, metrics=metrics)
    return note + markdown_table(header, rows + _trivial_rows(arms.get(reference, {}), metrics))


def print_comparison(arms: Dict[str, Dict], paired: Dict[str, Dict], *, reference: str,
                     metrics: Sequence[str]) -> str:
    """Plain-text table for the terminal."""
    rows = [["arm", *metrics]] + comparison_rows(arms, paired, reference=reference, metrics=metrics)
    rows += _trivial_rows(arms.get(reference, {}), metrics)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
