"""Evaluation metrics, decision-threshold tuning, fold summaries and paired significance tests.

numpy arrays in, plain Python floats / ints / dicts out (undefined values are NaN here; ctxemo.io writes
them to JSON as null).
Shape legend: n = rows (segments), c = labels / classes.

Labels absent from a fold (the one rule for every macro average): a label with no gold positive among the
scored rows is left out of macro F1, macro AP and macro AUROC alike, and `n_labels_present` says how many
were averaged. Its per-label recall and F1 are NaN there (undefined; a perfect model would otherwise
score 0 on it). Spurious predictions of an absent label still count, in micro F1 and the per-label precision.
"""
from __future__ import annotations

import numbers
import warnings
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import stats
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

NAN = float("nan")
TOP_CONFUSED_PAIRS = 10
CALIBRATION_BINS = 10  # equal-width probability bins of the ECE and the reliability diagram
# Below this many callers the bootstrap's p is withheld: resampling 4 callers gives p = 0.002 for an arm the
# per-fold t-test puts at 0.27 (issue 15); the exact sign-flip test states the limit instead (min p = 2 / 2^n).
MIN_BOOTSTRAP_GROUPS = 10
MAX_EXACT_FLIP_GROUPS = 16  # 2^16 sign patterns; beyond, a seeded random sample of them


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence warnings for metrics that are undefined on a fold (we return 0 or NaN by design)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # nan-means of all-NaN slices, scipy on ties
        yield


def _ranking_scores(y: np.ndarray, score: np.ndarray) -> Tuple[float, float]:
    """(AUROC, AP) for one binary column; NaN when only one class is present."""
    if y.size == 0 or np.unique(y).size < 2:
        return NAN, NAN
    return float(roc_auc_score(y, score)), float(average_precision_score(y, score))


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """scikit-learn's ROC AUC; NaN when y holds one class."""
    return _ranking_scores(np.asarray(y), np.asarray(score, dtype=float))[0]


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """scikit-learn's average precision; NaN when there is no positive (early stopping skips it).

    >>> average_precision(np.array([0, 1, 1]), np.array([0.1, 0.9, 0.8]))
    1.0
    """
    y = np.asarray(y) > 0
    if not y.any():
        return float("nan")
    with _quiet():
        return float(average_precision_score(y, np.asarray(p, dtype=float)))


def decision_f1(y: np.ndarray, pred: np.ndarray, *, average: str = "binary") -> float:
    """scikit-learn's F1 of 0/1 decisions (zero_division=0): `binary` = the negative-emotion class of [n]
    arrays; `weighted` = support-weighted over the columns of [n, c] indicator arrays."""
    return float(f1_score(np.asarray(y) > 0, np.asarray(pred) > 0, average=average, zero_division=0))


