"""Mask-aware pooling of frame features into one vector per segment.

Legend: b = segments, t = frames, d = features. `frame_mask` is bool [b, t], True = valid frame.
Both poolings ignore padded frames entirely, so a padded segment pools to the same vector as the
unpadded one (the masked positions may hold anything, even NaN-free garbage from a backbone).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from ctxemo.errors import ConfigError

STD_FLOOR = 1e-5  # variance floor before sqrt: a constant frame sequence must not give NaN gradients


def _check(frames: Tensor, frame_mask: Tensor) -> None:
    if frames.dim() != 3 or frame_mask.shape != frames.shape[:2]:
        raise ValueError(f"pooling expects frames [b, t, d] and frame_mask [b, t]; got {tuple(frames.shape)} "
                         f"and {tuple(frame_mask.shape)}")


class MeanPooling(nn.Module):
    """Average of the valid frames (transformers' Wav2Vec2ForSequenceClassification pooling).

    Example:
        >>> pool = MeanPooling()
        >>> frames = torch.tensor([[[1.0], [3.0], [100.0]]])
        >>> pool(frames, frame_mask=torch.tensor([[True, True, False]])).tolist()
        [[2.0]]
    """

    def output_dim(self, d: int) -> int:
        return d

    def forward(self, frames: Tensor, *, frame_mask: Tensor) -> Tensor:
        """Args:
            frames: float [b, t, d].
            frame_mask: bool [b, t]; each row needs at least one True.
        Returns:
            float [b, d].
        """
        _check(frames, frame_mask)
        frames = frames.float()  # a bf16 sum over hundreds of frames would lose digits (encoder.precision)
        weights = rearrange(frame_mask, "b t -> b t 1").to(frames.dtype)
        # where() rather than multiply: 0 * inf in a padded frame would still poison the sum.
        total = torch.where(weights.bool(), frames, torch.zeros_like(frames)).sum(dim=1)
        return total / weights.sum(dim=1).clamp(min=1.0)


class AttentiveStatsPooling(nn.Module):
    """Attentive statistics pooling (Okabe et al. 2018): attention over frames, then the weighted
    mean and weighted standard deviation, concatenated.

    The score layer starts at zero, so at initialisation the attention is uniform over valid frames
    and the output is plain [mean, std]: a frozen encoder's cached embeddings then do not depend on
    the random seed, and training moves away from a sensible start.

    Args:
        d: frame feature size.
        attention_dim: hidden size of the scoring MLP.
    """

    def __init__(self, *, d: int, attention_dim: int = 128):
        super().__init__()
        self.hidden = nn.Linear(d, attention_dim)
        self.score = nn.Linear(attention_dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def output_dim(self, d: int) -> int:
        return 2 * d

    def forward(self, frames: Tensor, *, frame_mask: Tensor) -> Tensor:
        """Args:
            frames: float [b, t, d].
            frame_mask: bool [b, t]; each row needs at least one True.
        Returns:
            float [b, 2d]: weighted mean then weighted std.
        """
        _check(frames, frame_mask)
        # Statistics in float32 even under bf16 autocast.
        with torch.autocast(device_type=frames.device.type, enabled=False):
            frames = frames.float()
            keep = rearrange(frame_mask, "b t -> b t 1")
            frames = torch.where(keep, frames, torch.zeros_like(frames))
            logits = self.score(torch.tanh(self.hidden(frames)))  # [b, t, 1]
            logits = logits.masked_fill(~keep, float("-inf"))
            attn = torch.softmax(logits, dim=1)
            mean = (attn * frames).sum(dim=1)
            # Two-pass variance: E[x^2] - E[x]^2 loses digits when a feature's spread is small next to
            # its mean (e.g. after a final layer norm), enough to break padded == unpadded at 1e-5.
            centred = torch.where(keep, frames - mean[:, None, :], torch.zeros_like(frames))
            var = (attn * centred * centred).sum(dim=1)
            std = torch.sqrt(var.clamp(min=STD_FLOOR))
        return torch.cat([mean, std], dim=-1)


def build_pooling(kind: str, *, d: int) -> nn.Module:
    """Map the config's `encoder.pooling` name to a module.

    Args:
        kind: "mean" or "attentive_stats".
        d: frame feature size.
    """
    if kind == "mean":
        return MeanPooling()
    if kind == "attentive_stats":
        return AttentiveStatsPooling(d=d)
    raise ConfigError(f"encoder.pooling={kind!r}: use 'mean' or 'attentive_stats'")
