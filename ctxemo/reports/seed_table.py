"""`ctxemo report --table seed RUN_DIR...`: cv runs laid out as the seed study's table, one row per encoder
(and context stage, when a run has one), columns for the binary and the fine task.

The seed study trained each task separately (`experiments/configs/encoder/<encoder>[-binary|-fine].yaml`),
so a row takes its binary columns from the encoder's binary-only run and its fine columns from its
fine-only run, each falling back to the joint run; the `tasks` column says which run filled which side.
Each cell is the caller-grouped figure (mean ± std over test folds) and, beside it, the figure on the
out-of-fold predictions pooled over folds (one score over all segments, as the seed study computed its
figures) where the run has predictions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ctxemo.errors import CtxemoError
from ctxemo.evaluation.metrics import decision_f1
from ctxemo.io import write_text
from ctxemo.reports.run_folder import (
    _read_config,
    fold_summary,
    load_predictions,
    pooled_metrics,
    run_arms,
)
from ctxemo.reports.tables import format_entry, markdown_table, write_csv

# (column, summary metric, pooled metric or None); binary columns first, then fine.
BINARY_COLUMNS = [("binary: seed-weighted F1", "binary_seed_weighted_f1", "binary_seed_weighted_f1"),
                  ("binary: F1 (negative)", "binary_f1", "binary_f1"),
                  ("binary: AUROC", "binary_auroc", "binary_auroc")]
FINE_COLUMNS = [("fine: weighted F1", "fine_weighted_f1", "fine_weighted_f1"),
                ("fine: macro F1", "fine_macro_f1", None)]
TASK_SUFFIXES = ("-binary", "-fine")


def task_of(cfg) -> str:
    """joint | binary | fine, from the loss weights (as experiments/configs/encoder/*.yaml set them)."""
    binary, fine = float(cfg.loss.binary_weight), float(cfg.loss.fine_weight)
    if binary > 0 and fine > 0:
        return "joint"
    return "binary" if binary > 0 else "fine"


def _row_key(cfg, name: str) -> Tuple[Tuple[str, str, str], str]:
    """((family, source, context kind), display name): the three tasks of one encoder share a row."""
    for suffix in TASK_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    key = (str(cfg.encoder.family), str(cfg.encoder.source), str(cfg.context.kind))
    return key, name


def _cell(summary: Dict, pooled: Dict, metric: str, pooled_metric: Optional[str]) -> str:
    if metric not in summary:
        return "n/a"
    text = format_entry(summary[metric])
    if pooled and pooled_metric in pooled:
        text += f" (pooled {100 * pooled[pooled_metric]:.2f})"
    return text


def _pooled(arm_dir: Path) -> Dict[str, float]:
    predictions = load_predictions(arm_dir)
    if predictions is None:
        return {}
    figures = pooled_metrics(predictions)
    figures["binary_seed_weighted_f1"] = decision_f1(predictions.negative, predictions.pred_negative,
                                                     average="weighted")
    return figures


def seed_rows(run_dirs: Sequence[Path]) -> Tuple[List[str], List[List[str]]]:
    """(header, rows) of the seed table over every cv folder among `run_dirs` (ablation arms included)."""
    runs: Dict[Tuple, Dict[str, object]] = {}
    for run_dir in run_dirs:
        for name, arm_dir in run_arms(Path(run_dir)).items():
            cfg = _read_config(arm_dir)
            if cfg is None:
                raise CtxemoError(f"{arm_dir}: no config.yaml; the seed table needs each run's encoder and task")
            key, display = _row_key(cfg, name)  # a cv folder's config name, or an ablation's arm name
            row = runs.setdefault(key, {"name": display, "tasks": {}})
            row["name"] = min(row["name"], display, key=len)
            task = task_of(cfg)
            if task in row["tasks"]:
                raise CtxemoError(f"{arm_dir} and {row['tasks'][task]} are both the {task} task of {display}; "
                                  "give one run per encoder and task")
            row["tasks"][task] = arm_dir
    header = ["encoder", *(c for c, _, _ in BINARY_COLUMNS + FINE_COLUMNS), "tasks"]
    rows = []
    for key, row in runs.items():
        tasks = row["tasks"]
        context = "" if key[2] == "identity" or key[2] in row["name"] else f" + {key[2]}"
        cells, sources = [row["name"] + context], []
        for side, columns in (("binary", BINARY_COLUMNS), ("fine", FINE_COLUMNS)):
            task = side if side in tasks else "joint" if "joint" in tasks else None
            if task is None:
                cells += ["n/a"] * len(columns)
                continue
            summary, pooled = fold_summary(tasks[task]), _pooled(tasks[task])
            cells += [_cell(summary, pooled, metric, pm) for _, metric, pm in columns]
            sources.append(f"{side} from {task}")
        rows.append(cells + ["; ".join(sources)])
    return header, rows


def seed_table(run_dirs: Sequence[Path], *, out: Optional[Path] = None) -> str:
    """The table as Markdown (printed by the command); with `out`, also written to <out>.md and <out>.csv."""
    header, rows = seed_rows(run_dirs)
    note = ("In %: mean ± std over caller-grouped test folds; (pooled ...) = the same metric on the out-of-fold "
            "predictions pooled over folds. Binary columns from the binary-only run, fine columns from the "
            "fine-only run, else from the joint run (see `tasks`).\n\n")
    text = note + markdown_table(header, rows)
    if out is not None:
        out = Path(out)
        write_text(out.with_suffix(".md"), text)
        write_csv(out.with_suffix(".csv"), header, rows)
    return text
