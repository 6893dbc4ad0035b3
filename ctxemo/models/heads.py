"""Per-segment output heads: binary (negative vs not) and fine (labels). Logits only.

Legend: b = calls, s = segments, d = width, c = fine labels.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class BinaryHead(nn.Module):
    """[b, s, d] -> [b, s] logit of "this segment is negative"."""

    def __init__(self, *, d_model: int, dropout: float = 0.1):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(h)).squeeze(-1)


class FineHead(nn.Module):
    """[b, s, d] -> [b, s, c] logits: sigmoid per label (multi-label) or softmax (one label)."""

    def __init__(self, *, d_model: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(h))

    def init_bias(self, bias: Optional[torch.Tensor]) -> None:
        """Start rare labels at their prior log-odds, so early training is not swamped by them."""
        if bias is not None:
            with torch.no_grad():
                self.proj.bias.copy_(bias)


def binary_logit_from_fine(fine_logits: torch.Tensor, *, negative_mask: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Derive the negative-vs-not logit from the fine head.

    Multi-label: p_neg = 1 - prod_c (1 - p_c) over negative labels (any negative label present).
    Single-label: p_neg = sum of softmax mass on negative labels.
    Args:
        fine_logits: [b, s, c]; negative_mask: [c] bool.
    Returns:
        [b, s] logit of p_neg, computed in log space for stability.
    """
    if multilabel:
        # log(1 - p_c) = logsigmoid(-z_c); log P(no negative label) = sum of those.
        log_none = torch.nn.functional.logsigmoid(-fine_logits[..., negative_mask]).sum(-1)
    else:
        log_probs = torch.log_softmax(fine_logits, dim=-1)
        log_none = torch.logsumexp(log_probs[..., ~negative_mask], dim=-1) if (~negative_mask).any() \
            else torch.full_like(log_probs[..., 0], -1e4)
    log_none = log_none.clamp(max=-1e-6)
    # logit(p_neg) = log(1 - P(none)) - log P(none)
    return torch.log(-torch.expm1(log_none)) - log_none


def fine_probabilities(fine_logits: torch.Tensor, *, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(fine_logits) if multilabel else torch.softmax(fine_logits, dim=-1)