def calibration_bins(y: np.ndarray, p: np.ndarray, *, n_bins: int = CALIBRATION_BINS
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reliability of probabilities p [n] for 0/1 outcomes y [n] in `n_bins` equal-width bins of p.

    Returns:
        (edges [b + 1], mean predicted probability [b], observed positive share [b], rows [b]); the
        means are NaN in empty bins. p = 1.0 falls in the last bin.
    """
    y, p = np.asarray(y, dtype=float).reshape(-1), np.asarray(p, dtype=float).reshape(-1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(which, weights=p, minlength=n_bins) / count
        share = np.bincount(which, weights=y, minlength=n_bins) / count
    return edges, mean_p, share, count


def expected_calibration_error(y: np.ndarray, p: np.ndarray, *, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE: the row-weighted mean |observed positive share - mean probability| over equal-width bins of p.
    0 for perfectly calibrated probabilities; NaN without rows.

    >>> expected_calibration_error(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5]))
    0.0
    """
    _, mean_p, share, count = calibration_bins(y, p, n_bins=n_bins)
    if count.sum() == 0:
        return NAN
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(share[filled] - mean_p[filled])) / count.sum())


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between probability and 0/1 outcome (lower is better); NaN without rows."""
    y, p = np.asarray(y, dtype=float).reshape(-1), np.asarray(p, dtype=float).reshape(-1)
    return float(np.mean((p - y) ** 2)) if y.size else NAN


def binary_metrics(y_true: np.ndarray, p_neg: np.ndarray, *, threshold: float = 0.5) -> Dict[str, float]:
    """Negative-vs-not metrics, with negative emotion (y = 1) as the positive class.

    Args:
        y_true: [n] 0/1.
        p_neg: [n] predicted probability of negative emotion.
        threshold: predict negative where p_neg >= threshold.
    Returns:
        flat dict: precision, recall, f1 (of the negative class); seed_weighted_f1 (sklearn
        average='weighted' over both classes, the figure the seed study reported); accuracy; auroc
        and ap (NaN when y_true holds one class); ece and brier (calibration of p_neg as a risk, see
        `expected_calibration_error`, `brier_score`); support_negative, support_not_negative, n; threshold.
    """
    y = np.asarray(y_true).astype(int).reshape(-1)
    p = np.asarray(p_neg, dtype=float).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and p_neg {p.shape} differ in length")
    pred = (p >= threshold).astype(int)
    with _quiet():
        precision, recall, f1, _ = precision_recall_fscore_support(
            y, pred, labels=[1], average="binary", pos_label=1, zero_division=0
        )
        weighted = f1_score(y, pred, labels=[0, 1], average="weighted", zero_division=0)
    auroc, ap = _ranking_scores(y, p)
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "seed_weighted_f1": float(weighted),
        "accuracy": float(accuracy_score(y, pred)) if y.size else NAN,
        "auroc": auroc,
        "ap": ap,
        "ece": expected_calibration_error(y, p),
        "brier": brier_score(y, p),
        "support_negative": int(y.sum()),
        "support_not_negative": int((y == 0).sum()),
        "n": int(y.size),
        "threshold": float(threshold),
    }


def _multiclass_indices(y_true: np.ndarray, n_classes: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim == 2:
        if y.shape[1] != n_classes or not np.all(y.sum(axis=1) == 1):
            raise ValueError("multi-class one-hot y_true must be [n, c] with exactly one 1 per row")
        y = y.argmax(axis=1)
    return y.astype(int).reshape(-1)


def _confused_pairs(counts: np.ndarray, labels: Sequence[str]) -> List[Dict[str, object]]:
    """Top off-diagonal entries of a [c, c] (true, pred) count matrix, largest first."""
    counts = counts.copy()
    np.fill_diagonal(counts, 0)
    true_idx, pred_idx = np.nonzero(counts)
    # Stable order: count descending, then label order, so reports do not flicker between runs.
    order = sorted(zip(true_idx, pred_idx), key=lambda ij: (-counts[ij], ij[0], ij[1]))
    return [
        {"true": labels[i], "pred": labels[j], "count": int(counts[i, j])}
        for i, j in order[:TOP_CONFUSED_PAIRS]
    ]


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.any(~np.isnan(arr)) else NAN


def fine_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    labels: List[str],
    multilabel: bool,
    thresholds: Optional[Union[float, np.ndarray]] = None,
) -> Dict[str, object]:
    """Fine-label metrics.

    Args:
        y_true: multi-label [n, c] 0/1; multi-class [n] int or one-hot [n, c].
        probs: [n, c] per-label sigmoid probabilities or per-class softmax probabilities.
        labels: [c] label names.
        multilabel: True predicts probs >= thresholds per label; False predicts the argmax.
        thresholds: scalar or [c] (multi-label only); None = 0.5.
    Returns:
        weighted_f1, macro_f1 (over the labels present, see the module note), micro_f1,
        labelled_samples_f1 (multi-label only: the per-row F1 averaged over rows with at least one gold
        label; a row with no gold label has no F1 of its own; NaN for multi-class, where it would equal
        accuracy), seed_label_weighted_f1 (the seed study's multi-label score: the mean over labels of
        each label's binary F1 support-weighted over its two classes, which credits the many true
        negatives of a rare label), accuracy (exact match for multi-label), macro_ap and macro_auroc,
        n_labels_present,
        per_label {name: {precision, recall, f1, support, ap, auroc}}, confused_pairs [{true, pred,
        count}] (at most 10, largest first). For multi-label a pair counts rows where `true` is a
        missed label and `pred` a spurious one; for multi-class it is the off-diagonal confusion count.
        zero_division = 0 otherwise, as in scikit-learn.
    """
    p = np.asarray(probs, dtype=float)
    c = len(labels)
    if p.ndim != 2 or p.shape[1] != c:
        raise ValueError(f"probs must be [n, {c}] for labels {labels}, got {p.shape}")
    if multilabel:
        y = np.asarray(y_true).astype(int)
        if y.shape != p.shape:
            raise ValueError(f"multi-label y_true must match probs {p.shape}, got {y.shape}")
        cut = np.broadcast_to(np.asarray(0.5 if thresholds is None else thresholds, dtype=float), (c,))
        pred = (p >= cut).astype(int)
        y_ind, pred_ind = y, pred
    else:
        y_idx = _multiclass_indices(y_true, c)
        if y_idx.shape[0] != p.shape[0]:
            raise ValueError(f"y_true has {y_idx.shape[0]} rows, probs {p.shape[0]}")
        pred_idx = p.argmax(axis=1)
        eye = np.eye(c, dtype=int)
        y_ind, pred_ind = eye[y_idx], eye[pred_idx]

    present = y_ind.sum(axis=0) > 0  # [c] labels with a gold positive: the ones macro averages run over
    with _quiet():
        if multilabel:
            avg = {k: f1_score(y, pred, average=k, zero_division=0) for k in ("weighted", "micro")}
            labelled = y.sum(axis=1) > 0
            avg["samples"] = (f1_score(y[labelled], pred[labelled], average="samples", zero_division=0)
                              if labelled.any() else NAN)
            accuracy = accuracy_score(y, pred)
        else:
            kw = dict(labels=list(range(c)), zero_division=0)
            avg = {k: f1_score(y_idx, pred_idx, average=k, **kw) for k in ("weighted", "micro")}
            avg["samples"] = NAN
            accuracy = accuracy_score(y_idx, pred_idx)
        precision, recall, f1, support = precision_recall_fscore_support(
            y_ind, pred_ind, average=None, zero_division=0
        )
    avg["macro"] = float(f1[present].mean()) if present.any() else NAN
    with _quiet():  # the seed study's multi-label score: per label, F1 support-weighted over its 0/1 classes
        seed_per_label = [f1_score(y_ind[:, k], pred_ind[:, k], labels=[0, 1], average="weighted", zero_division=0)
                          for k in np.flatnonzero(present)]

    per_label: Dict[str, Dict[str, float]] = {}
    for k, name in enumerate(labels):
        auroc, ap = _ranking_scores(y_ind[:, k], p[:, k])
        per_label[name] = {
            "precision": float(precision[k]),
            "recall": float(recall[k]) if present[k] else NAN,
            "f1": float(f1[k]) if present[k] else NAN,
            "support": int(support[k]),
            "ap": ap,
            "auroc": auroc,
        }

    if multilabel:
        missed = (y == 1) & (pred == 0)  # [n, c]
        spurious = (pred == 1) & (y == 0)  # [n, c]
        pair_counts = missed.astype(int).T @ spurious.astype(int)  # [c, c]: a missed while b predicted
    else:
        pair_counts = confusion_matrix(y_idx, pred_idx, labels=list(range(c)))

    return {
        "weighted_f1": float(avg["weighted"]),
        "macro_f1": float(avg["macro"]),
        "micro_f1": float(avg["micro"]),
        "labelled_samples_f1": float(avg["samples"]),
        "seed_label_weighted_f1": float(np.mean(seed_per_label)) if seed_per_label else NAN,
        "accuracy": float(accuracy) if p.shape[0] else NAN,
        "macro_ap": _nanmean([m["ap"] for m, keep in zip(per_label.values(), present) if keep]),
        "macro_auroc": _nanmean([m["auroc"] for m, keep in zip(per_label.values(), present) if keep]),
        "n_labels_present": int(present.sum()),
        "per_label": per_label,
        "confused_pairs": _confused_pairs(pair_counts, labels),
    }


def _best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold maximising F1 of (p >= t) over t in {observed probabilities} ∪ {0.5}."""
    n_pos = int(y.sum())
    if n_pos == 0:
        return 0.5
    order = np.argsort(p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    distinct = np.unique(p_sorted)
    candidates = np.unique(np.append(distinct, 0.5))
    # For threshold t, rows with p >= t are predicted positive: the suffix from searchsorted(t, 'left').
    start = np.searchsorted(p_sorted, candidates, side="left")
    pos_before = np.concatenate([[0], np.cumsum(y_sorted)])  # positives among the first i rows
    tp = n_pos - pos_before[start]
    predicted = len(p) - start
    f1 = 2.0 * tp / (predicted + n_pos)
    # Ties: prefer the candidate nearest 0.5, the untuned default.
    best = np.lexsort((np.abs(candidates - 0.5), -f1))[0]
    t = float(candidates[best])
    # An observed value as cut sits right on a tuning row; the midpoint to the next lower observed
    # value makes the same predictions here and leaves a margin for unseen rows.
    below = distinct[distinct < t]
    if t in distinct and below.size:
        t = float((t + below[-1]) / 2.0)
    return t


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-label decision thresholds that maximise F1 on the given (inner-validation) rows.

    Args:
        y_true: [n, c] 0/1.
        probs: [n, c].
    Returns:
        [c] float thresholds; 0.5 for a label without positives. On these rows each label's F1 at
        its threshold is >= its F1 at 0.5.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(probs, dtype=float)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"y_true and probs must both be [n, c], got {y.shape} and {p.shape}")
    return np.array([_best_threshold(y[:, k], p[:, k]) for k in range(y.shape[1])], dtype=float)


