"""Class-balanced focal loss (Cui et al. 2019) in sigmoid and softmax form, plus its builder.

Shape legend: n = rows (valid segments, already flattened out of [b, s]), c = classes / labels.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctxemo.config import LOSS_KINDS
from ctxemo.errors import ConfigError

Counts = Union[Sequence[float], np.ndarray, torch.Tensor]


# Smallest positive float32: keeps (1 - p_t) ** gamma differentiable when p_t rounds to 1.
_TINY = float(torch.finfo(torch.float32).tiny)


def _as_counts(counts: Counts) -> np.ndarray:
    arr = counts.detach().cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)
    arr = arr.astype(np.float64).reshape(-1)
    if arr.size == 0 or np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"class counts must be a non-empty list of finite counts >= 0, got {arr.tolist()}")
    return arr


def class_balanced_weights(counts: Counts, *, beta: float) -> torch.Tensor:
    """Per-class weights from the effective number of samples (Cui et al. 2019).

    E_n = (1 - beta^n) / (1 - beta); weight_c ∝ 1 / E_{n_c}, rescaled so the weights sum to c.
    beta = 0 gives uniform weights (all 1); beta -> 1 approaches inverse class frequency.

    Args:
        counts: [c] training-fold count per class (binary head: [n_not_negative, n_negative];
            multi-label fine head: positives per label; softmax fine head: rows per class).
        beta: in [0, 1]; 1 is taken as its limit E_n = n.
    Returns:
        float32 tensor [c] summing to c.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    # A label absent from the training fold (count 0) would give E_0 = 0 and an infinite weight.
    # Treating it as seen once gives it the largest finite weight instead, which is what a rare
    # label should get; its loss terms are all negatives anyway, so nothing explodes.
    n = np.maximum(_as_counts(counts), 1.0)
    effective = n if beta == 1.0 else (1.0 - np.power(beta, n)) / (1.0 - beta)
    weights = 1.0 / effective
    weights = weights * (len(weights) / weights.sum())
    return torch.as_tensor(weights, dtype=torch.float32)


def prior_bias(counts: Counts, total: int) -> torch.Tensor:
    """Log-odds of each label's training prior, to initialise a sigmoid head's biases.

    Starting rare labels at their prior (instead of 0, i.e. p = 0.5) keeps the first steps from
    being spent pushing thousands of easy negatives down (Lin et al. 2017, "prior init").

    Args:
        counts: [c] positives per label in the training rows.
        total: number of training rows.
    Returns:
        float32 tensor [c]. The prior is clamped to [0.5 / total, 1 - 0.5 / total] (half an example
        either way) so a label with 0 or `total` positives gets a finite bias.
    """
    n = _as_counts(counts)
    total = max(int(total), 1)
    eps = 0.5 / total
    prior = np.clip(n / total, eps, 1.0 - eps)
    return torch.as_tensor(np.log(prior) - np.log1p(-prior), dtype=torch.float32)


def _focal_factor(one_minus_pt: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p_t) ** gamma for gamma > 0; callers skip it at gamma = 0, where pow(0, 0)'s gradient is NaN."""
    return one_minus_pt.clamp_min(_TINY).pow(gamma)


