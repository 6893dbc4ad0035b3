"""The context routes of the real-speech issue: the residual transformer starts as the isolated arm,
call_norm standardises within the call, the smoother learns persistence where it exists and keeps the
isolated evidence where it does not, cross-fitting keeps every caller out of the model that predicts it,
and the baselines (linear probe, trivial prior) run as arms."""
import json

import numpy as np
import pytest
import torch

from ctxemo.config import load_config
from ctxemo.data.datasets import CallInputs
from ctxemo.data.manifest import load_manifest
from ctxemo.embedding.corpus import load_corpus
from ctxemo.evaluation.scoring import SegmentScores
from ctxemo.models.call_model import CallModel, build_call_model
from ctxemo.models.context import call_standardised
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.crossfit import inner_splits, train_fold_model
from ctxemo.training.smoothing import PosteriorSmoother

D, C = 6, 3


def _inputs(b=2, s=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return CallInputs(feats=torch.randn(b, s, D, generator=g), seg_mask=torch.ones(b, s, dtype=torch.bool),
                      role=torch.zeros(b, s, dtype=torch.long), position=torch.arange(s).expand(b, s).clone(),
                      time_feats=torch.randn(b, s, 2, generator=g))


def _model(kind, residual, seed=0):
    torch.manual_seed(seed)
    return CallModel(d_in=D, num_labels=C, negative_mask=torch.ones(C, dtype=torch.bool), multilabel=True,
                     context_kind=kind, d_model=16, depth=2, heads=2, residual=residual)


def test_residual_transformer_at_initialisation_is_the_isolated_arm():
    x = _inputs()
    iso, ctx = _model("identity", False).eval(), _model("transformer", True).eval()
    a, b = iso(x), ctx(x)
    assert torch.equal(a.binary, b.binary) and torch.equal(a.fine, b.fine)
    # ... and the correction is live: once the gate moves, the rest of the call changes a segment's logits.
    with torch.no_grad():
        ctx.context.gate.fill_(1.0)
    other = x._replace(feats=torch.cat([x.feats[:, :1], torch.randn_like(x.feats[:, 1:])], 1))
    assert not torch.allclose(ctx(x).binary[:, 0], ctx(other).binary[:, 0])
    assert torch.allclose(iso(x).binary[:, 0], iso(other).binary[:, 0])


def test_residual_gate_gets_a_gradient_from_the_start():
    model = _model("transformer", True).train()
    logits = model(_inputs())
    (logits.binary.sum() + logits.fine.sum()).backward()
    assert model.context.gate.grad is not None and model.context.gate.grad.abs() > 0


def test_build_call_model_follows_context_residual():
    cfg = load_config(overrides=["context.kind=transformer", "context.residual=false"])
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    assert build_call_model(cfg, d_in=D, taxonomy=taxonomy).context.correction is None
    cfg = load_config(overrides=["context.kind=transformer"])
    assert build_call_model(cfg, d_in=D, taxonomy=taxonomy).context.correction is not None


def test_call_standardised_removes_the_call_level_and_scale():
    torch.manual_seed(0)
    x = 5.0 + 3.0 * torch.randn(1, 40, D)
    mask, role = torch.ones(1, 40, dtype=torch.bool), torch.zeros(1, 40, dtype=torch.long)
    z = call_standardised(x, seg_mask=mask, role=role, causal=False)
    assert z.mean(1).abs().max() < 1e-4
    assert (z.std(1) - 1).abs().max() < 0.1  # scale shrunk towards 1 by one pseudo-segment only
    one = call_standardised(x[:, :1], seg_mask=mask[:, :1], role=role[:, :1], causal=False)
    assert torch.equal(one, torch.zeros_like(one))  # a one-segment call has no baseline to stand against
    causal = call_standardised(x, seg_mask=mask, role=role, causal=True)
    for t in (1, 7, 39):  # running statistics: position t depends on segments 0..t only
        direct = call_standardised(x[:, :t + 1], seg_mask=mask[:, :t + 1], role=role[:, :t + 1], causal=False)
        assert torch.allclose(causal[:, t], direct[:, t], atol=1e-5)


class _Manifest:
    def __init__(self, call_id, segment_index):
        self.call_id, self.segment_index = call_id, segment_index


def _sequence_scores(persistent: bool, seed=0, n_calls=60, length=12):
    """Isolated-style noisy probabilities of binary + 3 classes along calls whose label persists (or not)."""
    rng = np.random.default_rng(seed)
    call_id, seg, labels = [], [], []
    for c in range(n_calls):
        label = rng.integers(C)
        for i in range(length):
            if not persistent or rng.random() < 0.2:
                label = rng.integers(C)
            call_id.append(f"c{c}")
            seg.append(i)
            labels.append(label)
    labels = np.array(labels)
    logits = 1.2 * np.eye(C)[labels] + rng.normal(0, 1.0, (len(labels), C))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    negative = (labels == 0).astype(int)
    rows = np.arange(len(labels))
    scores = SegmentScores(rows, p[:, 0], p, negative, np.eye(C, dtype=int)[labels])
    return scores, _Manifest(call_id, seg)


@pytest.mark.parametrize("persistent", [True, False])
def test_smoother_uses_persistence_only_where_it_exists(persistent):
    taxonomy = Taxonomy(labels=("a", "b", "c"), multilabel=False, negative_labels=("a",))
    train, manifest = _sequence_scores(persistent, seed=0)
    test, test_manifest = _sequence_scores(persistent, seed=1)
    smoother = PosteriorSmoother(taxonomy, causal=False).fit(train, manifest)
    smoothed = smoother.apply(test, test_manifest)
    acc = lambda s: float((s.p_fine.argmax(1) == s.fine.argmax(1)).mean())  # noqa: E731
    if persistent:  # labels stay with p = 0.8 + 0.2 / 3: the learned stay probability finds it
        assert smoother.fine[0].stay == pytest.approx(0.8, abs=0.08)
        assert acc(smoothed) > acc(test) + 0.1
    else:  # order carries nothing: nothing learned, nothing lost
        assert smoother.fine[0].stay < 0.05 and smoother.binary.stay < 0.05
        assert np.abs(smoothed.p_fine - test.p_fine).max() < 0.1
        assert acc(smoothed) > acc(test) - 0.02


def test_causal_smoothing_never_looks_ahead():
    taxonomy = Taxonomy(labels=("a", "b", "c"), multilabel=True, negative_labels=("a",))
    train, manifest = _sequence_scores(True, seed=0, n_calls=20)
    smoother = PosteriorSmoother(taxonomy, causal=True).fit(train, manifest)
    full = smoother.apply(train, manifest)
    changed = SegmentScores(train.rows, train.p_negative.copy(), train.p_fine.copy(), train.negative, train.fine)
    changed.p_negative[6:12] = 1 - changed.p_negative[6:12]  # the second half of the first call
    changed.p_fine[6:12] = changed.p_fine[6:12, ::-1]
    after = smoother.apply(changed, manifest)
    assert np.allclose(after.p_negative[:6], full.p_negative[:6]) and np.allclose(after.p_fine[:6], full.p_fine[:6])
    assert not np.allclose(after.p_negative[6:12], full.p_negative[6:12])


def test_cross_fitting_predicts_every_training_caller_once_by_a_model_that_never_saw_it(features_config, tmp_path):
    cfg = load_config([features_config], ["cv.inner_folds=3", "train.epochs=2"])
    data = load_corpus(cfg, progress=False)
    caller = np.asarray(data.manifest.caller_id)
    test_callers = {"p00", "p01"}
    train_rows = np.flatnonzero(~np.isin(caller, list(test_callers)))
    splits = inner_splits(cfg, data, train_rows, seed=0)
    assert len(splits) == 3
    val_callers = [set(caller[v]) for _, v in splits]
    assert set().union(*val_callers) == set(caller[train_rows])
    assert sum(len(v) for v in val_callers) == len(set(caller[train_rows]))  # each caller in one inner fold
    for fit_rows, val_rows in splits:
        assert not set(caller[fit_rows]) & set(caller[val_rows])
        assert not (set(caller[fit_rows]) | set(caller[val_rows])) & test_callers
    model = train_fold_model(cfg, data, train_rows, taxonomy=Taxonomy.from_config(cfg.taxonomy), fold=0,
                             fold_dir=tmp_path / "fold", progress=False)
    scored_train = np.flatnonzero(data.manifest.is_caller[train_rows])
    assert sorted(model.oof.rows.tolist()) == sorted(train_rows[scored_train].tolist())
    assert model.info["n_members"] == 3 and model.info["n_inner_folds"] == 3


@pytest.mark.parametrize("mode", ["linear_probe", "prior"])
def test_baseline_arms_run_in_every_ablation(features_config, tmp_path, mode):
    from ctxemo.studies.ablation import run_ablation

    cfg = load_config([features_config], ["ablation.arms={iso: [context.kind=identity], ctx: [context.kind=transformer]}",
                                          "ablation.reference=iso", "train.epochs=2", "cv.folds=2",
                                          f"ablation.baselines=[{mode}]"])
    result = run_ablation(cfg, tmp_path / "abl", progress=False, log=lambda *a: None)
    assert list(result["arms"]) == ["iso", "ctx", mode]
    summary = json.loads((tmp_path / "abl" / "summary.json").read_text())
    assert set(summary["pooled"]) == {"iso", "ctx", mode}
    arm_cfg = (tmp_path / "abl" / mode / "config.yaml").read_text()
    assert f"mode: {mode}" in arm_cfg and "kind: identity" in arm_cfg  # on the reference arm's settings
    if mode == "prior":  # the trivial predictor: ranks nothing, decides "all negative" once tuned
        pooled = summary["pooled"]["prior"]  # (pooled over folds its AUROC is not 0.5: each fold has its prior)
        assert summary["arms"]["prior"]["binary_auroc"]["folds"] == pytest.approx([0.5, 0.5])
        manifest = load_manifest(cfg.data.manifest, Taxonomy.from_config(cfg.taxonomy), require_audio=False)
        prevalence = manifest.negative[manifest.is_caller].mean()
        assert pooled["binary_f1"] == pytest.approx(2 * prevalence / (1 + prevalence), abs=1e-6)
    else:  # the planted cue is linear: the probe must find it
        assert summary["pooled"][mode]["binary_auroc"] > 0.8


def test_smooth_arm_writes_its_smoother_and_scores_every_test_segment(features_config, tmp_path):
    from ctxemo.studies.cv import run_cv

    cfg = load_config([features_config], ["context.kind=smooth", "cv.inner_folds=2", "train.epochs=2", "cv.folds=2"])
    run_cv(cfg, tmp_path / "cv", progress=False)
    state = json.loads((tmp_path / "cv" / "fold0" / "smoother.json").read_text())
    assert state["causal"] is False and 0.0 <= state["binary"]["stay"] <= 1.0
    metrics = json.loads((tmp_path / "cv" / "fold0" / "metrics.json").read_text())
    assert metrics["n_members"] == 2 and np.isfinite(metrics["binary"]["auroc"])


def test_bundle_of_a_cross_fitted_smooth_arm_scores_like_its_members_and_live_like_offline(features_config, tmp_path):
    """`ctxemo train` with cross-fitting + smoothing: the bundle holds every inner model and the smoother;
    offline scoring is the members' mean smoothed along the call, live scoring its causal pass."""
    from ctxemo.inference.bundle import load_bundle
    from ctxemo.inference.live import LiveSession
    from ctxemo.studies.train_bundle import train_bundle

    cfg = load_config([features_config], ["context.kind=smooth", "context.causal=true", "cv.inner_folds=2",
                                          "train.ensemble=2", "train.epochs=2"])
    bundle = load_bundle(train_bundle(cfg, tmp_path / "train", progress=False, log=lambda *a: None))
    assert bundle.meta["members"] == 4 and len(bundle.model.members) == 4 and bundle.smoother is not None
    data = load_corpus(cfg, progress=False)
    rows = data.manifest.calls()[0]
    rows = rows[data.manifest.is_caller[rows]]
    feats = data.feats[rows]
    roles = ["caller"] * len(rows)
    nan = np.full(len(rows), np.nan)
    offline = bundle.score_call(feats, roles=roles, start_sec=nan, end_sec=nan)
    with torch.no_grad():  # by hand: each member alone, averaged, then the causal chain
        from ctxemo.data.datasets import call_inputs
        x = call_inputs(feats, roles=roles, positions=np.arange(len(rows)), time_feats=np.zeros((len(rows), 2)))
        parts = [m.probabilities(m(x)) for m in bundle.model.members]
    p_neg = np.mean([p[0].numpy() for p, _ in parts], axis=0)
    p_fine = np.mean([f[0].numpy() for _, f in parts], axis=0)
    want_neg, want_fine = bundle.smoother.smooth_call(p_neg, p_fine)
    np.testing.assert_allclose(offline.p_negative, want_neg, atol=1e-5)
    np.testing.assert_allclose(offline.p_fine, want_fine, atol=1e-5)
    session = LiveSession(bundle)
    live = [session.push_embedding(f, duration_sec=1.0)["p_negative"] for f in feats]
    np.testing.assert_allclose(live, want_neg, atol=1e-5)  # causal: the last value of each prefix is final


@pytest.mark.parametrize("window", [0, 3])
def test_training_units_are_the_scoring_windows(features_config, tmp_path, monkeypatch, window):
    """With context.window > 0 the context stage trains on windows of that many segments (what validation,
    test, predict and live score), not on whole calls; with 0, on whole calls."""
    from ctxemo.training import trainers

    seen = {}
    real_fit = trainers.fit

    def spy(model, **kwargs):
        units = kwargs["epoch_items"](torch.Generator().manual_seed(0)) if kwargs.get("epoch_items") else kwargs["train_items"]
        seen["lengths"] = [len(u.rows) for u in units]
        seen["calls"] = max(len(it.rows) for it in kwargs["train_items"])
        return real_fit(model, **kwargs)

    monkeypatch.setattr(trainers, "fit", spy)
    cfg = load_config([features_config], [f"context.window={window}", "cv.inner_folds=0", "train.epochs=1",
                                          "cv.folds=2", "cv.only_folds=[0]"])
    from ctxemo.studies.cv import run_cv

    run_cv(cfg, tmp_path / "cv", progress=False)
    if window:
        assert max(seen["lengths"]) == window < seen["calls"]
    else:
        assert max(seen["lengths"]) == seen["calls"]
