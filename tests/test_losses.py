"""Tests for ctxemo.training.losses: focal reduces to (weighted) BCE / CE, balanced weights, stability."""
import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ctxemo.training.losses as losses
from ctxemo.errors import ConfigError
from ctxemo.training.losses import (
    FocalLoss,
    build_loss,
    class_balanced_weights,
    prior_bias,
)


def test_docstring_examples_run():
    result = doctest.testmod(losses)
    assert result.attempted > 0 and result.failed == 0


def test_beta_zero_gives_uniform_weights():
    weights = class_balanced_weights([1000, 10, 0, 3], beta=0.0)
    assert torch.allclose(weights, torch.ones(4))


def test_balanced_weights_sum_to_c_and_favour_rare_classes():
    weights = class_balanced_weights(np.array([1000, 100, 10]), beta=0.999)
    assert weights.sum().item() == pytest.approx(3.0, rel=1e-6)
    assert weights[0] < weights[1] < weights[2]
    # By hand: E_n = (1 - beta^n) / (1 - beta), weight ∝ 1 / E_n.
    effective = [(1 - 0.999**n) / (1 - 0.999) for n in (1000, 100, 10)]
    inverse = [1 / e for e in effective]
    expected = [3 * w / sum(inverse) for w in inverse]
    assert weights.tolist() == pytest.approx(expected, rel=1e-5)


def test_beta_one_is_inverse_frequency():
    weights = class_balanced_weights(torch.tensor([10.0, 30.0]), beta=1.0)
    assert weights.tolist() == pytest.approx([1.5, 0.5])


def test_zero_count_gives_finite_weight():
    weights = class_balanced_weights([500, 0], beta=0.9999)
    assert torch.isfinite(weights).all()
    assert weights[1] > weights[0]


def test_gamma_zero_equals_weighted_bce_multilabel():
    torch.manual_seed(0)
    logits, targets = torch.randn(7, 4), (torch.rand(7, 4) > 0.6).float()
    weights = class_balanced_weights([50, 5, 1, 20], beta=0.99)
    ours = FocalLoss(class_weights=weights, gamma=0.0, multilabel=True)(logits, targets)
    # Sum over labels, mean over rows.
    reference = F.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="none").sum(1).mean()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)


def test_gamma_zero_equals_weighted_bce_binary_head():
    torch.manual_seed(1)
    logits, targets = torch.randn(9), (torch.rand(9) > 0.5).float()
    weights = torch.tensor([0.4, 1.6])  # [w_not_negative, w_negative]
    ours = FocalLoss(class_weights=weights, gamma=0.0, multilabel=True)(logits, targets)
    per_row = torch.where(targets == 1, weights[1], weights[0])
    reference = F.binary_cross_entropy_with_logits(logits, targets, weight=per_row)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)


