
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

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


def evaluate(scores: SegmentScores, *, taxonomy: Taxonomy, binary_threshold: float, fine_thresholds) -> Dict:
    """Binary metrics on every scored segment; fine metrics on every segment (multi-label) or on the
    labelled ones (single-label: an unlabelled segment has no class to compare with)."""
    fine_scores = scores if taxonomy.multilabel else scores.subset(scores.fine.sum(1) > 0)
    return {
        "binary": binary_metrics(scores.negative, scores.p_negative, threshold=binary_threshold),
        "fine": fine_metrics(fine_scores.fine if taxonomy.multilabel else fine_scores.fine.argmax(1),
                             fine_scores.p_fine, labels=list(taxonomy.labels), multilabel=taxonomy.multilabel,
                             thresholds=fine_thresholds),
    }


def headline(metrics: Dict) -> Dict[str, float]:
    """Flat per-fold scalars, prefixed binary_* and fine_*."""
    flat = {f"binary_{k}": v for k, v in flatten_metrics(metrics["binary"]).items()}
    flat.update({f"fine_{k}": v for k, v in flatten_metrics(metrics["fine"]).items()})
    return flat


@dataclass
class Thresholds:
    binary: float
    fine: Optional[np.ndarray] = None  # [c]; None for a single-label taxonomy (the argmax label is chosen)


def decision_thresholds(scores: SegmentScores, taxonomy: Taxonomy, *, tune: bool) -> Thresholds:
    """The decision thresholds a model is used with, from its inner-validation scores: the F1-maximising
    ones when `tune` (cv.tune_thresholds), else 0.5. Single-label taxonomies take the argmax label, so
    they have no fine thresholds. Every study (cv folds, `ctxemo train`) picks its thresholds here."""
    if not tune:
        return Thresholds(binary=0.5, fine=np.full(taxonomy.num_labels, 0.5) if taxonomy.multilabel else None)
    binary = tune_binary_threshold(scores.negative, scores.p_negative)
    return Thresholds(binary=binary, fine=tune_thresholds(scores.fine, scores.p_fine) if taxonomy.multilabel else None)
