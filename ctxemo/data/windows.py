"""Training windows for end-to-end mode: K consecutive segments cut from each call, re-cut every epoch.

End-to-end training runs the speech encoder on every segment of a batch, so a batch cannot hold whole
calls (hundreds of segments of audio); it holds windows of `train.window_segments` consecutive
segments. A call of s segments is tiled by ceil(s / K) windows. Every epoch the tiling shifts by a
random offset, so a segment meets different neighbours over the epochs, while the number of windows
per call stays fixed (the learning-rate schedule needs the steps per epoch in advance).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch

from ctxemo.data.datasets import CallItem


def windows_per_call(n_segments: int, window: int) -> int:
    return max(1, math.ceil(n_segments / window))


def epoch_windows(items: Sequence[CallItem], *, window: int, generator: torch.Generator) -> List[CallItem]:
    """Windows of `window` consecutive segments covering every segment of every call.

    Args:
        items: whole calls (CallItem, in any order).
        window: segments per window (K); a call no longer than K is one window.
        generator: draws each call's offset; the same generator state gives the same windows.
    Returns:
        CallItems of exactly K segments (fewer only for short calls), positions kept from the call.
    """
    if window < 1:
        raise ValueError(f"train.window_segments must be >= 1, got {window}")
    out: List[CallItem] = []
    for item in items:
        s = len(item.rows)
        if s <= window:
            out.append(item)
            continue
        n = windows_per_call(s, window)
        shift = int(torch.randint(0, n * window - s + 1, (1,), generator=generator))
        for j in range(n):
            # Starts j*K - shift, clamped into the call: the first and last windows may overlap
            # their neighbours; consecutive starts are at most K apart, so nothing is skipped.
            start = min(max(j * window - shift, 0), s - window)
            out.append(item.window(start, start + window))
    return out