def tune_binary_threshold(y_true: np.ndarray, p_neg: np.ndarray) -> float:
    """F1-maximising threshold for the binary head; y_true [n] 0/1, p_neg [n]."""
    y = np.asarray(y_true).astype(int).reshape(-1)
    return _best_threshold(y, np.asarray(p_neg, dtype=float).reshape(-1))


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1, the usual across-folds spread), NaN ignored.

    Returns (NaN, NaN) for no finite values and std NaN for a single value (one fold has no spread;
    tables print "(1 fold)").
    """
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return NAN, NAN
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size >= 2 else NAN)


def _is_scalar(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def flatten_metrics(metrics: Dict[str, object], prefix: str = "") -> Dict[str, float]:
    """Flatten nested dicts to dotted scalar keys ("per_label.fear.f1"); lists and strings are dropped,
    None (an undefined value read back from JSON's null) becomes NaN, as it was before writing."""
    flat: Dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}."))
        elif _is_scalar(value):
            flat[name] = float(value)
        elif value is None:
            flat[name] = NAN
    return flat


def summarize_folds(per_fold: List[Dict[str, float]]) -> Dict[str, Dict[str, object]]:
    """Mean ± std across folds for every scalar metric (use flatten_metrics first for nested dicts).

    Args:
        per_fold: one flat dict per fold; non-scalar values are skipped, a key missing in a fold
            counts as NaN there.
    Returns:
        {name: {"mean", "std", "n", "folds": [value per fold]}} in first-seen key order; n = folds with a
        defined value.
    """
    names: List[str] = []
    for fold in per_fold:
        names.extend(k for k, v in fold.items() if _is_scalar(v) and k not in names)
    summary: Dict[str, Dict[str, object]] = {}
    for name in names:
        values = [float(fold[name]) if _is_scalar(fold.get(name)) else NAN for fold in per_fold]
        mean, std = mean_std(values)
        summary[name] = {"mean": mean, "std": std, "n": int(np.sum(np.isfinite(values))), "folds": values}
    return summary


