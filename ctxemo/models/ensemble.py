"""Several CallModels as one: the mean of their probabilities (cross-fitted inner models, seed ensembles).

It looks like a CallModel to everything that scores (score_items, forward_windowed, bundles, live): its
logits are those of the averaged probabilities, so `probabilities(forward(x))` is the members' mean.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from ctxemo.data.datasets import CallInputs
from ctxemo.models.call_model import CallModel, SegmentLogits

EPS = 1e-7  # averaged probabilities are clipped to [EPS, 1 - EPS] before they become logits


class EnsembleCallModel(nn.Module):
    def __init__(self, members: Sequence[CallModel]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.multilabel = members[0].multilabel

    @property
    def causal(self) -> bool:
        return self.members[0].causal

    def forward(self, inputs: CallInputs) -> SegmentLogits:
        parts = [m.probabilities(m(inputs)) for m in self.members]
        p_negative = torch.stack([p for p, _ in parts]).mean(0).clamp(EPS, 1 - EPS)
        p_fine = torch.stack([f for _, f in parts]).mean(0).clamp(EPS, 1 - EPS)
        fine = torch.logit(p_fine) if self.multilabel else torch.log(p_fine)  # softmax(log p) = p
        return SegmentLogits(binary=torch.logit(p_negative), fine=fine)

    def probabilities(self, logits: SegmentLogits) -> Tuple[torch.Tensor, torch.Tensor]:
        p_fine = torch.sigmoid(logits.fine) if self.multilabel else torch.softmax(logits.fine, dim=-1)
        return torch.sigmoid(logits.binary), p_fine
