"""The training objective: binary + fine losses over scored (caller) segments of padded calls.

Legend: b = calls, s = segments, c = fine labels, n = scored segments.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ctxemo.data.datasets import CallBatch, CallItem
from ctxemo.models.call_model import SegmentLogits
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.losses import FocalLoss, build_loss, prior_bias


def fine_loss_rows(negative: np.ndarray, fine: np.ndarray, *, multilabel: bool, negative_only: bool) -> np.ndarray:
    """bool [n]: rows that take part in the fine loss.

    Single-label taxonomies score only rows with a label (a row with none has no class to predict);
    `negative_only` restricts the fine loss to negative segments (fine labels given negativity).
    """
    keep = np.ones(len(negative), dtype=bool)
    if not multilabel:
        keep &= fine.sum(axis=1) > 0
    if negative_only:
        keep &= negative > 0
    return keep


class Objective:
    """Weighted sum of the binary-head and fine-head losses, with class counts from one training fold."""

    def __init__(self, *, binary_loss: FocalLoss, fine_loss: FocalLoss, multilabel: bool,
                 negative_only: bool, binary_weight: float = 1.0, fine_weight: float = 1.0):
        self.binary_loss, self.fine_loss = binary_loss, fine_loss
        self.multilabel, self.negative_only = multilabel, negative_only
        self.binary_weight, self.fine_weight = binary_weight, fine_weight

    def to(self, device) -> "Objective":
        self.binary_loss.to(device)
        self.fine_loss.to(device)
        return self

    def __call__(self, logits: SegmentLogits, batch: CallBatch) -> torch.Tensor:
        scored = batch.scored_mask.reshape(-1)  # [b*s]
        negative = batch.negative.reshape(-1)
        fine = batch.fine.reshape(-1, batch.fine.shape[-1])
        binary = self.binary_loss(logits.binary.reshape(-1), negative, mask=scored)
        fine_mask = scored.clone()
        if not self.multilabel:
            fine_mask &= fine.sum(-1) > 0
        if self.negative_only:
            fine_mask &= negative > 0
        fine_targets = fine if self.multilabel else fine.argmax(-1)
        fine_value = self.fine_loss(logits.fine.reshape(-1, logits.fine.shape[-1]), fine_targets, mask=fine_mask)
        return self.binary_weight * binary + self.fine_weight * fine_value


def label_counts(items: Sequence[CallItem], *, taxonomy: Taxonomy, negative_only: bool):
    """Training-fold counts: binary [n_not_negative, n_negative], fine [c] positives, and the row total."""
    negative = np.concatenate([it.negative[it.scored] for it in items])
    fine = np.concatenate([it.fine[it.scored] for it in items])
    binary_counts = np.array([(negative == 0).sum(), (negative > 0).sum()])
    keep = fine_loss_rows(negative, fine, multilabel=taxonomy.multilabel, negative_only=negative_only)
    return binary_counts, fine[keep].sum(axis=0), int(keep.sum())


def build_objective(cfg, *, train_items: Sequence[CallItem], taxonomy: Taxonomy):
    """Objective for one fold (class counts from its training calls) and the fine-head prior bias."""
    binary_counts, fine_counts, n_fine_rows = label_counts(
        train_items, taxonomy=taxonomy, negative_only=cfg.head.fine_on_negative_only)
    common = dict(kind=cfg.loss.kind, beta=cfg.loss.beta, gamma=cfg.loss.gamma)
    objective = Objective(
        binary_loss=build_loss(class_counts=binary_counts, multilabel=True, **common),
        # Multi-label: each label is a binary problem over the fine-loss rows, counts [n_rows - n_c, n_c].
        fine_loss=build_loss(class_counts=np.stack([n_fine_rows - fine_counts, fine_counts], axis=1)
                             if taxonomy.multilabel else fine_counts, multilabel=taxonomy.multilabel, **common),
        multilabel=taxonomy.multilabel, negative_only=cfg.head.fine_on_negative_only,
        binary_weight=cfg.loss.binary_weight, fine_weight=cfg.loss.fine_weight,
    )
    bias = prior_bias(fine_counts, n_fine_rows) if taxonomy.multilabel else None
    return objective, bias
