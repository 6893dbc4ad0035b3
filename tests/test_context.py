"""Invariants of the context stage: isolated ignores the rest of the call, contextual uses it,
causal never looks ahead, windows agree with the whole call, padding never matters."""
import pytest
import torch

from ctxemo.data.datasets import CallInputs
from ctxemo.models.call_model import CallModel, forward_windowed

D, C = 6, 11


def _inputs(b=2, s=7, seed=0, operator_every=0):
    g = torch.Generator().manual_seed(seed)
    role = torch.zeros(b, s, dtype=torch.long)
    if operator_every:
        role[:, 1::operator_every] = 1
    return CallInputs(feats=torch.randn(b, s, D, generator=g), seg_mask=torch.ones(b, s, dtype=torch.bool),
                      role=role, position=torch.arange(s).expand(b, s).clone(), time_feats=torch.zeros(b, s, 2))


def _model(kind, causal=False, seed=0):
    torch.manual_seed(seed)
    model = CallModel(d_in=D, num_labels=C, negative_mask=torch.ones(C, dtype=torch.bool), multilabel=True,
                      context_kind=kind, d_model=16, depth=2, heads=2, causal=causal)
    return model.eval()


def _change_others(x: CallInputs, keep: int) -> CallInputs:
    feats = x.feats.clone()
    others = [i for i in range(feats.shape[1]) if i != keep]
    feats[:, others] += 3.0 * torch.randn_like(feats[:, others])
    return x._replace(feats=feats)


@pytest.mark.parametrize("kind, moves", [("identity", False), ("transformer", True), ("call_norm", True)])
def test_other_segments_move_only_contextual_logits(kind, moves):
    model, x = _model(kind), _inputs()
    before, after = model(x), model(_change_others(x, keep=3))
    changed = not torch.allclose(before.binary[:, 3], after.binary[:, 3], atol=1e-6)
    assert changed == moves
    assert torch.allclose(before.fine[:, 3], after.fine[:, 3], atol=1e-6) != moves


def test_operator_turns_change_caller_predictions_only_in_contextual_arm():
    x = _inputs(operator_every=2)
    operator = x.role[0] == 1
    changed = x.feats.clone()
    changed[:, operator] += 5.0
    for kind, moves in [("identity", False), ("transformer", True)]:
        model = _model(kind)
        a, b = model(x).binary[:, ~operator], model(x._replace(feats=changed)).binary[:, ~operator]
        assert (not torch.allclose(a, b, atol=1e-6)) == moves


@pytest.mark.parametrize("kind", ["transformer", "call_norm"])
def test_causal_output_ignores_later_segments(kind):
    model, x = _model(kind, causal=True), _inputs()
    feats = x.feats.clone()
    feats[:, 4:] = torch.randn_like(feats[:, 4:])
    a, b = model(x), model(x._replace(feats=feats))
    assert torch.allclose(a.binary[:, :4], b.binary[:, :4], atol=1e-6)
    assert not torch.allclose(a.binary[:, 4:], b.binary[:, 4:], atol=1e-6)


@pytest.mark.parametrize("kind", ["identity", "call_norm", "transformer"])
def test_padding_does_not_change_outputs(kind):
    model, x = _model(kind), _inputs(b=1, s=5)
    padded = CallInputs(feats=torch.cat([x.feats, torch.randn(1, 3, D)], 1),
                        seg_mask=torch.cat([x.seg_mask, torch.zeros(1, 3, dtype=torch.bool)], 1),
                        role=torch.cat([x.role, torch.zeros(1, 3, dtype=torch.long)], 1),
                        position=torch.arange(8)[None], time_feats=torch.zeros(1, 8, 2))
    assert torch.allclose(model(x).binary, model(padded).binary[:, :5], atol=1e-5)


def test_windows_covering_the_call_equal_whole_call():
    model, x = _model("transformer"), _inputs(s=6)
    whole = model(x)
    windowed = forward_windowed(model, x, window=6, overlap=2)
    assert torch.allclose(whole.binary, windowed.binary)


def test_bidirectional_windows_stitch_every_segment():
    model, x = _model("transformer"), _inputs(s=11)
    out = forward_windowed(model, x, window=4, overlap=2)
    assert out.binary.shape == (2, 11) and out.fine.shape == (2, 11, C)
    # segment 0 can only come from the first window: equal to running that window alone
    first = model(CallInputs(*(t[:, :4] for t in x)))
    assert torch.allclose(out.binary[:, 0], first.binary[:, 0], atol=1e-6)


def test_causal_windows_equal_explicit_history():
    model, x = _model("transformer", causal=True), _inputs(s=9)
    out = forward_windowed(model, x, window=3)
    for i in range(9):
        lo = max(0, i - 2)
        direct = model(CallInputs(*(t[:, lo:i + 1] for t in x)))
        assert torch.allclose(out.binary[:, i], direct.binary[:, -1], atol=1e-5)


def test_binary_from_fine_is_probability_of_any_negative_label():
    from ctxemo.models.heads import binary_logit_from_fine
    logits = torch.tensor([[[0.0, 1.0, -2.0]]])
    mask = torch.tensor([True, True, False])
    p = torch.sigmoid(binary_logit_from_fine(logits, negative_mask=mask, multilabel=True))
    expected = 1 - (1 - torch.sigmoid(torch.tensor(0.0))) * (1 - torch.sigmoid(torch.tensor(1.0)))
    assert torch.allclose(p, expected.reshape(1, 1), atol=1e-5)


def test_self_only_attention_shortcut_equals_attention_with_an_identity_mask():
    """The isolated arm skips the [s, s] attention; it must return what masked SDPA returns."""
    from ctxemo.models.context import SelfAttention

    torch.manual_seed(0)
    attn = SelfAttention(d_model=16, heads=4, dropout=0.0).eval()
    x = torch.randn(3, 9, 16)
    eye = torch.eye(9, dtype=torch.bool).expand(3, 9, 9)
    assert torch.allclose(attn(x, None), attn(x, eye), atol=1e-6)


def test_feature_stats_equal_mean_and_std_of_the_rows_without_copying_them_whole():
    import numpy as np

    from ctxemo.models.call_model import feature_stats

    feats = np.random.default_rng(0).normal(3.0, 2.0, (1000, 5)).astype(np.float32)
    rows = np.arange(0, 1000, 3)
    mean, std = feature_stats(feats, rows, chunk=64)
    want = torch.from_numpy(feats[rows])
    assert torch.allclose(mean, want.mean(0), atol=1e-5) and torch.allclose(std, want.std(0), atol=1e-5)


def test_fine_head_trained_on_negative_segments_reports_p_label_times_p_negative():
    """head.fine_on_negative_only: the fine head estimates P(label | negative); reported probabilities
    are P(label) = P(negative) x P(label | negative), never above P(negative)."""
    from ctxemo.config import load_config
    from ctxemo.models.call_model import build_call_model
    from ctxemo.taxonomy import Taxonomy

    taxonomy = Taxonomy(labels=tuple(f"l{i}" for i in range(C)))
    x = _inputs()
    for negative_only in (False, True):
        cfg = load_config(overrides=["context.d_model=16", "context.heads=2", "head.binary_from=head",
                                     f"head.fine_on_negative_only={str(negative_only).lower()}"])
        torch.manual_seed(0)
        model = build_call_model(cfg, d_in=D, taxonomy=taxonomy).eval()
        logits = model(x)
        p_negative, p_fine = model.probabilities(logits)
        conditional = torch.sigmoid(logits.fine)
        want = conditional * p_negative[..., None] if negative_only else conditional
        assert torch.allclose(p_fine, want)