class FocalLoss(nn.Module):
    """Class-balanced focal loss; sigmoid form (binary / multi-label) or softmax form (multi-class).

    Sigmoid form (``multilabel=True``), per element: ``w * (1 - p_t)^gamma * BCE(logit, y)`` with
    ``p_t = exp(-BCE)``, summed over labels and averaged over valid rows.

    - logits [n, c], targets [n, c] in {0, 1}: multi-label fine head. ``class_weights`` [c, 2] =
      per label [w_not_label, w_label] (each label a binary problem, as the binary head): each
      element takes the weight of its own class, ``w = y * w[:, 1] + (1 - y) * w[:, 0]``. A [c]
      vector instead scales both terms of label c alike (it changes the label's gradient scale,
      not the balance of its positives against its negatives).
    - logits [n], targets [n] in {0, 1}: binary head; ``class_weights`` = [w_not_negative, w_negative]
      and each row takes the weight of its own class (Cui's sigmoid form):
      ``w = y * w_negative + (1 - y) * w_not_negative``.

    Softmax form (``multilabel=False``), logits [n, c], targets [n] int class index (or one-hot
    [n, c]): ``alpha_y * (1 - p_y)^gamma * (-log p_y)``, averaged over valid rows. Note the mean is
    over rows, not over the summed weights as in ``F.cross_entropy(weight=...)``; with uniform
    weights the two agree.

    gamma = 0 turns focal into (weighted) BCE / CE; ``class_weights=None`` means all ones.
    A batch with every row masked returns 0 with a gradient, never NaN.

    Example:
        >>> loss = FocalLoss(class_weights=torch.tensor([1.0, 3.0]), gamma=2.0, multilabel=True)
        >>> logits = torch.zeros(2, requires_grad=True)  # p = 0.5 for both rows
        >>> value = loss(logits, torch.tensor([1.0, 0.0]))  # (3 + 1) / 2 * 0.5^2 * ln 2
        >>> round(value.item(), 4)
        0.3466
        >>> value.backward()
    """

    def __init__(self, *, class_weights: Optional[torch.Tensor], gamma: float, multilabel: bool):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.multilabel = bool(multilabel)
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if weights is not None and weights.dim() != 2:
            weights = weights.reshape(-1)
        # A buffer follows .to(device); not persistent since the weights are re-derived per fold.
        self.register_buffer("class_weights", weights, persistent=False)

    def extra_repr(self) -> str:
        c = None if self.class_weights is None else self.class_weights.shape[0]
        return f"gamma={self.gamma}, multilabel={self.multilabel}, classes={c}"

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Mean loss over valid rows.

        Args:
            logits: [n] (binary, sigmoid form only) or [n, c].
            targets: same shape as logits for the sigmoid form; [n] int (or one-hot [n, c]) for softmax.
            mask: [n] bool, True = include the row; None includes all rows.
        Returns:
            scalar tensor.
        """
        if mask is not None:
            if mask.shape != logits.shape[:1]:
                raise ValueError(f"mask must be [n] = {tuple(logits.shape[:1])}, got {tuple(mask.shape)}")
            # Select before computing so that padded rows (any values, even NaN) never touch the graph.
            mask = mask.to(device=logits.device, dtype=torch.bool)
            logits, targets = logits[mask], targets[mask]
        row_loss = self._sigmoid_rows(logits, targets) if self.multilabel else self._softmax_rows(logits, targets)
        # sum / max(n, 1): an empty batch gives an exact 0 that still carries a grad_fn.
        return row_loss.sum() / max(row_loss.shape[0], 1)

    def _sigmoid_rows(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape or logits.dim() not in (1, 2):
            raise ValueError(
                f"sigmoid focal loss wants logits and targets both [n] or both [n, c], "
                f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
            )
        targets = targets.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        loss = bce
        if self.gamma > 0:
            # 1 - exp(-bce) via expm1: exact for tiny bce, where 1 - p_t would round to 0.
            loss = _focal_factor(-torch.expm1(-bce), self.gamma) * bce
        weights = self.class_weights
        if weights is not None:
            if logits.dim() == 1:
                if weights.numel() != 2:
                    raise ValueError(
                        f"binary logits [n] need 2 class weights [w_not_negative, w_negative], got {weights.numel()}"
                    )
                loss = loss * (targets * weights[1] + (1.0 - targets) * weights[0])
            elif weights.dim() == 2:
                if weights.shape != (logits.shape[1], 2):
                    raise ValueError(f"per-label class weights must be [{logits.shape[1]}, 2], "
                                     f"got {tuple(weights.shape)}")
                loss = loss * (targets * weights[:, 1] + (1.0 - targets) * weights[:, 0])
            else:
                if weights.numel() != logits.shape[1]:
                    raise ValueError(f"{weights.numel()} class weights for {logits.shape[1]} labels")
                loss = loss * weights
        return loss if loss.dim() == 1 else loss.sum(dim=1)

    def _softmax_rows(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2:
            raise ValueError(f"softmax focal loss wants logits [n, c], got {tuple(logits.shape)}")
        if targets.dim() == 2:
            if targets.shape != logits.shape:
                raise ValueError(f"one-hot targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
            targets = targets.argmax(dim=1)
        if targets.shape != logits.shape[:1]:
            raise ValueError(f"softmax targets must be [n] class indices, got {tuple(targets.shape)}")
        targets = targets.long()
        log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]  # [n]
        loss = -log_p
        if self.gamma > 0:
            loss = _focal_factor(-torch.expm1(log_p), self.gamma) * loss
        if self.class_weights is not None:
            if self.class_weights.numel() != logits.shape[1]:
                raise ValueError(f"{self.class_weights.numel()} class weights for {logits.shape[1]} classes")
            loss = loss * self.class_weights[targets]
        return loss


def build_loss(
    *, kind: str, class_counts: Optional[Counts], beta: float, gamma: float, multilabel: bool
) -> FocalLoss:
    """Map an ablation arm's loss kind to a FocalLoss.

    | kind         | weights                  | gamma |
    |--------------|--------------------------|-------|
    | cb_focal     | class-balanced (beta)    | gamma |
    | focal        | uniform                  | gamma |
    | bce          | uniform                  | 0     |
    | weighted_bce | class-balanced (beta)    | 0     |

    In the softmax form (``multilabel=False``) "bce" means cross-entropy.

    Args:
        kind: one of LOSS_KINDS.
        class_counts: [c] training-fold counts (see class_balanced_weights for what c is per head);
            may be None for the unweighted kinds.
        beta: class-balanced beta.
        gamma: focal exponent (ignored by bce / weighted_bce).
        multilabel: True for the sigmoid form (binary head and multi-label fine head).
    Returns:
        a FocalLoss.
    """
    if kind not in LOSS_KINDS:
        raise ConfigError(f"config key 'loss.kind' = {kind!r} is not one of: {', '.join(LOSS_KINDS)}")
    balanced = kind in ("cb_focal", "weighted_bce")
    if balanced and class_counts is None:
        raise ValueError(f"loss kind {kind!r} needs the training fold's class counts")
    weights = None
    if balanced and np.ndim(class_counts) == 2:
        # [c, 2] = per label [n_without, n_with]: class-balanced weights per label (sigmoid fine head)
        weights = torch.stack([class_balanced_weights(row, beta=beta) for row in class_counts])
    elif balanced:
        weights = class_balanced_weights(class_counts, beta=beta)
    focal_gamma = gamma if kind in ("cb_focal", "focal") else 0.0
    return FocalLoss(class_weights=weights, gamma=focal_gamma, multilabel=multilabel)
