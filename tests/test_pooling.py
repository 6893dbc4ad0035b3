"""Pooling: padded segments pool to the unpadded vector; attentive stats starts as [mean, std]."""
import pytest
import torch

from ctxemo.models.pooling import AttentiveStatsPooling, MeanPooling, build_pooling


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(3, 7, 4, generator=g)
    lens = torch.tensor([7, 3, 1])
    mask = torch.arange(7)[None, :] < lens[:, None]
    frames = torch.where(mask[..., None], frames, torch.full_like(frames, 1e4))  # loud garbage in padding
    return frames, mask, lens


@pytest.mark.parametrize("pool", [MeanPooling(), AttentiveStatsPooling(d=4, attention_dim=8)])
def test_padded_equals_unpadded(pool):
    if isinstance(pool, AttentiveStatsPooling):  # non-trivial attention, not the uniform start
        torch.nn.init.normal_(pool.score.weight, std=1.0)
    frames, mask, lens = _batch()
    pooled = pool(frames, frame_mask=mask)
    assert pooled.shape == (3, pool.output_dim(4))
    for i, n in enumerate(lens.tolist()):
        alone = pool(frames[i: i + 1, :n], frame_mask=torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(pooled[i: i + 1], alone, atol=1e-5, rtol=0)


def test_mean_pooling_hand_value():
    frames = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert MeanPooling()(frames, frame_mask=torch.tensor([[True, True, False]])).tolist() == [[2.0]]


def test_attentive_stats_starts_as_mean_and_std():
    frames, mask, lens = _batch(1)
    pooled = AttentiveStatsPooling(d=4)(frames, frame_mask=mask)
    for i, n in enumerate(lens.tolist()):
        valid = frames[i, :n]
        expected_std = valid.var(dim=0, unbiased=False).clamp(min=1e-5).sqrt()
        torch.testing.assert_close(pooled[i], torch.cat([valid.mean(0), expected_std]), atol=1e-5, rtol=0)


def test_attentive_stats_gradient_is_finite_on_constant_frames():
    pool = AttentiveStatsPooling(d=4)
    frames = torch.ones(1, 5, 4, requires_grad=True)
    pool(frames, frame_mask=torch.ones(1, 5, dtype=torch.bool)).sum().backward()
    assert torch.isfinite(frames.grad).all()


def test_build_pooling_names():
    assert isinstance(build_pooling("mean", d=4), MeanPooling)
    assert build_pooling("attentive_stats", d=4).output_dim(4) == 8
    with pytest.raises(ValueError, match="attentive_stats"):
        build_pooling("max", d=4)
