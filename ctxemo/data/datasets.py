"""Calls as sequences of segment embeddings, and their padded batches.

Legend: b = calls, s = segments, d = features, c = fine labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ctxemo.data.manifest import ROLE_IDS, Manifest


class CallInputs(NamedTuple):
    """What the context stage sees of a batch of calls (padded to the longest call)."""

    feats: torch.Tensor  # [b, s, d] float
    seg_mask: torch.Tensor  # [b, s] bool, True = real segment
    role: torch.Tensor  # [b, s] long, 0 = caller, 1 = operator
    position: torch.Tensor  # [b, s] long, index of the segment in its call
    time_feats: torch.Tensor  # [b, s, 2] float: log1p(gap since previous segment s), log1p(duration s)


@dataclass
class CallItem:
    """One call, its segments in order. Operator segments appear only when fed as context."""

    call_id: str
    rows: np.ndarray  # [s] manifest rows
    feats: np.ndarray  # [s, d] float32
    role: np.ndarray  # [s] int64, 0 caller / 1 operator
    time_feats: np.ndarray  # [s, 2] float32
    negative: np.ndarray  # [s] float32
    fine: np.ndarray  # [s, c] float32
    scored: np.ndarray  # [s] bool: caller segments (losses and metrics never use operator turns)
    first_position: int = 0  # position of rows[0] in its call (> 0 for a window cut from a call)

    def window(self, start: int, stop: int) -> "CallItem":
        """Segments [start, stop) of this call, keeping their positions and timing in the call."""
        return CallItem(call_id=self.call_id, rows=self.rows[start:stop], feats=self.feats[start:stop],
                        role=self.role[start:stop], time_feats=self.time_feats[start:stop],
                        negative=self.negative[start:stop], fine=self.fine[start:stop],
                        scored=self.scored[start:stop], first_position=self.first_position + start)


class CallBatch(NamedTuple):
    inputs: CallInputs
    negative: torch.Tensor  # [b, s] float
    fine: torch.Tensor  # [b, s, c] float
    scored_mask: torch.Tensor  # [b, s] bool
    rows: torch.Tensor  # [b, s] long, -1 for padding


def time_features(start_sec: np.ndarray, end_sec: np.ndarray, *, previous_end: Optional[float] = None) -> np.ndarray:
    """[s, 2]: log1p(gap since the previous segment), log1p(duration); 0 where start/end are unknown.

    The one timing rule of training, bundles and live scoring. `previous_end` is the end of the segment
    before the first one (live scoring pushes one segment at a time).

    >>> print(time_features(np.array([0.0, 3.0]), np.array([2.0, 4.0])).round(3))
    [[0.    1.099]
     [0.693 0.693]]
    """
    start_sec, end_sec = np.asarray(start_sec, float), np.asarray(end_sec, float)
    duration = np.nan_to_num(end_sec - start_sec, nan=0.0).clip(min=0)
    previous = np.concatenate([[np.nan if previous_end is None else previous_end], end_sec[:-1]])
    gap = np.nan_to_num(start_sec - previous, nan=0.0).clip(min=0)
    return np.log1p(np.stack([gap, duration], axis=1)).astype(np.float32)


def call_inputs(feats: np.ndarray, *, roles: Sequence[str], positions: np.ndarray, time_feats: np.ndarray,
                device: torch.device | str = "cpu") -> CallInputs:
    """CallInputs of one call (b = 1) from its in-context segments (bundles and live scoring)."""
    to = lambda a: torch.as_tensor(np.ascontiguousarray(a))[None].to(device)  # noqa: E731
    return CallInputs(feats=to(np.asarray(feats, np.float32)), seg_mask=to(np.ones(len(roles), bool)),
                      role=to(np.array([ROLE_IDS[r] for r in roles], np.int64)),
                      position=to(np.asarray(positions, np.int64)), time_feats=to(np.asarray(time_feats, np.float32)))


def _take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows]; a view, not a copy, when the rows are consecutive (a call in manifest order), so
    the items of a fold do not hold a second copy of the corpus features."""
    if len(rows) and (np.diff(rows) == 1).all():
        return array[rows[0]:rows[-1] + 1]
    return array[rows]


