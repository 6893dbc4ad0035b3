"""The context stage: a transformer over the segment embeddings of one call.

Legend: b = calls in a batch, s = segments of a call, d = model width, h = attention heads.

The arms share one module so the ablation measures context and nothing else:
- `identity`  (isolated): each segment attends only to itself; no position/time/role input.
- `call_norm`: like identity, but each segment also sees itself standardised within its call's
  segments of the same role (mean and scale; running statistics when causal) - the caller's baseline.
- `transformer`: full attention over the call (or causal), plus position, timing and role. With
  `residual` (the default) it is the isolated path plus a context correction: h = h_iso + g * c, where
  h_iso is exactly the identity arm's stack, c a transformer over h_iso with position, timing and role,
  and the gate g starts at 0. At initialisation the arm *is* the isolated arm (same weights, drawn from
  the same seed), so on little data context has to earn its weight instead of starting worse.
- `smooth` uses the identity stack here; the smoothing over neighbouring segments' probabilities is
  fitted after training (ctxemo.training.smoothing).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ctxemo.config import CONTEXT_KINDS

NUM_ROLES = 2  # role ids: 0 = caller, 1 = operator (ctxemo.data.manifest.ROLE_IDS)


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[...] float positions -> [..., dim] sin/cos features (no length limit, unlike a lookup)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / max(half, 1))
    angles = positions.float()[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention; `attend_mask=None` means each segment attends only to itself.

    Dropout on the attention weights is off by default (`context.attention_dropout`): with it, CPU
    SDPA leaves its fused kernel for the math path, measured 5-8x slower per layer here (48 ms vs
    6-9 ms for 8 calls x 185 segments), while residual and MLP dropout still regularise the blocks.
    """

    def __init__(self, *, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"context.d_model={d_model} must be divisible by context.heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attend_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x [b, s, d]; attend_mask [b, s(query), s(key)] bool, True = may attend, or None (self only)."""
        if attend_mask is None:
            # Softmax over a single key is 1: the output is the segment's own value vector, exactly
            # what full SDPA with an identity mask returns, without the [s, s] work.
            return self.out(self.qkv(x).chunk(3, dim=-1)[2])
        q, k, v = rearrange(self.qkv(x), "b s (three h e) -> three b h s e", three=3, h=self.heads)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend_mask[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(rearrange(y, "b h s e -> b s (h e)"))


class Block(nn.Module):
    """Pre-norm transformer block (attention, then a 4x MLP), as in nanoGPT."""

    def __init__(self, *, d_model: int, heads: int, dropout: float, attention_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model=d_model, heads=heads, dropout=attention_dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attend_mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), attend_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


# Prior segments' worth of unit variance mixed into a call's variance: a call of a few segments has a
# noisy scale, and a one-segment call none at all (its standardised value is then 0, not a division by 0).
CALL_VAR_PRIOR = 1.0


def call_standardised(x: torch.Tensor, *, seg_mask: torch.Tensor, role: torch.Tensor, causal: bool) -> torch.Tensor:
    """Each segment standardised within its call's valid segments of the same role: (x - mean) / scale.

    The scale is shrunk towards 1 (the inputs are already standardised over the training fold) by
    CALL_VAR_PRIOR pseudo-segments, so short calls are not blown up.

    Args:
        x: [b, s, d] embeddings; seg_mask: [b, s] bool valid; role: [b, s] long.
        causal: running statistics over segments up to and including this one (live use).
    Returns:
        [b, s, d]; 0 at padded segments.
    """
    out = torch.zeros_like(x)
    for role_id in range(NUM_ROLES):
        member = (seg_mask & (role == role_id)).to(x.dtype)[..., None]  # [b, s, 1]
        reduce = (lambda v: torch.cumsum(v, dim=1)) if causal else (lambda v: v.sum(dim=1, keepdim=True))
        count = reduce(member)
        mean = reduce(x * member) / count.clamp(min=1.0)
        var = (reduce(x * x * member) / count.clamp(min=1.0) - mean ** 2).clamp(min=0.0)
        var = (count * var + CALL_VAR_PRIOR) / (count + CALL_VAR_PRIOR)
        out = out + member * (x - mean) / var.sqrt()
    return out


def attention_rule(*, kind: str, seg_mask: torch.Tensor, causal: bool) -> Optional[torch.Tensor]:
    """[b, s, s] bool: which key segments each query segment may attend to; None = itself only."""
    if kind != "transformer":
        return None  # isolated, call_norm and smooth arms: no mixing across segments
    b, s = seg_mask.shape
    # Built as float, then cast: onnxruntime has no boolean EyeLike (the ONNX export traces this line).
    eye = torch.eye(s, device=seg_mask.device).bool()[None].expand(b, s, s)
    allowed = seg_mask[:, None, :].expand(b, s, s)
    if causal:
        allowed = allowed & torch.tril(torch.ones(s, s, dtype=torch.bool, device=seg_mask.device))
    # A padded query has no valid key; letting it see itself avoids NaN (its output is ignored).
    return allowed | eye


class ContextModel(nn.Module):
    """Segment embeddings of calls -> contextualised segment states.

    forward(x [b, s, d_in], seg_mask [b, s], role [b, s], position [b, s], time_feats [b, s, 2])
      -> [b, s, d_model]
    """

    def __init__(self, *, d_in: int, kind: str = "transformer", d_model: int = 64, depth: int = 2,
                 heads: int = 4, dropout: float = 0.1, attention_dropout: float = 0.0, causal: bool = False,
                 use_time: bool = True, residual: bool = False):
        super().__init__()
        if kind not in CONTEXT_KINDS:
            raise ValueError(f"context kind {kind!r} not in {CONTEXT_KINDS}")
        self.kind, self.causal, self.use_time, self.d_model = kind, causal, use_time, d_model
        self.residual = residual and kind == "transformer"
        # Inputs are standardised per feature with training-fold statistics (set_feature_stats).
        # No LayerNorm here: normalising across a segment's features would erase its overall level.
        self.register_buffer("feat_mean", torch.zeros(d_in))
        self.register_buffer("feat_std", torch.ones(d_in))
        # call_norm sees [x, x standardised within the call]: the absolute embedding and where it stands
        # against the caller's own baseline.
        self.in_proj = nn.Linear(d_in * (2 if kind == "call_norm" else 1), d_model)
        self.role_emb = nn.Embedding(NUM_ROLES, d_model)
        self.time_proj = nn.Linear(2, d_model)
        self.in_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model=d_model, heads=heads, dropout=dropout,
                                          attention_dropout=attention_dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.correction = None
        if self.residual:
            # Drawn from a forked RNG: the isolated part above, the heads built after it and the training
            # batches see the same random stream as in the identity arm, so the two start identical.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.initial_seed()) + 1)
                self.correction = nn.ModuleDict({
                    "blocks": nn.ModuleList(Block(d_model=d_model, heads=heads, dropout=dropout,
                                                  attention_dropout=attention_dropout) for _ in range(depth)),
                    "norm": nn.LayerNorm(d_model),
                })
            self.gate = nn.Parameter(torch.zeros(()))

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs with statistics of the training fold (never of the test fold)."""
        with torch.no_grad():
            self.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.feat_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-6))

    def forward(self, x: torch.Tensor, *, seg_mask: torch.Tensor, role: torch.Tensor,
                position: torch.Tensor, time_feats: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = (x - self.feat_mean) / self.feat_std
        if self.kind == "call_norm":
            x = torch.cat([x, call_standardised(x, seg_mask=seg_mask, role=role, causal=self.causal)], dim=-1)
        h = self.in_proj(x)
        attend = attention_rule(kind=self.kind, seg_mask=seg_mask, causal=self.causal)
        if self.residual:
            return self._isolated_plus_correction(h, attend, role=role, position=position, time_feats=time_feats)
        if self.kind == "transformer":
            h = h + self._context_inputs(role=role, position=position, time_feats=time_feats)
        h = self.in_drop(h)
        for block in self.blocks:
            h = block(h, attend)
        return self.norm(h)

    def _context_inputs(self, *, role, position, time_feats) -> torch.Tensor:
        """Order, timing and who speaks are context: only the contextual arm receives them."""
        extra = sinusoidal(position, self.d_model) + self.role_emb(role)
        if self.use_time and time_feats is not None:
            extra = extra + self.time_proj(time_feats)
        return extra

    def _isolated_plus_correction(self, h, attend, *, role, position, time_feats) -> torch.Tensor:
        iso = self.in_drop(h)
        for block in self.blocks:
            iso = block(iso, None)  # the identity arm's stack, segment by segment
        c = iso + self._context_inputs(role=role, position=position, time_feats=time_feats)
        for block in self.correction["blocks"]:
            c = block(c, attend)
        return self.norm(iso + self.gate * self.correction["norm"](c))