def paired_test(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Same-fold paired comparison of arm b against reference arm a.

    Folds where either value is NaN are dropped. The t-test needs n >= 2 and non-constant
    differences; the Wilcoxon signed-rank test needs n >= 2 and a non-zero difference (exact
    distribution for small n: with 5 folds its smallest two-sided p is 0.0625). Otherwise NaN.

    Args:
        a: [folds] reference metric per fold.
        b: [folds] compared metric, same fold order.
    Returns:
        n, mean_a, mean_b, mean_diff (b - a), std_diff (ddof = 1), t_stat, p_ttest, p_wilcoxon.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_test needs two equally long lists, got {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    diff = y - x
    n = int(diff.size)
    out = {
        "n": n,
        "mean_a": float(x.mean()) if n else NAN,
        "mean_b": float(y.mean()) if n else NAN,
        "mean_diff": float(diff.mean()) if n else NAN,
        "std_diff": float(diff.std(ddof=1)) if n >= 2 else NAN,
        "t_stat": NAN,
        "p_ttest": NAN,
        "p_wilcoxon": NAN,
    }
    with _quiet():
        warnings.simplefilter("ignore", UserWarning)  # scipy's small-sample notes; n is reported
        if n >= 2 and np.ptp(diff) > 0:
            t = stats.ttest_rel(y, x)
            out["t_stat"], out["p_ttest"] = float(t.statistic), float(t.pvalue)
        if n >= 2 and np.any(diff != 0):
            out["p_wilcoxon"] = float(stats.wilcoxon(y, x).pvalue)
    return out


def _rows_of_groups(groups: np.ndarray) -> List[np.ndarray]:
    _, group_of_row = np.unique(np.asarray(groups), return_inverse=True)
    return [np.flatnonzero(group_of_row == k) for k in range(group_of_row.max() + 1)]


def _group_resamples(rows_of_group: List[np.ndarray], n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of n_boot resamples of whole groups (callers) with replacement."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        picked = rng.integers(0, len(rows_of_group), size=len(rows_of_group))
        yield np.concatenate([rows_of_group[k] for k in picked])


def bootstrap_interval(y_true: np.ndarray, scores: np.ndarray, groups: Sequence[str], *,
                       metric_fn: Callable[[np.ndarray, np.ndarray], float], n_boot: int = 1000,
                       seed: int = 0) -> Tuple[float, float]:
    """95% percentile interval of metric_fn over caller-level resamples (NaN, NaN when none is defined)."""
    y, p = np.asarray(y_true), np.asarray(scores)
    with _quiet():
        values = np.array([metric_fn(y[idx], p[idx]) for idx in _group_resamples(_rows_of_groups(groups), n_boot, seed)],
                          dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return NAN, NAN
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def paired_bootstrap(
    y_true: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    groups: Sequence[str],
    *,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    seed: int = 0,
) -> Dict[str, float]:
    """Caller-level paired bootstrap of metric(b) - metric(a) on the same rows.

    Callers (groups) are resampled with replacement and keep all their rows, so the interval
    reflects between-caller variation rather than treating a caller's segments as independent.

    Args:
        y_true: [n] or [n, c] targets.
        p_a, p_b: [n] or [n, c] scores of the two arms for the same rows.
        groups: [n] caller id per row.
        metric_fn: (y_true, scores) -> float, e.g. ``lambda y, p: binary_metrics(y, p)["f1"]``.
        n_boot: bootstrap replicates.
        seed: RNG seed.
    Returns:
        metric_a, metric_b, diff (on all rows), ci_low / ci_high (95% percentile interval), p
        (two-sided, share of replicates on the other side of 0, with +1 smoothing; NaN with fewer than
        MIN_BOOTSTRAP_GROUPS groups, p_withheld then says why), n_boot (replicates with a defined
        metric), n_groups.
    """
    y, a, b = np.asarray(y_true), np.asarray(p_a), np.asarray(p_b)
    g = np.asarray(groups)
    if not (len(y) == len(a) == len(b) == len(g)):
        raise ValueError(f"row counts differ: y_true {len(y)}, p_a {len(a)}, p_b {len(b)}, groups {len(g)}")
    rows_of_group = _rows_of_groups(g)
    diffs = np.empty(n_boot)
    with _quiet():
        metric_a, metric_b = float(metric_fn(y, a)), float(metric_fn(y, b))
        for i, idx in enumerate(_group_resamples(rows_of_group, n_boot, seed)):
            diffs[i] = metric_fn(y[idx], b[idx]) - metric_fn(y[idx], a[idx])
    diffs = diffs[~np.isnan(diffs)]
    if diffs.size == 0:
        low = high = p = NAN
    else:
        low, high = (float(q) for q in np.percentile(diffs, [2.5, 97.5]))
        tail = min(np.sum(diffs <= 0), np.sum(diffs >= 0))
        p = float(min(1.0, 2.0 * (tail + 1) / (diffs.size + 1)))
    few = len(rows_of_group) < MIN_BOOTSTRAP_GROUPS
    return {
        "metric_a": metric_a,
        "metric_b": metric_b,
        "diff": metric_b - metric_a,
        "ci_low": low,
        "ci_high": high,
        "p": NAN if few else p,
        "p_withheld": (f"{len(rows_of_group)} groups < {MIN_BOOTSTRAP_GROUPS}: a bootstrap over so few callers "
                       "understates the spread; read the sign-flip test" if few else None),
        "n_boot": int(diffs.size),
        "n_groups": len(rows_of_group),
    }


def f1_counts(y_true: np.ndarray, pred: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Per-group (true positive, false positive, false negative) counts, the additive parts of F1.

    Args:
        y_true, pred: [n] or [n, c] 0/1.
        groups: [n] caller id per row.
    Returns:
        [g, c, 3] float counts (c = 1 for [n] inputs), groups in sorted order.
    """
    y = np.asarray(y_true).reshape(len(groups), -1) > 0
    d = np.asarray(pred).reshape(len(groups), -1) > 0
    _, group_of_row = np.unique(np.asarray(groups), return_inverse=True)
    counts = np.zeros((group_of_row.max() + 1, y.shape[1], 3))
    np.add.at(counts, group_of_row, np.stack([y & d, ~y & d, y & ~d], axis=-1).astype(float))
    return counts


def f1_from_counts(totals: np.ndarray, *, average: str = "binary") -> np.ndarray:
    """F1 from summed counts [..., c, 3] (zero_division 0): `binary` = the first column's F1 ([...]),
    `weighted` = support-weighted over the columns, as decision_f1."""
    tp, fp, fn = totals[..., 0], totals[..., 1], totals[..., 2]
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    if average == "binary":
        return f1[..., 0]
    support = tp + fn
    total = support.sum(axis=-1)
    return np.divide((f1 * support).sum(axis=-1), total, out=np.zeros_like(total), where=total > 0)


def sign_flip_test(counts_a: np.ndarray, counts_b: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *,
                   n_random: int = 20000, seed: int = 0) -> Dict[str, object]:
    """Paired permutation (sign-flip) test of statistic(b) - statistic(a) over groups (callers).

    Under "the two arms are exchangeable within each caller", swapping a caller's predictions between the
    arms leaves the distribution unchanged. Every one of the 2^g swap patterns is enumerated when g <=
    MAX_EXACT_FLIP_GROUPS (exact: p can be no smaller than 2 / 2^g, which says what so few callers can
    show), else a seeded random sample of n_random patterns.

    Args:
        counts_a, counts_b: [g, ...] additive per-group counts of each arm (e.g. f1_counts).
        statistic: summed counts [m, ...] -> [m] metric values (e.g. f1_from_counts).
    Returns:
        diff (on all rows), p (two-sided: share of patterns with |diff| at least the observed), exact,
        n_patterns, n_groups, min_p (the smallest p this many groups allow; exact only).
    """
    a, b = np.asarray(counts_a, dtype=float), np.asarray(counts_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"per-group counts differ in shape: {a.shape} and {b.shape}")
    g = a.shape[0]
    total_a, total_b = a.sum(axis=0), b.sum(axis=0)
    observed = float(statistic(total_b[None])[0] - statistic(total_a[None])[0])
    delta = (a - b).reshape(g, -1)  # what swapping a group moves from b's total to a's
    exact = g <= MAX_EXACT_FLIP_GROUPS
    n_patterns = 2 ** g if exact else n_random
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, n_patterns, 4096):
        stop = min(n_patterns, start + 4096)
        if exact:
            swap = ((np.arange(start, stop)[:, None] >> np.arange(g)[None]) & 1).astype(float)  # [m, g]
        else:
            swap = (rng.random((stop - start, g)) < 0.5).astype(float)
        moved = (swap @ delta).reshape(-1, *a.shape[1:])
        diffs = statistic(total_b[None] + moved) - statistic(total_a[None] - moved)
        extreme += int(np.sum(np.abs(diffs) >= abs(observed) - 1e-12))
    p = extreme / n_patterns if exact else (extreme + 1) / (n_patterns + 1)
    return {"diff": observed, "p": float(p), "exact": exact, "n_patterns": int(n_patterns), "n_groups": int(g),
            "min_p": float(2.0 / 2 ** g) if exact and g else NAN}

