"""Score calls with a CallModel: per caller segment, p_negative and fine-label probabilities.

Legend: b = calls, s = segments, c = fine labels, n = scored segments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ctxemo.data.datasets import CallBatch, CallItem, iterate_batches
from ctxemo.models.call_model import CallModel, forward_windowed


@dataclass
class SegmentScores:
    """Probabilities of the scored segments, with the manifest rows they belong to."""

    rows: np.ndarray  # [n] manifest rows
    p_negative: np.ndarray  # [n]
    p_fine: np.ndarray  # [n, c]
    negative: np.ndarray  # [n] gold 0/1
    fine: np.ndarray  # [n, c] gold 0/1

    def subset(self, keep: np.ndarray) -> "SegmentScores":
        return SegmentScores(self.rows[keep], self.p_negative[keep], self.p_fine[keep], self.negative[keep], self.fine[keep])


@torch.no_grad()
def score_items(model: CallModel, items: Sequence[CallItem], *, window: int = 0, overlap: int = 0,
                batch_calls: int = 8, device: torch.device | str = "cpu",
                objective: Optional[object] = None) -> tuple:
    """Run the model over whole calls (in windows if configured).

    Returns:
        (SegmentScores of caller segments, mean objective value over batches or NaN).
    """
    model.eval()
    parts, losses = [], []
    for batch in iterate_batches(items, batch_calls=batch_calls, shuffle=False, device=device):
        logits = forward_windowed(model, batch.inputs, window=window, overlap=overlap)
        if objective is not None:
            losses.append(float(objective(logits, batch)))
        parts.append(_collect(batch, *model.probabilities(logits)))
    scores = SegmentScores(*(np.concatenate([p[i] for p in parts]) for i in range(5)))
    return scores, (float(np.mean(losses)) if losses else float("nan"))


def _collect(batch: CallBatch, p_negative: torch.Tensor, p_fine: torch.Tensor) -> tuple:
    keep = batch.scored_mask
    p_neg, p_fine = p_negative[keep], p_fine[keep]
    return (batch.rows[keep].cpu().numpy(), p_neg.float().cpu().numpy(), p_fine.float().cpu().numpy(),
            batch.negative[keep].cpu().numpy().astype(np.int64), batch.fine[keep].cpu().numpy().astype(np.int64))
