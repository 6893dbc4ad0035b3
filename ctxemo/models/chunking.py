"""Long segments through a backbone with a bounded window: cut into equal chunks, encode, and put each
segment's frames back together (so pooling sees one sequence per segment).

Legend: b = segments, n = chunks, t = samples or frames, d = features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ctxemo.models.frontend import lengths_to_mask


@dataclass
class ChunkPlan:
    """Segments cut into pieces that fit the backbone. owner[i] = segment of chunk i (in order)."""

    waves: Tensor  # float [n, t]
    wave_lens: Tensor  # long [n]
    owner: Tensor  # long [n]
    n_segments: int

    @property
    def is_identity(self) -> bool:
        return self.waves.shape[0] == self.n_segments


def split_into_chunks(waves: Tensor, wave_lens: Tensor, *, max_samples: int) -> ChunkPlan:
    """Cut each segment longer than `max_samples` into equal chunks (ceil(len / max) of them), so no
    chunk is a sliver too short for the CNN.

    Args:
        waves: float [b, t] zero-padded; wave_lens: long [b].
    """
    if int(wave_lens.max()) <= max_samples:
        # One chunk each; a batch width rounded up past the chunk size (pad_waves' `multiple`) holds
        # only padding there, and Whisper has no positions for it: cut it.
        return ChunkPlan(waves[:, :max_samples], wave_lens, torch.arange(len(wave_lens)), len(wave_lens))
    pieces, owners = [], []
    for i, length in enumerate(wave_lens.tolist()):
        n = -(-length // max_samples)
        size = -(-length // n)
        for start in range(0, length, size):
            pieces.append(waves[i, start: min(start + size, length)])
            owners.append(i)
    lens = torch.tensor([p.shape[0] for p in pieces], dtype=torch.long, device=wave_lens.device)
    return ChunkPlan(pad_sequence(pieces, batch_first=True), lens, torch.tensor(owners), len(wave_lens))


def merge_chunks(frames: Tensor, frame_lens: Tensor, plan: ChunkPlan) -> Tuple[Tensor, Tensor]:
    """Concatenate each segment's chunks' valid frames back into one sequence.

    Args:
        frames: [n, t, d] per chunk; frame_lens: long [n].
    Returns:
        frames [b, t_total, d] and frame_mask bool [b, t_total].
    """
    if plan.is_identity:
        return frames, lengths_to_mask(frame_lens, frames.shape[1])
    per_segment: List[List[Tensor]] = [[] for _ in range(plan.n_segments)]
    for i, (owner, length) in enumerate(zip(plan.owner.tolist(), frame_lens.tolist())):
        per_segment[owner].append(frames[i, :length])
    merged = [torch.cat(parts) for parts in per_segment]
    lens = torch.tensor([m.shape[0] for m in merged], device=frames.device)
    return pad_sequence(merged, batch_first=True), lengths_to_mask(lens)
