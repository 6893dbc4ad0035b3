"""Caller-grouped, label-stratified cross-validation folds and inner validation splits.

No caller ever has segments on both sides of a split. Within that rule, folds are balanced for the
binary label and every fine label together (see _assign_callers).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ctxemo.data.datasets import CallItem
from ctxemo.data.manifest import Manifest
from ctxemo.errors import ManifestError
from ctxemo.io import write_json

FOLDS_FORMAT_VERSION = 1
GREEDY_ORDERS = 8  # jittered placement orders tried per fold assignment


def _label_matrix(label_matrix: Optional[np.ndarray], n_rows: int) -> np.ndarray:
    """[n_rows, k] bool; None means no labels (balance by size only), a vector one column."""
    if label_matrix is None:
        return np.zeros((n_rows, 0), dtype=bool)
    labels = np.asarray(label_matrix)
    labels = labels.reshape(n_rows, -1) if labels.ndim == 1 else labels
    if labels.ndim != 2 or labels.shape[0] != n_rows:
        raise ValueError(f"label_matrix must be [n_rows={n_rows}, k], got {np.asarray(label_matrix).shape}")
    return labels > 0


def _assign_callers(sizes: np.ndarray, counts: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index per caller: a greedy that keeps every label's share of each fold even.

    Each caller goes, largest share of the corpus first, to the fold that leaves the smallest weighted
    variance across folds of "fold's share of the column's total", summed over the columns (the rule of
    scikit-learn's StratifiedGroupKFold, extended from one class column to many). Columns: the binary
    label's negative rows and its other rows, then each fine label. Each binary column weighs as much as
    all fine labels together: placing the rarest fine label first (the rule before) left the most
    common column, the binary label, to chance (fold negative shares 0.39-0.59 at 60 callers).
    Of GREEDY_ORDERS jittered orders the one with the most even binary label is kept.
    benchmarks/bench_folds.py prints the spreads against StratifiedGroupKFold and the rule before.

    Args:
        sizes: [callers] rows per caller.
        counts: [callers, k] positive rows per caller and label; column 0 is the binary label, the rest
            fine labels (k = 0: balance by size only).
    Returns:
        [callers] fold index.
    """
    n_callers = len(sizes)
    if counts.shape[1]:
        columns = np.column_stack([counts[:, 0], sizes - counts[:, 0], counts[:, 1:]]).astype(float)
        n_fine = int(np.sum(counts[:, 1:].sum(axis=0) > 0))
        weights = np.array([max(n_fine, 1)] * 2 + [1] * (counts.shape[1] - 1), dtype=float)
    else:
        columns, weights = sizes[:, None].astype(float), np.ones(1)
    totals = columns.sum(axis=0)
    present = totals > 0
    share = columns[:, present] / totals[present]  # [callers, k'] caller's share of each column's total
    weights = weights[present]
    # The greedy's result depends on the order; of a few jittered orders keep the one whose binary label
    # (without labels: sizes) comes out most even, the fine labels as the greedy balanced them.
    n_select = 2 if counts.shape[1] and present[:2].all() else share.shape[1]
    best, best_cost = None, np.inf
    for restart in range(GREEDY_ORDERS):
        jitter = 1.0 if restart == 0 else rng.uniform(0.5, 1.5, n_callers)
        order = np.lexsort((rng.random(n_callers), -(share * weights).sum(axis=1) * jitter))
        fold_of = _greedy_placement(order, share, weights, sizes, n_folds, rng)
        fold_share = np.zeros((n_folds, share.shape[1]))
        np.add.at(fold_share, fold_of, share)
        cost = fold_share[:, :n_select].var(axis=0).sum()
        if cost < best_cost - 1e-12:
            best, best_cost = fold_of, cost
    return best


