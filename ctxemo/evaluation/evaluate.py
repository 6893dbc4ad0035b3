
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ctxemo.evaluation.metrics import (
    binary_metrics,
    fine_metrics,
    flatten_metrics,
    tune_binary_threshold,
    tune_thresholds,
)
from ctxemo.evaluation.scoring import SegmentScores
from ctxemo.taxonomy import Taxonomy

# Headline metrics, in table order. Names are documented in README ("Reading a run folder").
HEADLINE = ["binary_f1", "binary_seed_weighted_f1", "binary_auroc", "fine_weighted_f1", "fine_macro_f1",
            "fine_micro_f1"]


def evaluate(scores: SegmentScores, *, taxonomy: Taxonomy, binary_threshold: float, fine_thresholds,
             fine_labelled: bool = True) -> Dict:
    """Binary metrics on every scored segment; fine metrics on every segment (multi-label) or on the
    labelled ones (single-label: an unlabelled segment has no class to compare with). A corpus without
    fine labels (`fine_labelled` False, see embedding.corpus.has_fine_labels) has fine: None (absent)."""
    out = {"binary": binary_metrics(scores.negative, scores.p_negative, threshold=binary_threshold), "fine": None}
    if fine_labelled:
        fine_scores = scores if taxonomy.multilabel else scores.subset(scores.fine.sum(1) > 0)
        out["fine"] = fine_metrics(fine_scores.fine if taxonomy.multilabel else fine_scores.fine.argmax(1),
                                   fine_scores.p_fine, labels=list(taxonomy.labels), multilabel=taxonomy.multilabel,
                                   thresholds=fine_thresholds)
    return out


# Trivial predictors scored on every test fold beside the model, the floor a result is read against.
TRIVIAL = ("all_negative", "training_prior")
TRIVIAL_METRICS = ("binary_f1", "binary_seed_weighted_f1", "binary_recall", "binary_auroc", "fine_weighted_f1")


def headline(metrics: Dict) -> Dict[str, float]:
    """Flat per-fold scalars, prefixed binary_* and fine_*; the trivial predictors' as
    `<predictor>.<metric>` (e.g. all_negative.binary_f1) where the fold recorded them."""
    flat = {f"binary_{k}": v for k, v in flatten_metrics(metrics["binary"]).items()}
    flat.update({f"fine_{k}": v for k, v in flatten_metrics(metrics.get("fine") or {}).items()})
    for name, row in (metrics.get("trivial") or {}).items():
        flat.update({f"{name}.{k}": float("nan") if v is None else v for k, v in row.items() if k in TRIVIAL_METRICS})
    return flat


def trivial_metrics(scores: SegmentScores, *, taxonomy: Taxonomy, train_negative_share: float,
                    train_fine_share: np.ndarray, fine_labelled: bool = True) -> Dict[str, Dict[str, float]]:
    """TRIVIAL_METRICS of two predictors that ignore the audio, on the same test segments as the model:
    all_negative (every segment negative) and training_prior (every segment gets the training callers'
    shares as probabilities: negative iff most training segments are). Both take the fine labels at the
    training shares (multi-label: a label iff most training segments carry it; single-label: the most
    common). A model's gain is only a gain above these rows (an arm that calls nearly everything negative
    can "win" binary F1 at chance-level AUROC)."""
    n = len(scores.rows)
    prior_fine = np.tile(np.asarray(train_fine_share, dtype=float), (n, 1))
    rows = {}
    for name, p_negative in (("all_negative", np.ones(n)), ("training_prior", np.full(n, float(train_negative_share)))):
        constant = SegmentScores(scores.rows, p_negative, prior_fine, scores.negative, scores.fine)
        flat = headline(evaluate(constant, taxonomy=taxonomy, binary_threshold=0.5,
                                 fine_thresholds=np.full(taxonomy.num_labels, 0.5) if taxonomy.multilabel else None,
                                 fine_labelled=fine_labelled))
        rows[name] = {k: flat[k] for k in TRIVIAL_METRICS if k in flat}
    return rows


@dataclass
class Thresholds:
    binary: float
    fine: Optional[np.ndarray] = None  # [c]; None for a single-label taxonomy (the argmax label is chosen)


# A fine label is named only at this probability or above, whatever its tuned threshold: thresholds tuned on
# a small inner split can sink to 0.002 and put labels nobody would call likely into a segment's top labels.
MIN_LABEL_PROB = 0.1


def decision_thresholds(scores: SegmentScores, taxonomy: Taxonomy, *, tune: bool) -> Thresholds:
    """The decision thresholds a model is used with, from its inner-validation scores: the F1-maximising
    ones when `tune` (cv.tune_thresholds; fine ones at least MIN_LABEL_PROB), else 0.5. Single-label
    taxonomies take the argmax label, so they have no fine thresholds. Every study (cv folds, `ctxemo
    train`) picks its thresholds here."""
    if not tune:
        return Thresholds(binary=0.5, fine=np.full(taxonomy.num_labels, 0.5) if taxonomy.multilabel else None)
    binary = tune_binary_threshold(scores.negative, scores.p_negative)
    fine = np.maximum(tune_thresholds(scores.fine, scores.p_fine), MIN_LABEL_PROB) if taxonomy.multilabel else None
    return Thresholds(binary=binary, fine=fine)


def segment_labels(p_fine: np.ndarray, *, negative: bool, taxonomy: Taxonomy,
                   fine_thresholds: Optional[np.ndarray]) -> List[str]:
    """The fine labels a segment is reported with, agreeing with its binary decision (the one rule):

    - multi-label: the labels of the decision's side (negative labels for a negative segment, the others
      for the rest) with p >= max(threshold, MIN_LABEL_PROB), most probable first; a negative segment
      with none of them names its most likely negative label.
    - single-label: the argmax label, replaced by the most likely label of the side the binary decision
      took when it is on the other side (none if that side has no label).
    """
    p = np.asarray(p_fine, dtype=float)
    labels, is_negative_label = taxonomy.labels, taxonomy.negative_mask
    side = is_negative_label if negative else ~is_negative_label
    if fine_thresholds is None:
        ranked = [int(np.argmax(p))]
    else:
        cut = np.maximum(np.asarray(fine_thresholds, dtype=float), MIN_LABEL_PROB)
        ranked = [int(j) for j in np.argsort(-p, kind="stable") if p[j] >= cut[j]]
    chosen = [j for j in ranked if side[j]]
    if not chosen and side.any() and (negative or fine_thresholds is None):
        chosen = [int(np.flatnonzero(side)[np.argmax(p[side])])]  # the side's most likely label
    return [labels[j] for j in chosen]