def test_hand_computed_value():
    # Two rows, two labels, gamma = 2, label weights [0.5, 1.5]; sigmoid(ln 3) = 0.75.
    # Row 0: logits [ln 3, 0], targets [1, 0]
    #   label 0: p_t = 0.75, BCE = ln(4/3), factor 0.25^2 -> 0.5 * 0.0625 * 0.287682 = 0.008990
    #   label 1: p_t = 0.5,  BCE = ln 2,    factor 0.5^2  -> 1.5 * 0.25   * 0.693147 = 0.259930
    # Row 1: logits [-ln 3, ln 3], targets [1, 1]
    #   label 0: p_t = 0.25, BCE = ln 4,    factor 0.75^2 -> 0.5 * 0.5625 * 1.386294 = 0.389895
    #   label 1: p_t = 0.75, BCE = ln(4/3), factor 0.25^2 -> 1.5 * 0.0625 * 0.287682 = 0.026970
    # Mean over rows: (0.268920 + 0.416865) / 2 = 0.342893
    ln3 = math.log(3.0)
    logits = torch.tensor([[ln3, 0.0], [-ln3, ln3]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss = FocalLoss(class_weights=torch.tensor([0.5, 1.5]), gamma=2.0, multilabel=True)
    assert loss(logits, targets).item() == pytest.approx(0.342893, abs=1e-5)


def test_softmax_gamma_zero_uniform_equals_cross_entropy():
    torch.manual_seed(2)
    logits, targets = torch.randn(8, 5), torch.randint(0, 5, (8,))
    ours = FocalLoss(class_weights=None, gamma=0.0, multilabel=False)(logits, targets)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    uniform = FocalLoss(class_weights=torch.ones(5), gamma=0.0, multilabel=False)(logits, targets)
    assert uniform.item() == pytest.approx(ours.item(), rel=1e-6)
    one_hot = FocalLoss(class_weights=None, gamma=0.0, multilabel=False)(logits, F.one_hot(targets, 5).float())
    assert one_hot.item() == pytest.approx(ours.item(), rel=1e-6)


def test_softmax_focal_hand_value():
    # Two classes, logits [0, 0] -> p_y = 0.5; alpha_y = 2, gamma = 2: 2 * 0.25 * ln 2 = 0.346574
    loss = FocalLoss(class_weights=torch.tensor([1.0, 2.0]), gamma=2.0, multilabel=False)
    assert loss(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(0.5 * math.log(2), rel=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("multilabel", [True, False])
def test_extreme_logits_and_absent_label_stay_finite(gamma, multilabel):
    weights = class_balanced_weights([100, 0, 7], beta=0.9999)  # label 1 has no positives
    logits = torch.tensor([[50.0, -50.0, 50.0], [-50.0, 50.0, -50.0], [50.0, 50.0, -50.0]], requires_grad=True)
    if multilabel:
        targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    else:
        targets = torch.tensor([0, 2, 1])
    value = FocalLoss(class_weights=weights, gamma=gamma, multilabel=multilabel)(logits, targets)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_binary_extreme_logits_stay_finite():
    logits = torch.tensor([50.0, -50.0, 50.0, -50.0], requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    value = FocalLoss(class_weights=torch.tensor([0.2, 1.8]), gamma=0.5, multilabel=True)(logits, targets)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert value.item() > 10  # the two wrong rows dominate


@pytest.mark.parametrize("multilabel", [True, False])
def test_mask_excludes_rows(multilabel):
    torch.manual_seed(3)
    logits = torch.randn(6, 3)
    targets = (torch.rand(6, 3) > 0.5).float() if multilabel else torch.randint(0, 3, (6,))
    mask = torch.tensor([True, False, True, True, False, True])
    loss = FocalLoss(class_weights=torch.tensor([1.0, 2.0, 0.5]), gamma=2.0, multilabel=multilabel)
    # Garbage in masked rows must not leak into the value.
    poisoned = logits.clone()
    poisoned[~mask] = float("nan")
    assert loss(poisoned, targets, mask).item() == pytest.approx(loss(logits[mask], targets[mask]).item(), rel=1e-6)


def test_all_masked_batch_is_zero_with_grad():
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.zeros(4, 3)
    value = FocalLoss(class_weights=None, gamma=2.0, multilabel=True)(logits, targets, torch.zeros(4, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(logits.grad, torch.zeros(4, 3))


def test_binary_head_rejects_wrong_weight_count():
    with pytest.raises(ValueError, match="2 class weights"):
        FocalLoss(class_weights=torch.ones(3), gamma=2.0, multilabel=True)(torch.zeros(4), torch.zeros(4))


def test_build_loss_maps_kinds():
    counts = [90, 10]
    cb = class_balanced_weights(counts, beta=0.99)
    made = {kind: build_loss(kind=kind, class_counts=counts, beta=0.99, gamma=2.0, multilabel=True) for kind in
            ("cb_focal", "focal", "bce", "weighted_bce")}
    assert made["cb_focal"].gamma == 2.0 and torch.allclose(made["cb_focal"].class_weights, cb)
    assert made["focal"].gamma == 2.0 and made["focal"].class_weights is None
    assert made["bce"].gamma == 0.0 and made["bce"].class_weights is None
    assert made["weighted_bce"].gamma == 0.0 and torch.allclose(made["weighted_bce"].class_weights, cb)
    assert build_loss(kind="bce", class_counts=None, beta=0.99, gamma=2.0, multilabel=False).multilabel is False
    with pytest.raises(ConfigError, match="loss.kind"):
        build_loss(kind="dice", class_counts=counts, beta=0.99, gamma=2.0, multilabel=True)


def test_prior_bias_is_log_odds_and_finite():
    bias = prior_bias([25, 0, 100], total=100)
    assert bias[0].item() == pytest.approx(math.log(0.25 / 0.75), rel=1e-5)
    assert torch.isfinite(bias).all()
    assert bias[1] < -4 and bias[2] > 4
    assert torch.sigmoid(bias[1]).item() == pytest.approx(0.005, rel=1e-4)


def _fitted_probability(loss, y):
    """Sigmoid of the per-label constant logit that minimises `loss` on targets y [n, c]."""
    b = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([b], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        value = loss(b.expand(*y.shape), y)
        value.backward()
        return value
    opt.step(closure)
    return torch.sigmoid(b).detach()


def test_per_label_class_balance_moves_a_rare_label_up_from_its_prior():
    """Each fine label is its own binary problem: weighting its positives against its negatives must
    shift the fitted probability of a rare label (a [c] weight per label only rescales its gradient)."""
    n = 200
    y = torch.zeros(n, 2)
    y[:80, 0], y[:6, 1] = 1, 1
    k = y.sum(0).numpy()
    counts = np.stack([n - k, k], axis=1)  # [c, 2]: what build_objective passes for a multi-label head
    plain = _fitted_probability(build_loss(kind="bce", class_counts=counts, beta=0.999, gamma=0.0,
                                           multilabel=True), y)
    balanced = _fitted_probability(build_loss(kind="weighted_bce", class_counts=counts, beta=0.999, gamma=0.0,
                                              multilabel=True), y)
    assert abs(plain[1] - 0.03) < 1e-3
    assert balanced[1] > plain[1] + 0.05
    one_weight_per_label = _fitted_probability(build_loss(kind="weighted_bce", class_counts=k, beta=0.999,
                                                          gamma=0.0, multilabel=True), y)
    assert abs(one_weight_per_label[1] - 0.03) < 1e-3  # why [c, 2]: a [c] weight cannot rebalance


def test_per_label_weights_match_an_elementwise_reference():
    torch.manual_seed(0)
    logits, y = torch.randn(7, 3), (torch.rand(7, 3) > 0.6).float()
    counts = np.array([[6, 1], [3, 4], [5, 2]])
    loss = build_loss(kind="weighted_bce", class_counts=counts, beta=0.99, gamma=0.0, multilabel=True)
    w = torch.stack([class_balanced_weights(r, beta=0.99) for r in counts])
    ref = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
           * (y * w[:, 1] + (1 - y) * w[:, 0])).sum(1).mean()
    assert torch.allclose(loss(logits, y), ref)
