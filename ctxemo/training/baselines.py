"""Baseline trainers (`train.mode`), with the same signature and the same fold protocol as the neural ones,
so that every study reads its arms against them on the same folds, splits and threshold tuning:

- `linear_probe`: scikit-learn logistic regression on the segment features standardised with the fit
  callers' statistics, class-balanced; one binary model, one multinomial model over the labelled segments
  (single-label) or one model per label (multi-label).
- `prior`: the trivial predictor: every segment gets the fit callers' prevalences. With tuned thresholds
  its binary decisions are "all negative", so its binary F1 is the all-negative predictor's; its AUROC is 0.5.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ctxemo.data.datasets import CallItem
from ctxemo.embedding.corpus import CorpusData
from ctxemo.evaluation.scoring import SegmentScores
from ctxemo.models.heads import binary_logit_from_fine
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.loop import TrainedModel, TrainResult

PROBE_C = 0.5  # inverse L2 strength, as in the classic reference (shared/realspeech/reference.py)
PROBE_MAX_ITER = 3000


def scored_arrays(calls: Sequence[CallItem]) -> Dict[str, np.ndarray]:
    """Rows, features and gold labels of the scored (caller) segments, in the order scoring reports them."""
    keep = [it.scored for it in calls]
    pick = lambda name: np.concatenate([getattr(it, name)[k] for it, k in zip(calls, keep)])  # noqa: E731
    return {"rows": pick("rows"), "feats": pick("feats"), "negative": pick("negative"), "fine": pick("fine")}


def _scores(arrays: Dict[str, np.ndarray], p_negative: np.ndarray, p_fine: np.ndarray) -> SegmentScores:
    """SegmentScores of the segments `scored_arrays` gave, with these probabilities."""
    return SegmentScores(arrays["rows"], p_negative.astype(np.float32), p_fine.astype(np.float32),
                         arrays["negative"].astype(np.int64), arrays["fine"].astype(np.int64))


class _Constant:
    """A fitted 'model' for a label with one class in the fit callers: always that class's frequency."""

    def __init__(self, p: float):
        self.p = float(p)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.tile([1.0 - self.p, self.p], (len(x), 1))


def _binary_model(x: np.ndarray, y: np.ndarray):
    y = (y > 0).astype(int)
    if len(np.unique(y)) < 2:
        return _Constant(y.mean() if len(y) else 0.0)
    return LogisticRegression(C=PROBE_C, class_weight="balanced", max_iter=PROBE_MAX_ITER).fit(x, y)


def negative_from_fine(p_fine: np.ndarray, taxonomy: Taxonomy) -> np.ndarray:
    """P(negative) implied by fine-label probabilities: the neural heads' rule, fed the probabilities' logits."""
    p = torch.as_tensor(np.clip(p_fine, 1e-7, 1 - 1e-7))
    logits = torch.logit(p) if taxonomy.multilabel else torch.log(p)  # softmax(log p) = p
    mask = torch.as_tensor(np.asarray(taxonomy.negative_mask, bool))
    return torch.sigmoid(binary_logit_from_fine(logits, negative_mask=mask, multilabel=taxonomy.multilabel)).numpy()


class LinearProbe:
    """Standardise, then logistic regressions for the binary and the fine labels; p_negative follows
    `head.binary_from` as the neural arms do (head: the binary model; fine: from the fine labels; mean)."""

    def __init__(self, taxonomy: Taxonomy, binary_from: str = "head"):
        self.taxonomy, self.binary_from = taxonomy, binary_from

    def fit(self, x: np.ndarray, negative: np.ndarray, fine: np.ndarray) -> "LinearProbe":
        self.scaler = StandardScaler().fit(x)
        z = self.scaler.transform(x)
        self.binary = _binary_model(z, negative)
        c = self.taxonomy.num_labels
        if self.taxonomy.multilabel:
            self.fine = [_binary_model(z, fine[:, j]) for j in range(c)]
        else:
            labelled = fine.sum(1) > 0
            y = fine[labelled].argmax(1)
            self.classes = np.unique(y)
            self.fine = (LogisticRegression(C=PROBE_C, class_weight="balanced", max_iter=PROBE_MAX_ITER)
                         .fit(z[labelled], y) if len(self.classes) > 1 else None)
        return self

    def predict(self, x: np.ndarray):
        z = self.scaler.transform(x)
        p_negative = self.binary.predict_proba(z)[:, 1]
        c = self.taxonomy.num_labels
        if self.taxonomy.multilabel:
            p_fine = np.stack([m.predict_proba(z)[:, 1] for m in self.fine], axis=1)
        else:
            p_fine = np.zeros((len(z), c))
            if self.fine is None:
                p_fine[:, self.classes] = 1.0
            else:
                p_fine[:, self.fine.classes_] = self.fine.predict_proba(z)
        if self.binary_from != "head":
            from_fine = negative_from_fine(p_fine, self.taxonomy)
            p_negative = from_fine if self.binary_from == "fine" else 0.5 * (p_negative + from_fine)
        return p_negative, p_fine

    def state_dict(self) -> Dict[str, torch.Tensor]:
        state = {"scaler.mean": self.scaler.mean_, "scaler.scale": self.scaler.scale_}
        models = {"binary": self.binary, **({f"fine.{j}": m for j, m in enumerate(self.fine)}
                                            if isinstance(self.fine, list) else {"fine": self.fine})}
        for name, m in models.items():
            if isinstance(m, LogisticRegression):
                state[f"{name}.coef"], state[f"{name}.intercept"] = m.coef_, m.intercept_
        return {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in state.items()}


def train_linear_probe(cfg: DictConfig, data: CorpusData, items: Dict[str, List[CallItem]], *, taxonomy: Taxonomy,
                       objective=None, fine_bias=None, fold: int = 0, fold_dir: Path = Path("."),
                       progress: bool = False) -> TrainedModel:
    """The linear probe on the fit calls' caller segments (validation calls are only scored, for thresholds)."""
    fit = scored_arrays(items["fit"])
    probe = LinearProbe(taxonomy, str(cfg.head.binary_from)).fit(fit["feats"], fit["negative"], fit["fine"])

    def score(calls: Sequence[CallItem]) -> SegmentScores:
        arrays = scored_arrays(calls)
        return _scores(arrays, *probe.predict(arrays["feats"]))

    return TrainedModel(TrainResult(best_epoch=0, best_metrics={}, state_dict=probe.state_dict()), score, None)


def train_prior(cfg: DictConfig, data: CorpusData, items: Dict[str, List[CallItem]], *, taxonomy: Taxonomy,
                objective=None, fine_bias=None, fold: int = 0, fold_dir: Path = Path("."),
                progress: bool = False) -> TrainedModel:
    """The trivial predictor: the fit callers' prevalence of negative and of each fine label."""
    fit = scored_arrays(items["fit"])
    p_neg = float(np.mean(fit["negative"] > 0)) if len(fit["negative"]) else 0.0
    fine = fit["fine"] if taxonomy.multilabel else fit["fine"][fit["fine"].sum(1) > 0]
    p_label = fine.mean(0) if len(fine) else np.zeros(taxonomy.num_labels)

    def score(calls: Sequence[CallItem]) -> SegmentScores:
        arrays = scored_arrays(calls)
        n = len(arrays["rows"])
        return _scores(arrays, np.full(n, p_neg), np.tile(p_label, (n, 1)))

    state = {"p_negative": torch.tensor([p_neg]), "p_fine": torch.as_tensor(np.asarray(p_label, np.float32))}
    return TrainedModel(TrainResult(best_epoch=0, best_metrics={}, state_dict=state), score, None)
