"""Figures for the notebooks: corpus statistics (labels, co-occurrence, durations, position in the call,
callers) and run results (per-call trajectories, PR curves, binned error rates).

Every function returns a `matplotlib.figure.Figure` (no pyplot: nothing changes the caller's backend or
leaves figures open); a notebook shows it as its cell's value, a script saves it with `save(fig, path)`.
Inputs are numbers, ids and label names, as `ctxemo.explore` computes them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ctxemo.reports.plots import DPI


def _colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    return path


# ----------------------------------------------------------------------------- corpus

def label_frequencies(names: Sequence[str], counts: Sequence[int], *, total: int) -> Figure:
    """Horizontal bars: caller segments per label (negative first), with their share of `total`."""
    counts = np.asarray(counts, dtype=float)
    fig = Figure(figsize=(6.4, 0.32 * len(names) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(names))
    colors = ["0.35"] + [_colors(1)[0]] * (len(names) - 1)  # the binary target stands apart from fine labels
    ax.barh(y, counts, color=colors)
    for k, v in enumerate(counts):
        ax.text(v, k, f" {int(v)} ({100 * v / max(total, 1):.1f}%)", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, max(counts.max(initial=0), 1) * 1.3)
    ax.set_xlabel(f"caller segments (of {total})")
    ax.set_title("Label frequencies (caller segments)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def cooccurrence_heatmap(matrix: np.ndarray, labels: Sequence[str], *, title: str, value_format: str = "{:.2f}",
                         colorbar_label: str = "", counts: Optional[Sequence[int]] = None,
                         mask_diagonal: bool = True) -> Figure:
    """Heatmap of a [c, c] label-by-label matrix (e.g. P(column | row)), values written in the cells.

    Args:
        counts: [c] segments per label, shown with the row names.
        mask_diagonal: grey out the diagonal (a label with itself), which would dominate the colour scale.
    """
    matrix = np.asarray(matrix, dtype=float).copy()
    if mask_diagonal:
        np.fill_diagonal(matrix, np.nan)
    c = len(labels)
    fig = Figure(figsize=(0.5 * c + 2.6, 0.45 * c + 1.6), layout="constrained")
    ax = fig.add_subplot()
    finite = matrix[np.isfinite(matrix)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=colormaps["Blues"].with_extremes(bad="0.9"), vmin=0,
                      vmax=vmax)
    for (i, j), v in np.ndenumerate(matrix):
        if np.isfinite(v) and v > 0:
            ax.text(j, i, value_format.format(v), ha="center", va="center", fontsize=6,
                    color="white" if v > 0.6 * vmax else "black")
    ax.set_xticks(range(c))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(c))
    ax.set_yticklabels(labels if counts is None else [f"{name} (n={int(n)})" for name, n in zip(labels, counts)],
                       fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label=colorbar_label)
    return fig


def duration_histogram(groups: Dict[str, np.ndarray], *, bins: int = 30) -> Figure:
    """Overlaid histograms of segment durations (seconds), one per group (e.g. negative / calm / operator)."""
    values = [np.asarray(v, dtype=float) for v in groups.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    if finite.size == 0:
        ax.text(0.5, 0.5, "no durations (no start/end and no readable audio)", ha="center", transform=ax.transAxes)
        return fig
    edges = np.linspace(0, np.quantile(finite, 0.995) * 1.02 + 1e-6, bins + 1)
    for (name, v), color in zip(groups.items(), _colors(len(groups))):
        v = np.asarray(v, dtype=float)
        v = v[np.isfinite(v)]
        ax.hist(np.clip(v, 0, edges[-1]), bins=edges, histtype="step", lw=1.6, color=color,
                label=f"{name} (n={len(v)}, median {np.median(v):.1f} s)" if len(v) else f"{name} (n=0)")
    ax.set_xlabel("segment duration (s)")
    ax.set_ylabel("segments")
    ax.set_title("Segment durations", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def position_profile(edges: np.ndarray, shares: np.ndarray, counts: np.ndarray, names: Sequence[str], *,
                     top: int = 4) -> Figure:
    """Share of caller segments per label along the call: `names[0]` (negative) bold, then the `top` most
    frequent fine labels.

    Args:
        edges: [b + 1] relative positions; shares: [b, 1 + c]; counts: [b] caller segments per bin.
    """
    centers = 100 * (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(centers, 100 * shares[:, 0], "-o", color="black", lw=2.2, label=names[0])
    fine_total = np.nansum(shares[:, 1:] * np.asarray(counts)[:, None], axis=0)
    chosen = [int(j) + 1 for j in np.argsort(-fine_total, kind="stable")[:top] if fine_total[j] > 0]
    for j, color in zip(chosen, _colors(len(chosen))):
        ax.plot(centers, 100 * shares[:, j], "-o", ms=3, lw=1.2, color=color, label=names[j])
    ax.set_xticks(centers)
    ax.set_xticklabels([f"{100 * a:.0f}–{100 * b:.0f}%\nn={int(n)}" for a, b, n in zip(edges[:-1], edges[1:], counts)],
                       fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("position in the call (0% = first segment, 100% = last; n = caller segments)")
    ax.set_ylabel("% of caller segments")
    ax.set_title("Negative emotion along the call", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    return fig


def caller_profiles(callers: Sequence[str], shares: np.ndarray, n_segments: Sequence[int], names: Sequence[str], *,
                    max_callers: int = 40) -> Figure:
    """Heatmap: one row per caller (first `max_callers`, in the given order), one column per label, cell =
    share of the caller's segments carrying the label."""
    k = min(len(callers), max_callers)
    fig = Figure(figsize=(0.45 * len(names) + 3.0, 0.24 * k + 1.8), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(100 * np.asarray(shares[:k], dtype=float), cmap="Reds", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k))
    ax.set_yticklabels([f"{c} (n={int(n)})" for c, n in zip(callers[:k], n_segments[:k])], fontsize=7)
    ax.axvline(0.5, color="white", lw=2)  # the binary target | the fine labels
    shown = f"first {k} of {len(callers)} callers" if k < len(callers) else f"{k} callers"
    ax.set_title(f"Per-caller label profiles ({shown}, most negative first)", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of the caller's segments")
    return fig


# ----------------------------------------------------------------------------- run results

def trajectories(calls: Dict[str, Dict[str, Dict[str, np.ndarray]]]) -> Figure:
    """p_negative along each call for every arm, against the gold labels (shaded).

    Args:
        calls: {call_id: {arm: ctxemo.explore.call_trajectory(...)}}; filled markers are segments the arm
            decided negative (its fold's tuned threshold).
    """
    n = max(len(calls), 1)
    fig = Figure(figsize=(8.0, 2.3 * n + 0.6), layout="constrained")
    axes = [fig.add_subplot(n, 1, k + 1) for k in range(len(calls))]
    for ax, (call_id, arms) in zip(axes, calls.items()):
        first = next(iter(arms.values()))
        x = np.arange(len(first["segment_index"]))
        ax.bar(x, first["negative"], width=1.0, color="0.85", label="gold negative", zorder=0)
        for (arm, t), color in zip(arms.items(), _colors(len(arms))):
            ax.plot(x, t["p_negative"], "-", color=color, lw=1.5, label=arm)
            hit = t["pred_negative"] > 0
            ax.plot(x[hit], t["p_negative"][hit], "o", color=color, ms=4)
            ax.plot(x[~hit], t["p_negative"][~hit], "o", mfc="white", color=color, ms=4)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(-0.5, len(x) - 0.5)
        ax.set_ylabel("p_negative")
        ax.set_title(f"call {call_id}", fontsize=9, loc="left", wrap=True)  # long call ids wrap, not clip
        ticks = x[:: max(1, len(x) // 12)]
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(first["segment_index"][i]) for i in ticks], fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    if axes:
        axes[-1].set_xlabel("caller turn (segment_index); filled marker = decided negative")
        # One legend above all panels, at most 3 entries a row: a row of long arm names wider than the
        # figure would squeeze the panels to nothing under constrained layout.
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside upper center", ncol=min(3, len(names)), fontsize=8, frameon=False)
    return fig


def pr_curves(curves: Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray, float]]], chance: Dict[str, float], *,
              ncols: int = 4) -> Figure:
    """Small multiples: one panel per label ("negative" first), one PR curve per arm, AP in the legend.

    Args:
        curves: {arm: {label: (precision, recall, ap)}} as `ctxemo.explore.pr_curves` gives per arm.
        chance: {label: prevalence}, drawn dashed (the AP of a random scorer).
    """
    labels = list(next(iter(curves.values())).keys()) if curves else []
    nrows = max(1, math.ceil(len(labels) / ncols))
    fig = Figure(figsize=(3.0 * ncols, 2.6 * nrows + 0.4), layout="constrained")
    colors = _colors(len(curves))
    for k, label in enumerate(labels):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for (arm, by_label), color in zip(curves.items(), colors):
            precision, recall, ap = by_label[label]
            if len(recall):
                ax.plot(recall, precision, color=color, lw=1.3, drawstyle="steps-post", label=f"{arm} AP {ap:.2f}")
        if np.isfinite(chance.get(label, np.nan)):
            ax.axhline(chance[label], color="0.5", ls="--", lw=0.8)
        if not any(len(c[label][1]) for c in curves.values()):
            ax.text(0.5, 0.5, "no positive", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{label} (prevalence {100 * chance.get(label, np.nan):.1f}%)", fontsize=8)
        ax.tick_params(labelsize=7)
        if k % ncols == 0:
            ax.set_ylabel("precision", fontsize=8)
        if k >= len(labels) - ncols:
            ax.set_xlabel("recall", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("Precision-recall per label (pooled out-of-fold test segments; dashed = chance)", fontsize=10)
    return fig


def binned_rates(panels: List[Tuple[str, np.ndarray, Dict[str, Tuple[np.ndarray, np.ndarray]]]], *,
                 ylabel: str = "binary error rate (%)", edge_format: str = "{:.2g}") -> Figure:
    """Side-by-side panels of a rate per bin, one line per arm, segments per bin printed under the x axis.

    Args:
        panels: [(x-axis title, edges [b + 1], {arm: (rate [b], count [b])})].
    """
    fig = Figure(figsize=(5.0 * max(len(panels), 1), 3.8), layout="constrained")
    for k, (title, edges, rates) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        x = np.arange(len(edges) - 1)
        counts: Optional[np.ndarray] = None
        for (arm, (rate, count)), color in zip(rates.items(), _colors(len(rates))):
            ax.plot(x, 100 * np.asarray(rate, dtype=float), "-o", color=color, label=arm)
            counts = count
        ax.set_xticks(x)
        names = [f"{edge_format.format(a)}–{edge_format.format(b)}" for a, b in zip(edges[:-1], edges[1:])]
        if counts is not None:
            names = [f"{name}\nn={int(c)}" for name, c in zip(names, counts)]
        ax.set_xticklabels(names, fontsize=7)
        ax.set_xlabel(title)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
