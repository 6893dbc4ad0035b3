"""Figures of the HTML report (report.html) that the run folder's PNGs do not have: confusion matrices
(binary and fine), ROC and precision-recall curves of the binary task per arm, a reliability diagram with
the ECE, and fold prevalence. Per-call timelines and per-label PR curves reuse `explore_plots`.

Every function returns a `matplotlib.figure.Figure` (no pyplot); inputs are numbers, ids and label names.
Legend: b = calibration bins, k = classes of a confusion matrix, m = points of a curve.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ctxemo.reports.explore_plots import _colors

Curve = Tuple[np.ndarray, np.ndarray, float]  # (x [m], y [m], area)


def confusion_matrices(matrices: Dict[str, np.ndarray], labels: Sequence[str], *, title: str,
                       ncols: int = 4) -> Figure:
    """One heatmap per arm of a [k, k] (gold row, predicted column) count matrix; colour = share of the
    gold row, text = count (and share when the matrix is small enough to read it).

    Args:
        matrices: {arm: [k, k] counts}.
        labels: [k] class names (rows and columns).
    """
    arms = list(matrices)
    k = len(labels)
    ncols = min(ncols, max(len(arms), 1))
    nrows = math.ceil(max(len(arms), 1) / ncols)
    cell = 0.42 if k > 4 else 0.8
    fig = Figure(figsize=(ncols * (cell * k + 2.0) + 0.8, nrows * (cell * k + 1.8) + 0.6), layout="constrained")
    image = None
    axes = []
    for n, arm in enumerate(arms):
        ax = fig.add_subplot(nrows, ncols, n + 1)
        axes.append(ax)
        counts = np.asarray(matrices[arm], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = counts / counts.sum(axis=1, keepdims=True)
        image = ax.imshow(np.nan_to_num(share), cmap=colormaps["Blues"], vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(counts):
            text = f"{int(v)}" if k > 4 else f"{int(v)}\n{100 * np.nan_to_num(share[i, j]):.0f}%"
            ax.text(j, i, text, ha="center", va="center", fontsize=6 if k > 4 else 9,
                    color="white" if np.nan_to_num(share[i, j]) > 0.6 else "black")
        ax.set_xticks(range(k))
        ax.set_xticklabels(labels, rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center", fontsize=7)
        ax.set_yticks(range(k))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("gold", fontsize=8)
        ax.set_title(arm, fontsize=9, wrap=True)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="share of the gold row")
    fig.suptitle(title, fontsize=10, wrap=True)
    return fig


def roc_pr_curves(roc: Dict[str, Curve], pr: Dict[str, Curve], *, prevalence: float) -> Figure:
    """Two panels for the binary task: ROC (AUROC in the legend) and precision-recall (AP), one line per arm.

    Args:
        roc: {arm: (false positive rate, true positive rate, AUROC)}.
        pr: {arm: (precision, recall, AP)} (curves.pr_curve's order).
        prevalence: share of negative segments, the PR curve of a random scorer.
    """
    fig = Figure(figsize=(10.0, 4.4), layout="constrained")
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colors = _colors(len(roc))
    for (arm, (fpr, tpr, auc)), color in zip(roc.items(), colors):
        if len(fpr):
            left.plot(fpr, tpr, color=color, lw=1.4, label=f"{arm} (AUROC {auc:.2f})")
    left.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8, label="chance")
    for (arm, (precision, recall, ap)), color in zip(pr.items(), colors):
        if len(recall):
            right.plot(recall, precision, color=color, lw=1.4, drawstyle="steps-post", label=f"{arm} (AP {ap:.2f})")
    if np.isfinite(prevalence):
        right.axhline(prevalence, color="0.5", ls="--", lw=0.8, label=f"chance ({100 * prevalence:.0f}% negative)")
    for ax, (x, y, name) in ((left, ("false positive rate", "true positive rate", "ROC")),
                             (right, ("recall", "precision", "Precision-recall"))):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(f"{name}, negative vs not", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is left else "upper right")
    fig.suptitle("Binary task, pooled out-of-fold test segments", fontsize=10)
    return fig


def reliability_diagram(bins: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                        ece: Dict[str, float]) -> Figure:
    """Observed share of negative segments against mean p_negative per probability bin, one line per arm
    (the diagonal is perfect calibration), with segments per bin below.

    Args:
        bins: {arm: metrics.calibration_bins(...)}: (edges [b + 1], mean p [b], observed share [b], rows [b]).
        ece: {arm: expected calibration error}, in the legend.
    """
    fig = Figure(figsize=(6.4, 6.0), layout="constrained")
    grid = fig.add_gridspec(2, 1, height_ratios=[3, 1])
    top, bottom = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    colors = _colors(len(bins))
    width = 0.9 / max(len(bins), 1)
    for k, ((arm, (edges, mean_p, share, count)), color) in enumerate(zip(bins.items(), colors)):
        filled = count > 0
        top.plot(mean_p[filled], share[filled], "-o", color=color, ms=4, lw=1.3,
                 label=f"{arm} (ECE {100 * ece.get(arm, np.nan):.1f}%)")
        centers = (edges[:-1] + edges[1:]) / 2
        step = edges[1] - edges[0]
        bottom.bar(centers - 0.45 * step + (k + 0.5) * width * step, count, width * step, color=color)
    top.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8, label="perfectly calibrated")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_xlabel("mean p_negative in the bin")
    top.set_ylabel("observed share negative")
    top.set_title("Reliability of p_negative (pooled out-of-fold test segments)", fontsize=10, wrap=True)
    top.grid(alpha=0.3)
    top.legend(fontsize=7, loc="upper left")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("p_negative bin")
    bottom.set_ylabel("segments")
    bottom.grid(axis="y", alpha=0.3)
    return fig


def fold_prevalence(folds: List[Dict[str, object]], *, top: int = 5) -> Figure:
    """Per test fold: segments and callers (in the tick labels), and the positive share of `negative` and of
    the `top` most frequent fine labels: how even the stratified folds came out.

    Args:
        folds: fold_prevalence.json's list ({fold, n_rows, n_callers, positives, positive_share}).
    """
    names = list(folds[0]["positive_share"]) if folds else []
    totals = {n: sum(f["positives"][n] for f in folds) for n in names}
    fine = sorted((n for n in names if n != "negative"), key=lambda n: -totals[n])[:top]
    shown = (["negative"] if "negative" in names else []) + [n for n in fine if totals[n] > 0]
    fig = Figure(figsize=(max(6.0, 1.1 * len(folds) + 3.0), 3.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(folds))
    width = 0.8 / max(len(shown), 1)
    for k, (name, color) in enumerate(zip(shown, ["0.35", *_colors(len(shown))])):
        ax.bar(x - 0.4 + (k + 0.5) * width, [100 * f["positive_share"][name] for f in folds], width, color=color,
               label=name)
    ax.set_xticks(x)
    ax.set_xticklabels([f"fold {f['fold']}\n{f['n_rows']} seg, {f['n_callers']} callers" for f in folds], fontsize=7)
    ax.set_ylabel("% of the fold's caller segments")
    ax.set_title("Fold prevalence: negative and the most frequent fine labels per test fold", fontsize=10, wrap=True)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig
