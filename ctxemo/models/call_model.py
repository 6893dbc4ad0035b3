"""CallModel: segment embeddings of calls -> context stage -> binary and fine logits per segment.

Legend: b = calls, s = segments, w = segments per window, d = features, c = fine labels.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ctxemo.data.datasets import CallInputs
from ctxemo.models.context import ContextModel
from ctxemo.models.heads import (
    BinaryHead,
    FineHead,
    binary_logit_from_fine,
    fine_probabilities,
)


class SegmentLogits(NamedTuple):
    binary: torch.Tensor  # [b, s]
    fine: torch.Tensor  # [b, s, c]


class CallModel(nn.Module):
    """Context stage + heads over precomputed (or freshly encoded) segment embeddings."""

    def __init__(self, *, d_in: int, num_labels: int, negative_mask: torch.Tensor, multilabel: bool,
                 context_kind: str = "transformer", d_model: int = 64, depth: int = 2, heads: int = 4,
                 dropout: float = 0.1, attention_dropout: float = 0.0, causal: bool = False, use_time: bool = True,
                 binary_from: str = "head", head_dropout: float = 0.1, fine_given_negative: bool = False,
                 residual: bool = False):
        super().__init__()
        self.context = ContextModel(d_in=d_in, kind=context_kind, d_model=d_model, depth=depth, heads=heads,
                                    dropout=dropout, attention_dropout=attention_dropout, causal=causal,
                                    use_time=use_time, residual=residual)
        self.binary_head = BinaryHead(d_model=d_model, dropout=head_dropout)
        self.fine_head = FineHead(d_model=d_model, num_labels=num_labels, dropout=head_dropout)
        self.register_buffer("negative_mask", negative_mask.bool(), persistent=False)
        self.multilabel, self.binary_from = multilabel, binary_from
        # Trained with the fine loss on negative segments only (head.fine_on_negative_only), the fine head
        # estimates P(label | negative); `probabilities` turns that into P(label) = P(negative) P(label | negative).
        self.fine_given_negative = fine_given_negative

    @property
    def causal(self) -> bool:
        return self.context.causal

    def forward(self, inputs: CallInputs) -> SegmentLogits:
        h = self.context(inputs.feats, seg_mask=inputs.seg_mask, role=inputs.role,
                         position=inputs.position, time_feats=inputs.time_feats)
        fine = self.fine_head(h)
        if self.binary_from == "fine":
            binary = binary_logit_from_fine(fine, negative_mask=self.negative_mask, multilabel=self.multilabel)
        else:
            binary = self.binary_head(h)
        return SegmentLogits(binary=binary, fine=fine)

    def probabilities(self, logits: SegmentLogits) -> Tuple[torch.Tensor, torch.Tensor]:
        """(p_negative [...], p_fine [..., c]) of each segment: what scoring, bundles and live sessions report."""
        p_negative = torch.sigmoid(logits.binary)
        if self.binary_from == "mean":
            from_fine = binary_logit_from_fine(logits.fine, negative_mask=self.negative_mask, multilabel=self.multilabel)
            p_negative = 0.5 * (p_negative + torch.sigmoid(from_fine))
        p_fine = fine_probabilities(logits.fine, multilabel=self.multilabel)
        if self.fine_given_negative:
            p_fine = p_fine * p_negative[..., None]
        return p_negative, p_fine


# ----------------------------------------------------------------------------- long calls

def _take(inputs: CallInputs, index: torch.Tensor, valid: torch.Tensor) -> CallInputs:
    """Gather windows: index [b, n, w] segment indices (valid [b, n, w]) -> inputs of b*n windows."""
    b, n, w = index.shape

    def gather(t: torch.Tensor) -> torch.Tensor:
        flat_index = index.reshape(b, n * w)
        if t.dim() == 2:
            out = torch.gather(t, 1, flat_index)
        else:
            out = torch.gather(t, 1, flat_index[..., None].expand(-1, -1, t.shape[-1]))
        return out.reshape(b * n, w, *t.shape[2:])

    seg_mask = gather(inputs.seg_mask) & valid.reshape(b * n, w)
    return CallInputs(feats=gather(inputs.feats), seg_mask=seg_mask, role=gather(inputs.role),
                      position=gather(inputs.position), time_feats=gather(inputs.time_feats))


def forward_windowed(model: CallModel, inputs: CallInputs, *, window: int, overlap: int = 0) -> SegmentLogits:
    """Run the model on windows of a long call and stitch the per-segment outputs.

    Causal models: segment i is scored from the window of the `window` segments ending at i (what a
    live session sees), so offline and live scoring agree exactly.
    Bidirectional models: windows of `window` segments every `window - overlap`; each segment takes
    its output from the window where it lies farthest from an edge. Absolute positions are kept.
    With window == 0 or calls no longer than `window`, this is the plain forward pass.
    """
    b, s = inputs.seg_mask.shape
    if window <= 0 or s <= window:
        return model(inputs)
    device = inputs.feats.device
    offsets = torch.arange(window, device=device)
    if model.causal:
        ends = torch.arange(s, device=device)  # one window per segment, ending at it
        index = ends[:, None] - (window - 1) + offsets[None, :]  # [s, w]
        valid = index >= 0
        index = index.clamp(min=0)
        out = model(_take(inputs, index[None].expand(b, -1, -1), valid[None].expand(b, -1, -1)))
        binary = out.binary.reshape(b, s, window)[..., -1]
        fine = out.fine.reshape(b, s, window, -1)[:, :, -1]
        return SegmentLogits(binary=binary, fine=fine)
    stride = window - overlap
    starts = list(range(0, s - window, stride)) + [s - window]
    starts_t = torch.tensor(starts, device=device)
    index = starts_t[:, None] + offsets[None, :]  # [n, w]
    n = len(starts)
    out = model(_take(inputs, index[None].expand(b, -1, -1), torch.ones(b, n, window, dtype=torch.bool, device=device)))
    # For segment i in window j: distance to the nearer window edge; pick the window maximising it.
    seg = torch.arange(s, device=device)
    rel = seg[None, :] - starts_t[:, None]  # [n, s]
    inside = (rel >= 0) & (rel < window)
    margin = torch.where(inside, torch.minimum(rel, window - 1 - rel), torch.full_like(rel, -1))
    best = margin.argmax(dim=0)  # [s]
    pos = rel[best, seg]  # position of segment i inside its chosen window
    binary = out.binary.reshape(b, n, window)[:, best, pos]
    fine = out.fine.reshape(b, n, window, -1)[:, best, pos]
    return SegmentLogits(binary=binary, fine=fine)


def feature_stats(feats, rows: Optional[np.ndarray] = None, *, chunk: int = 4096) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation (n - 1) of `feats[rows]`, accumulated in float64 over chunks
    of rows, so the training rows of a fold are never copied whole (at the seed's scale that copy was a
    second corpus-sized array in memory)."""
    rows = np.arange(len(feats)) if rows is None else np.asarray(rows)
    total = np.zeros(feats.shape[1])
    total_sq = np.zeros(feats.shape[1])
    for first in range(0, len(rows), chunk):
        part = np.asarray(feats[rows[first:first + chunk]], dtype=np.float64)
        total += part.sum(0)
        total_sq += np.square(part).sum(0)
    n = len(rows)
    mean = total / n
    var = np.maximum(total_sq - n * np.square(mean), 0.0) / max(n - 1, 1)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(np.sqrt(var), dtype=torch.float32)


def build_call_model(cfg, *, d_in: int, taxonomy, fine_bias: Optional[torch.Tensor] = None,
                     train_stats: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> CallModel:
    """The one place that maps config -> CallModel (modules never see the whole config).

    train_stats: (mean, std) of the training fold's segment features (see `feature_stats`), which the
    context stage uses to standardise its inputs."""
    model = CallModel(
        d_in=d_in, num_labels=taxonomy.num_labels,
        negative_mask=torch.as_tensor(taxonomy.negative_mask), multilabel=taxonomy.multilabel,
        context_kind=cfg.context.kind, d_model=cfg.context.d_model, depth=cfg.context.depth,
        heads=cfg.context.heads, dropout=cfg.context.dropout, attention_dropout=cfg.context.attention_dropout,
        causal=cfg.context.causal,
        use_time=cfg.context.use_time, binary_from=cfg.head.binary_from, head_dropout=cfg.head.dropout,
        fine_given_negative=cfg.head.fine_on_negative_only and cfg.head.binary_from == "head",
        residual=bool(cfg.context.residual),
    )
    model.fine_head.init_bias(fine_bias)
    if train_stats is not None:
        model.context.set_feature_stats(*train_stats)
    return model