def build_call_items(manifest: Manifest, feats: np.ndarray, *, rows: Optional[np.ndarray] = None,
                     use_operator_turns: bool = False) -> List[CallItem]:
    """Group manifest rows (all, or those in `rows`) into calls ordered by segment_index.

    Args:
        feats: [n, d] features aligned with manifest rows.
        rows: restrict to these manifest rows (e.g. one fold); whole calls are kept together anyway
            because folds are grouped by caller.
        use_operator_turns: keep operator segments as context tokens (never scored).
    """
    keep = np.ones(len(manifest), dtype=bool) if rows is None else np.isin(np.arange(len(manifest)), rows)
    is_caller = manifest.is_caller
    items = []
    for call_rows in manifest.calls():
        call_rows = call_rows[keep[call_rows]]
        if not use_operator_turns:
            call_rows = call_rows[is_caller[call_rows]]
        if len(call_rows) == 0 or not is_caller[call_rows].any():
            continue
        items.append(CallItem(
            call_id=manifest.call_id[call_rows[0]], rows=call_rows,
            feats=_take_rows(feats, call_rows).astype(np.float32, copy=False),
            role=np.array([ROLE_IDS[manifest.role[r]] for r in call_rows], np.int64),
            time_feats=time_features(manifest.start_sec[call_rows], manifest.end_sec[call_rows]),
            negative=manifest.negative[call_rows].astype(np.float32),
            fine=manifest.fine[call_rows], scored=is_caller[call_rows],
        ))
    return items


def collate(items: Sequence[CallItem], device: torch.device | str = "cpu") -> CallBatch:
    """Pad calls to the longest one; masks mark real segments."""
    b, s = len(items), max(len(it.rows) for it in items)
    d, c = items[0].feats.shape[1], items[0].fine.shape[1]
    feats = np.zeros((b, s, d), np.float32)
    seg_mask = np.zeros((b, s), bool)
    role = np.zeros((b, s), np.int64)
    time_feats = np.zeros((b, s, 2), np.float32)
    negative = np.zeros((b, s), np.float32)
    fine = np.zeros((b, s, c), np.float32)
    scored = np.zeros((b, s), bool)
    rows = np.full((b, s), -1, np.int64)
    position = np.broadcast_to(np.arange(s), (b, s)).copy()
    for i, it in enumerate(items):
        n = len(it.rows)
        feats[i, :n], seg_mask[i, :n], role[i, :n] = it.feats, True, it.role
        time_feats[i, :n], negative[i, :n], fine[i, :n] = it.time_feats, it.negative, it.fine
        scored[i, :n], rows[i, :n] = it.scored, it.rows
        position[i] += it.first_position
    to = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    inputs = CallInputs(feats=to(feats), seg_mask=to(seg_mask), role=to(role), position=to(position),
                        time_feats=to(time_feats))
    return CallBatch(inputs=inputs, negative=to(negative), fine=to(fine), scored_mask=to(scored), rows=to(rows))


def batch_indices(n_items: int, *, batch_calls: int, shuffle: bool, generator: Optional[torch.Generator] = None,
                  lengths: Optional[Sequence[int]] = None, bucket_calls: int = 0) -> List[List[int]]:
    """Which calls go in each batch: consecutive groups of `batch_calls` after an optional shuffle.

    With `lengths` and `bucket_calls` > 0 (training), calls are length-bucketed: each run of
    `bucket_calls` shuffled calls is sorted by length and cut into batches, and the batches are
    shuffled. A batch then pads little (calls of 70-200 segments padded to the longest of 8 random
    ones waste ~30% of the work) while batch composition still changes every epoch.
    The permutations come from `generator`, so the batch order, and everything downstream of it, is
    reproducible from the seed.
    """
    order = torch.randperm(n_items, generator=generator).tolist() if shuffle else list(range(n_items))
    if not (shuffle and lengths is not None and bucket_calls > batch_calls):
        return [order[first:first + batch_calls] for first in range(0, n_items, batch_calls)]
    pool = -(-bucket_calls // batch_calls) * batch_calls  # whole batches per pool: same count as unbucketed
    batches = []
    for first in range(0, n_items, pool):
        by_length = sorted(order[first:first + pool], key=lambda i: lengths[i])
        batches += [by_length[k:k + batch_calls] for k in range(0, len(by_length), batch_calls)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def iterate_batches(items: Sequence[CallItem], *, batch_calls: int, shuffle: bool,
                    generator: Optional[torch.Generator] = None, device: torch.device | str = "cpu") -> Iterator[CallBatch]:
    """Batches of whole calls; shuffled with the given generator so runs are reproducible."""
    for calls in batch_indices(len(items), batch_calls=batch_calls, shuffle=shuffle, generator=generator):
        yield collate([items[i] for i in calls], device)

