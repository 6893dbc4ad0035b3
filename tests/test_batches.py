"""Batch order: every call once per epoch, reproducible from the seed, and length buckets pad less."""
import numpy as np
import torch

from ctxemo.data.datasets import batch_indices
from ctxemo.training.loop import _is_better


def _padding(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_length_buckets_keep_every_call_once_and_the_batch_count_and_pad_less():
    lengths = np.random.default_rng(0).integers(70, 201, size=150).tolist()
    plain = batch_indices(150, batch_calls=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    buckets = batch_indices(150, batch_calls=8, shuffle=True, generator=torch.Generator().manual_seed(1),
                            lengths=lengths, bucket_calls=64)
    assert sorted(i for b in buckets for i in b) == list(range(150))
    assert len(buckets) == len(plain) and all(len(b) <= 8 for b in buckets)
    assert _padding(buckets, lengths) < 0.3 * _padding(plain, lengths)
    again = batch_indices(150, batch_calls=8, shuffle=True, generator=torch.Generator().manual_seed(1),
                          lengths=lengths, bucket_calls=64)
    assert again == buckets
    other = batch_indices(150, batch_calls=8, shuffle=True, generator=torch.Generator().manual_seed(2),
                          lengths=lengths, bucket_calls=64)
    assert other != buckets


def test_buckets_are_off_for_scoring_and_when_disabled():
    lengths = list(range(20))
    assert batch_indices(20, batch_calls=4, shuffle=False, lengths=lengths, bucket_calls=8) == \
        [list(range(k, k + 4)) for k in range(0, 20, 4)]
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert batch_indices(20, batch_calls=4, shuffle=True, generator=g1, lengths=lengths, bucket_calls=0) == \
        batch_indices(20, batch_calls=4, shuffle=True, generator=g2)


def test_min_delta_ignores_tiny_improvements():
    assert _is_better(0.501, 0.5, "score") and not _is_better(0.501, 0.5, "score", min_delta=0.002)
    assert _is_better(0.51, 0.5, "score", min_delta=0.002)
    assert _is_better(0.9, 1.0, "loss", min_delta=0.05) and not _is_better(0.99, 1.0, "loss", min_delta=0.05)
    assert not _is_better(float("nan"), 0.5, "score")