def _greedy_placement(order: np.ndarray, share: np.ndarray, weights: np.ndarray, sizes: np.ndarray,
                      n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold per caller: callers in `order`, each to the fold that leaves the smallest weighted variance."""
    fold_share = np.zeros((n_folds, share.shape[1]))
    fold_size = np.zeros(n_folds)
    fold_of = np.full(len(sizes), -1)
    for placed, caller in enumerate(order):
        # candidate[f] = the fold shares if this caller joined fold f: [folds (candidate), folds, k'].
        candidate = fold_share[None] + np.eye(n_folds)[:, :, None] * share[caller][None, None]
        cost = (candidate.var(axis=1) * weights).sum(axis=1)
        empty = fold_size == 0
        if len(order) - placed <= empty.sum():  # as many callers left as empty folds: fill those
            cost = np.where(empty, cost, np.inf)
        fold = np.lexsort((rng.random(n_folds), fold_size, cost))[0]
        fold_of[caller] = fold
        fold_share[fold] += share[caller]
        fold_size[fold] += sizes[caller]
    return fold_of


def caller_folds(
    groups: Sequence[str], label_matrix: Optional[np.ndarray], *, n_folds: int, seed: int
) -> List[np.ndarray]:
    """Caller-independent, label-stratified cross-validation folds.

    Args:
        groups: [n_rows] caller id per row.
        label_matrix: [n_rows, k] 0/1: the binary label first, then the fine labels; None balances size only.
        n_folds: number of folds (>= 2, <= number of callers).
        seed: breaks ties; the same inputs and seed give the same folds.
    Returns:
        n_folds sorted arrays of test-row indices; every row is in exactly one, every caller in one.
    Raises:
        ManifestError: fewer callers than folds.
    """
    caller_ids, caller_of_row = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_rows, n_callers = len(caller_of_row), len(caller_ids)
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    if n_callers < n_folds:
        raise ManifestError(
            f"{n_callers} distinct callers cannot fill {n_folds} caller-independent folds; "
            f"lower cv.folds to at most {n_callers} or add callers"
        )
    labels = _label_matrix(label_matrix, n_rows)
    sizes = np.bincount(caller_of_row, minlength=n_callers)
    counts = np.zeros((n_callers, labels.shape[1]))
    np.add.at(counts, caller_of_row, labels.astype(float))
    fold_of_caller = _assign_callers(sizes, counts, n_folds, np.random.default_rng(seed))
    fold_of_row = fold_of_caller[caller_of_row]
    folds = [np.flatnonzero(fold_of_row == f) for f in range(n_folds)]
    assert all(len(f) for f in folds), "a fold came out empty"
    _check_partition(folds, caller_of_row, n_rows)
    return folds


def _check_partition(folds: List[np.ndarray], caller_of_row: np.ndarray, n_rows: int) -> None:
    every_row = np.sort(np.concatenate(folds))
    assert np.array_equal(every_row, np.arange(n_rows)), "folds do not cover every row exactly once"
    seen: set = set()
    for fold in folds:
        callers = set(caller_of_row[fold].tolist())
        assert not (callers & seen), "a caller landed in two folds"
        seen |= callers


def inner_split(
    rows: np.ndarray,
    groups: Sequence[str],
    label_matrix: Optional[np.ndarray],
    *,
    val_fraction: float,
    seed: int,
) -> Tuple[np.ndarray, np.ndarray]:
    """Caller-disjoint, stratified split of training rows into fit and inner-validation rows.

    Runs the fold balancer with round(1 / val_fraction) folds over the training callers and holds
    out the fold whose row share is closest to val_fraction.

    Args:
        rows: [m] indices (into groups / label_matrix) of the training rows.
        groups: [n_rows] caller id per row (all rows).
        label_matrix: [n_rows, k] 0/1 or None.
        val_fraction: share of training rows to hold out, in (0, 1).
        seed: tie-breaking seed.
    Returns:
        (fit_rows, val_rows): sorted indices into the full arrays, at least one caller on each side.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    rows = np.sort(np.asarray(rows, dtype=int))
    sub_groups = np.asarray(groups).astype(str)[rows]
    n_callers = len(np.unique(sub_groups))
    if n_callers < 2:
        raise ManifestError(f"the training rows hold {n_callers} caller(s); an inner validation split needs 2")
    n_parts = int(min(max(2, round(1.0 / val_fraction)), n_callers))
    sub_labels = None if label_matrix is None else _label_matrix(label_matrix, len(groups))[rows]
    parts = caller_folds(sub_groups, sub_labels, n_folds=n_parts, seed=seed)
    held_out = int(np.argmin([abs(len(p) / len(rows) - val_fraction) for p in parts]))
    val_mask = np.zeros(len(rows), dtype=bool)
    val_mask[parts[held_out]] = True
    return rows[~val_mask], rows[val_mask]


def fold_prevalence(
    folds: List[np.ndarray],
    label_matrix: np.ndarray,
    names: Sequence[str],
    *,
    groups: Optional[Sequence[str]] = None,
) -> List[Dict[str, object]]:
    """Per-fold size and label prevalence, to show how well stratification worked.

    Args:
        folds: test-row indices per fold.
        label_matrix: [n_rows, k] 0/1.
        names: [k] column names.
        groups: [n_rows] caller ids; without them n_callers is None.
    Returns:
        one dict per fold: fold, n_rows, n_callers, positives {name: count}, positive_share {name: share}.
    """
    labels = _label_matrix(label_matrix, len(label_matrix))
    if labels.shape[1] != len(names):
        raise ValueError(f"{len(names)} names for {labels.shape[1]} label columns")
    caller_ids = None if groups is None else np.asarray(groups).astype(str)
    out = []
    for i, fold in enumerate(folds):
        positives = labels[fold].sum(axis=0)
        out.append({
            "fold": i,
            "n_rows": int(len(fold)),
            "n_callers": None if caller_ids is None else int(len(np.unique(caller_ids[fold]))),
            "positives": {name: int(v) for name, v in zip(names, positives)},
            "positive_share": {name: float(v / max(len(fold), 1)) for name, v in zip(names, positives)},
        })
    return out


def prevalence_spread(table: List[Dict[str, object]], binary: str = "negative") -> Dict[str, float]:
    """How evenly the folds of a fold_prevalence table share the labels: the standard deviation (ddof=0)
    across folds of each column's positive share; `binary_spread` for the binary column, `fine_spread`
    the mean over the fine labels present (NaN without any)."""
    names = list(table[0]["positive_share"]) if table else []
    shares = np.array([[fold["positive_share"][n] for n in names] for fold in table], dtype=float)
    positives = np.array([[fold["positives"][n] for n in names] for fold in table]).sum(axis=0)
    spread = shares.std(axis=0) if len(table) else np.zeros(0)
    fine = [s for n, s, k in zip(names, spread, positives) if n != binary and k > 0]
    return {
        "binary_spread": float(spread[names.index(binary)]) if binary in names else float("nan"),
        "fine_spread": float(np.mean(fine)) if fine else float("nan"),
    }


def save_folds(path: Union[str, Path], folds: List[np.ndarray], groups: Sequence[str]) -> None:
    """Write the caller ids of each fold as JSON, atomically (temp file in the same folder, then rename).

    Stored by caller rather than by row so every ablation arm reuses the same split even if it
    reads the manifest in another order.
    """
    path = Path(path)
    caller_ids = np.asarray(groups).astype(str)
    payload = {
        "version": FOLDS_FORMAT_VERSION,
        "n_folds": len(folds),
        "n_rows": [int(len(f)) for f in folds],
        "folds": [sorted(set(caller_ids[f].tolist())) for f in folds],
    }
    write_json(path, payload)


def load_folds(path: Union[str, Path], groups: Sequence[str]) -> List[np.ndarray]:
    """Read folds written by save_folds and re-derive their row indices for these rows.

    Args:
        path: the JSON file.
        groups: [n_rows] caller id per row of the current manifest.
    Returns:
        test-row indices per fold.
    Raises:
        ManifestError (naming the path): unreadable file, a caller in two folds, a caller of the
        file missing from the manifest or a manifest caller missing from the file.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        fold_callers = [list(map(str, f)) for f in payload["folds"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: not a readable folds file ({exc})") from None
    fold_of: Dict[str, int] = {}
    for i, callers in enumerate(fold_callers):
        for caller in callers:
            if caller in fold_of:
                raise ManifestError(f"{path}: caller {caller!r} is in folds {fold_of[caller]} and {i}")
            fold_of[caller] = i
    caller_ids = np.asarray(groups).astype(str)
    present = set(caller_ids.tolist())
    unknown = sorted(set(fold_of) - present)
    unassigned = sorted(present - set(fold_of))
    if unknown or unassigned:
        raise ManifestError(
            f"{path}: folds do not match the manifest: {len(unknown)} caller(s) in the file but not in "
            f"the manifest {unknown[:5]}, {len(unassigned)} manifest caller(s) in no fold {unassigned[:5]}"
        )
    fold_of_row = np.array([fold_of[c] for c in caller_ids], dtype=int)
    return [np.flatnonzero(fold_of_row == i) for i in range(len(fold_callers))]


def regroup_for_protocol(manifest: Manifest, protocol: str) -> Manifest:
    """The manifest whose `caller_id` groups the splits: unchanged for protocol "caller"; for "segment"
    (cv.protocol, the seed study's split) every row its own group "<call_id>#<segment_index>", so every
    split here (folds, inner splits, bootstrap groups) runs over segments and ignores callers."""
    if protocol == "caller":
        return manifest
    if protocol != "segment":
        raise ValueError(f"unknown cv.protocol {protocol!r}")
    ids = [f"{c}#{int(i)}" for c, i in zip(manifest.call_id, manifest.segment_index)]
    return dataclasses.replace(manifest, caller_id=ids)


def make_folds(manifest: Manifest, *, n_folds: int, seed: int) -> List[np.ndarray]:
    """Test rows per fold (all rows of the fold's callers), stratified on caller segments' labels."""
    caller_rows = np.flatnonzero(manifest.is_caller)
    groups = [manifest.caller_id[r] for r in caller_rows]
    folds = caller_folds(groups, manifest.label_matrix()[caller_rows], n_folds=n_folds, seed=seed)
    return [rows_of_callers(manifest, {groups[i] for i in fold}) for fold in folds]


def rows_of_callers(manifest: Manifest, callers: set) -> np.ndarray:
    return np.array([i for i, c in enumerate(manifest.caller_id) if c in callers], dtype=np.int64)


def fold_callers(manifest: Manifest, folds: Sequence[np.ndarray]) -> List[List[str]]:
    return [sorted({manifest.caller_id[r] for r in fold}) for fold in folds]


def split_inner(manifest: Manifest, train_rows: np.ndarray, *, val_fraction: float, seed: int):
    """Caller-disjoint (fit rows, validation rows) inside the training callers."""
    caller_rows = train_rows[manifest.is_caller[train_rows]]
    groups = np.array(manifest.caller_id, dtype=object)
    fit_rows, val_rows = inner_split(caller_rows, list(groups), manifest.label_matrix(), val_fraction=val_fraction,
                                     seed=seed)
    fit_callers = {groups[r] for r in fit_rows}
    val_callers = {groups[r] for r in val_rows}
    assert not fit_callers & val_callers, "inner split leaked a caller"
    return rows_of_callers(manifest, fit_callers), rows_of_callers(manifest, val_callers)


def callers_of(manifest: Manifest, calls: Sequence[CallItem]) -> set:
    return {manifest.caller_id[it.rows[0]] for it in calls}
