"""Curves and per-call series of a run's pooled out-of-fold predictions, as arrays for figures: PR and ROC
curves, calibration, a call's trajectory, the calls worth plotting. Used by the HTML report and, through
`ctxemo.explore`, by the notebooks.

Legend: n = pooled segments, m = points of a curve.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Tuple

import numpy as np

from ctxemo.errors import CtxemoError

if TYPE_CHECKING:  # run_folder imports torch; the notebooks' corpus helpers import this module without it
    from ctxemo.reports.run_folder import Pooled


def call_trajectory(pooled: Pooled, call_id: str) -> Dict[str, np.ndarray]:
    """One call's scored segments in order.

    Returns:
        {"segment_index", "p_negative", "negative" (gold), "pred_negative"}: arrays [s].
    """
    rows = np.flatnonzero(pooled.call_id == call_id)
    if rows.size == 0:
        raise CtxemoError(f"call {call_id!r} has no predictions in this run")
    rows = rows[np.argsort(pooled.segment_index[rows], kind="stable")]
    return {"segment_index": pooled.segment_index[rows], "p_negative": pooled.p_negative[rows],
            "negative": pooled.negative[rows], "pred_negative": pooled.pred_negative[rows]}


def pick_calls(pooled: Pooled, n: int = 3) -> List[str]:
    """`n` calls worth a look: those with the most segments of the minority class (both negative and calm
    turns, so a trajectory can show the switches), ties broken by call id."""
    calls = sorted(set(pooled.call_id.tolist()))
    def key(call):
        gold = pooled.negative[pooled.call_id == call]
        return (-min(int(gold.sum()), int(len(gold) - gold.sum())), call)
    return sorted(calls, key=key)[:n]


def pr_curve(y: np.ndarray, score: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """Precision-recall curve of one label.

    Args:
        y: [n] gold 0/1; score: [n] probabilities.
    Returns:
        (precision [m], recall [m], average precision); empty arrays and NaN when `y` has no positive.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = np.asarray(y) > 0
    if not y.any():
        return np.zeros(0), np.zeros(0), float("nan")
    precision, recall, _ = precision_recall_curve(y, score)
    return precision, recall, float(average_precision_score(y, score))


def pr_curves(pooled: Pooled) -> Dict[str, Tuple[np.ndarray, np.ndarray, float]]:
    """{"negative" and each fine label: pr_curve} on the rows fine metrics score (`Pooled.fine_rows`)."""
    out = {"negative": pr_curve(pooled.negative, pooled.p_negative)}
    keep = pooled.fine_rows()
    for j, name in enumerate(pooled.labels):
        out[name] = pr_curve(pooled.gold_fine[keep, j], pooled.p_fine[keep, j])
    return out


def prevalence(pooled: Pooled) -> Dict[str, float]:
    """{"negative" and each fine label: share of scored segments that are gold positive} (a PR curve's chance level)."""
    keep = pooled.fine_rows()
    out = {"negative": float(pooled.negative.mean()) if len(pooled.negative) else float("nan")}
    out.update({name: float(pooled.gold_fine[keep, j].mean()) if keep.any() else float("nan")
                for j, name in enumerate(pooled.labels)})
    return out


def roc_curve(y: np.ndarray, score: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """(false positive rate [m], true positive rate [m], AUROC) of one label; empty and NaN with one class."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    y = np.asarray(y) > 0
    if y.all() or not y.any():
        return np.zeros(0), np.zeros(0), float("nan")
    fpr, tpr, _ = sk_roc_curve(y, score)
    return fpr, tpr, float(roc_auc_score(y, score))
