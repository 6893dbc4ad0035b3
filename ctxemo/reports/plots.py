"""Figures of a run folder (PNG): per-label F1 per arm, most-confused fine-label pairs (and their Markdown
table), per-call error of one arm against another. Inputs are numbers, ids and label names only.

Figures are drawn on `matplotlib.figure.Figure` objects (Agg canvas) rather than through pyplot, so
the library never changes the caller's backend or leaks open figures in a notebook.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ctxemo.io import atomic_path
from ctxemo.reports.tables import markdown_table

DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def per_label_f1(path: Path, scores: Dict[str, Dict[str, Tuple[float, float]]], *, groups: Sequence[str],
                 support: Dict[str, float]) -> Path:
    """Grouped bars: one group per label, one bar per arm (mean F1 over folds, std as error bar).

    Args:
        scores: {arm: {group: (mean, std)}}, values in [0, 1]; a missing group draws no bar.
        groups: x-axis order (e.g. "negative" then the fine labels).
        support: {group: gold segments summed over folds}, shown under each name.
    """
    arms = list(scores)
    n_arms = max(len(arms), 1)
    width = 0.8 / n_arms
    x = np.arange(len(groups))
    fig = Figure(figsize=(max(6.0, 0.55 * len(groups) * max(1.0, n_arms / 2) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    cmap = _colors(len(arms))
    for k, arm in enumerate(arms):
        means = np.array([scores[arm].get(g, (np.nan, np.nan))[0] for g in groups], dtype=float)
        stds = np.array([scores[arm].get(g, (np.nan, np.nan))[1] for g in groups], dtype=float)
        ax.bar(x - 0.4 + width * (k + 0.5), 100 * np.nan_to_num(means), width,
               yerr=100 * np.nan_to_num(stds), capsize=2, label=arm, color=cmap[k], error_kw={"lw": 0.8})
    ax.set_xticks(x)
    ax.set_xticklabels([f"{g}\n(n={int(support.get(g, 0))})" for g in groups], rotation=45, ha="right", fontsize=8)
    for tick, g in zip(ax.get_xticklabels(), groups):
        if not support.get(g, 0):
            tick.set_color("0.6")  # no gold segment: F1 is 0 by convention, not a measurement
    ax.set_ylabel("F1 (%), mean ± std over folds")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Per-label F1 by arm (n = gold test segments over all folds)")
    ax.legend(fontsize=8, ncol=min(4, n_arms), loc="upper right")
    return _save(fig, path)


def top_pair_labels(counts: np.ndarray, labels: Sequence[str], *, top: int) -> Tuple[list, list]:
    """(true-label indices, predicted-label indices) that take part in the `top` largest off-diagonal
    cells of a [c, c] (true, pred) count matrix, each in taxonomy order."""
    off = counts.astype(float).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [np.unravel_index(i, off.shape) for i in order if off.flat[i] > 0]
    rows = sorted({int(i) for i, _ in pairs})
    cols = sorted({int(j) for _, j in pairs})
    return rows, cols


def confusion_pairs(path: Path, counts: Dict[str, np.ndarray], *, labels: Sequence[str], top: int = 10) -> Path:
    """One heatmap per arm of the labels involved in its `top` most confused (true, predicted) pairs.

    Args:
        counts: {arm: [c, c] int}, rows = gold label, columns = predicted label, diagonal ignored.
            Multi-label: rows where the gold label was missed while the other was predicted spuriously.
    """
    arms = list(counts)
    ncols = min(3, max(len(arms), 1))
    nrows = math.ceil(max(len(arms), 1) / ncols)
    fig = Figure(figsize=(4.4 * ncols + 0.8, 4.0 * nrows), layout="constrained")
    cmap = colormaps["Reds"].with_extremes(bad="0.9")  # the diagonal (same label) is greyed out
    image, axes = None, []
    vmax = max([1] + [int(_off_diagonal(c).max(initial=0)) for c in counts.values()])
    for k, arm in enumerate(arms):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        axes.append(ax)
        rows, cols = top_pair_labels(counts[arm], labels, top=top)
        if not rows:
            ax.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            ax.set_title(arm, fontsize=9)
            continue
        sub = _off_diagonal(counts[arm])[np.ix_(rows, cols)].astype(float)
        same = np.array([[labels[i] == labels[j] for j in cols] for i in rows])
        shown = np.ma.masked_where(same, sub)
        image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
        for (i, j), v in np.ndenumerate(sub):
            if not same[i, j]:
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                        color="white" if v > 0.6 * vmax else "black")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([labels[j] for j in cols], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([labels[i] for i in rows], fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("gold", fontsize=8)
        ax.set_title(arm, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="segments")
    fig.suptitle(f"Most confused fine-label pairs (top {top} per arm, test segments of all folds)", fontsize=10)
    return _save(fig, path)


def per_call_scatter(path: Path, x: np.ndarray, y: np.ndarray, *, x_name: str, y_name: str,
                     negative_share: np.ndarray) -> Path:
    """Per-call mean |p_negative - gold| of arm `y_name` against arm `x_name`; below the diagonal `y` is better.

    Args:
        x, y: [calls] errors of the two arms on the same calls.
        negative_share: [calls] share of the call's scored segments that are negative (colour).
    """
    fig = Figure(figsize=(5.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    points = ax.scatter(x, y, c=negative_share, cmap="viridis", vmin=0, vmax=1, s=14, alpha=0.8, edgecolors="none")
    top = float(max(np.nanmax(x, initial=0), np.nanmax(y, initial=0), 1e-3)) * 1.05
    ax.plot([0, top], [0, top], color="gray", lw=0.8, ls="--")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    better = int(np.sum(y < x))
    worse = int(np.sum(y > x))
    ax.set_xlabel(f"{x_name}: mean |p_negative - gold| per call")
    ax.set_ylabel(f"{y_name}: mean |p_negative - gold| per call")
    ax.set_title(f"{y_name} vs {x_name}: lower error in {better}, higher in {worse} of {len(x)} calls", fontsize=9,
                 wrap=True)  # long arm names: wrapped inside the figure rather than cut off
    fig.colorbar(points, ax=ax, label="share of negative segments in the call")
    return _save(fig, path)


def per_label_inputs(summaries: Dict[str, Dict], labels: Sequence[str]) -> Tuple[Dict, Dict[str, float]]:
    """({arm: {group: (mean, std)}}, {group: support over folds}) for `per_label_f1` from cv summaries;
    groups are "negative" (the binary head) and the fine labels."""
    f1_keys = {"negative": "binary_f1", **{name: f"fine_per_label.{name}.f1" for name in labels}}
    support_keys = {"negative": "binary_support_negative", **{n: f"fine_per_label.{n}.support" for n in labels}}
    scores = {arm: {g: (s[k]["mean"], s[k]["std"]) for g, k in f1_keys.items() if k in s}
              for arm, s in summaries.items()}
    first = next(iter(summaries.values()), {})  # every arm is tested on the same segments
    support = {g: float(np.nansum(first[k]["folds"])) for g, k in support_keys.items() if k in first}
    return scores, support


def labels_from_summary(summaries: Dict[str, Dict]) -> List[str]:
    names: List[str] = []
    for s in summaries.values():
        for key in s:
            m = re.match(r"^fine_per_label\.(.+)\.f1$", key)
            if m and m.group(1) not in names:
                names.append(m.group(1))
    return names


def confused_pairs_markdown(counts: Dict[str, np.ndarray], support: Dict[str, np.ndarray], *,
                            labels: Sequence[str], top: int = 10) -> str:
    """Markdown: per arm, its `top` (gold, predicted) pairs with count and share of the gold label's segments.

    Args:
        counts: {arm: [c, c]} as for `confusion_pairs`.
        support: {arm: [c]} gold segments per label.
    """
    parts = ["# Most confused fine-label pairs\n\n"
             "Test segments of all folds pooled. Multi-label: segments where the gold label was missed while the "
             "predicted label was not gold; multi-class: gold vs predicted class. share = count / gold segments "
             "of the gold label.\n"]
    for arm, matrix in counts.items():
        off = _off_diagonal(matrix)
        order = sorted(zip(*np.nonzero(off)), key=lambda ij: (-off[ij], ij[0], ij[1]))[:top]
        rows = [[labels[i], labels[j], int(off[i, j]), f"{off[i, j] / max(support[arm][i], 1):.3f}"]
                for i, j in order]
        table = markdown_table(["gold", "predicted", "count", "share"], rows) if rows else "No confusions.\n"
        parts.append(f"\n## {arm}\n\n{table}")
    return "".join(parts)


def safe_name(name: str) -> str:
    """An arm name fit for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _off_diagonal(counts: np.ndarray) -> np.ndarray:
    out = np.asarray(counts).copy()
    np.fill_diagonal(out, 0)
    return out


def _colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
