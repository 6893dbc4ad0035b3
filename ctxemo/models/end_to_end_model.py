"""End-to-end model: the speech encoder embeds each segment of a batch of windows, and the context
stage + heads (a CallModel) score them, so the loss trains the encoder's adapters too.

Legend: b = windows (or calls), s = segments per window, n = real segments in the batch, t = samples.
"""
from __future__ import annotations

from typing import List, NamedTuple

import torch
from torch import nn

from ctxemo.data.datasets import CallInputs
from ctxemo.models.call_model import CallModel, SegmentLogits
from ctxemo.models.frontend import round_up
from ctxemo.models.segment_encoder import SegmentEncoder


class AudioCallInputs(NamedTuple):
    """A batch of windows as audio: one waveform per real segment, in (window, segment) order, i.e. the
    order of `seg_mask`'s True entries read row by row."""

    waves: torch.Tensor  # [n, t] float, zero-padded
    wave_lens: torch.Tensor  # [n] long
    buckets: List[List[int]]  # indices into n, grouped by similar length (less padding per encoder call)
    seg_mask: torch.Tensor  # [b, s] bool
    role: torch.Tensor  # [b, s] long
    position: torch.Tensor  # [b, s] long, positions in the call
    time_feats: torch.Tensor  # [b, s, 2] float


class EndToEndModel(nn.Module):
    """SegmentEncoder -> CallModel. The encoder's parameters are named `encoder.*`, so the optimizer gives
    them `train.encoder_lr` (see ctxemo.training.loop.parameter_groups)."""

    def __init__(self, encoder: SegmentEncoder, call_model: CallModel, *, pad_multiple: int = 1):
        """pad_multiple: each length bucket is cut to its longest segment rounded up to this many samples
        (few distinct shapes; see ctxemo.models.frontend.pad_waves)."""
        super().__init__()
        self.encoder, self.call_model = encoder, call_model
        self.pad_multiple = pad_multiple

    @property
    def multilabel(self) -> bool:
        return self.call_model.multilabel

    @property
    def causal(self) -> bool:
        return self.call_model.causal

    def embed(self, waves: torch.Tensor, wave_lens: torch.Tensor, buckets: List[List[int]]) -> torch.Tensor:
        """[n, D] segment embeddings, one encoder call per length bucket, each cut to its longest segment."""
        parts, order = [], []
        for bucket in buckets:
            index = torch.as_tensor(bucket, device=waves.device)
            lens = wave_lens[index]
            width = min(round_up(int(lens.max()), self.pad_multiple), waves.shape[1])
            parts.append(self.encoder(waves[index, :width], lens))
            order.extend(bucket)
        emb = torch.cat(parts)
        inverse = torch.empty(len(order), dtype=torch.long, device=emb.device)
        inverse[torch.as_tensor(order, device=emb.device)] = torch.arange(len(order), device=emb.device)
        return emb[inverse]

    def forward(self, inputs: AudioCallInputs) -> SegmentLogits:
        emb = self.embed(inputs.waves, inputs.wave_lens, inputs.buckets)
        b, s = inputs.seg_mask.shape
        feats = emb.new_zeros(b, s, emb.shape[-1]).masked_scatter(inputs.seg_mask[..., None], emb)
        return self.call_model(CallInputs(feats=feats, seg_mask=inputs.seg_mask, role=inputs.role,
                                          position=inputs.position, time_feats=inputs.time_feats))
