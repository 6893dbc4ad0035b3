"""Calibration: ECE and Brier score in the binary metrics, temperature scaling fitted on inner-validation
callers (`train.calibrate: temperature`), kept in fold folders and bundles, and applied the same way by
offline predict and LiveSession."""
import json

import numpy as np
import pytest
from bundle_helpers import call_arrays, tiny_config

from ctxemo.cli import main
from ctxemo.evaluation.evaluate import Thresholds
from ctxemo.evaluation.metrics import (
    binary_metrics,
    brier_score,
    calibration_bins,
    expected_calibration_error,
)
from ctxemo.inference.bundle import load_bundle, save_bundle
from ctxemo.inference.live import LiveSession
from ctxemo.models.call_model import build_call_model
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.calibration import TemperatureScaler


def test_ece_and_brier_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    edges, mean_p, share, count = calibration_bins(y, p, n_bins=10)
    assert count.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]  # p = 1.0 lands in the last bin
    # bins: [0, .1): |0 - .05| * 1; [.1, .2): |.5 - .15| * 2; [.9, 1]: |1 - .975| * 2 -> / 5
    assert expected_calibration_error(y, p) == pytest.approx((0.05 + 0.7 + 0.05) / 5)
    assert brier_score(y, p) == pytest.approx(np.mean((p - y) ** 2))
    out = binary_metrics(y, p, threshold=0.5)
    assert out["ece"] == pytest.approx((0.05 + 0.7 + 0.05) / 5) and out["brier"] == pytest.approx(brier_score(y, p))
    assert np.isnan(expected_calibration_error(np.zeros(0), np.zeros(0)))


def test_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)  # outcomes drawn from sigmoid(z)
    overconfident = 1 / (1 + np.exp(-3 * z))  # the same ranking, logits 3x too large
    scaler = TemperatureScaler.fit(y, overconfident)
    assert scaler.temperature == pytest.approx(3.0, rel=0.08)
    calibrated = scaler.apply(overconfident)
    assert expected_calibration_error(y, calibrated) < 0.3 * expected_calibration_error(y, overconfident)
    assert np.all(np.diff(calibrated[np.argsort(overconfident)]) >= 0)  # monotone: the ranking is kept
    assert TemperatureScaler.fit(np.ones(5), np.full(5, 0.9)).temperature == 1.0  # one class: nothing to fit


def _bundle(tmp_path, calibrator):
    cfg = tiny_config(tmp_path, "data.features=x.npy", "context.causal=true", "context.window=4")
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    import torch

    torch.manual_seed(0)
    model = build_call_model(cfg, d_in=6, taxonomy=taxonomy)
    thresholds = Thresholds(binary=0.5, fine=np.full(taxonomy.num_labels, 0.5))
    name = "calibrated" if calibrator else "raw"
    return load_bundle(save_bundle(tmp_path / name, cfg=cfg, model=model, thresholds=thresholds, d_in=6,
                                   time_features_used=True, calibrator=calibrator))


def test_bundle_keeps_the_temperature_and_predict_and_live_apply_it(tmp_path):
    raw = _bundle(tmp_path, None)
    calibrated = _bundle(tmp_path, TemperatureScaler(2.5))
    assert calibrated.calibrator == TemperatureScaler(2.5) and raw.calibrator is None
    assert json.loads((calibrated.path / "bundle.json").read_text())["calibration"]["temperature"] == 2.5
    feats, roles, start, end = call_arrays(10, 6, seed=1)
    before = raw.score_call(feats, roles=roles, start_sec=start, end_sec=end)
    after = calibrated.score_call(feats, roles=roles, start_sec=start, end_sec=end)
    callers = np.array([r == "caller" for r in roles])
    logit = np.log(before.p_negative[callers] / (1 - before.p_negative[callers]))
    np.testing.assert_allclose(after.p_negative[callers], 1 / (1 + np.exp(-logit / 2.5)), atol=1e-6)
    np.testing.assert_allclose(after.p_fine, before.p_fine)  # fine labels are not rescaled
    session = LiveSession(calibrated, call_id="c")
    for i, role in enumerate(roles):
        record = session.push_embedding(feats[i], role=role, start_sec=start[i], end_sec=end[i])
        if role == "caller":
            assert record["p_negative"] == pytest.approx(after.p_negative[i], abs=1e-5)


def test_cv_and_train_fit_the_temperature_on_inner_validation(features_config, tmp_path):
    out = tmp_path / "cv"
    assert main(["cv", str(features_config), "train.calibrate=temperature", "cv.only_folds=[0]", "--out", str(out),
                 "--quiet"]) == 0
    metrics = json.loads((out / "fold0/metrics.json").read_text())
    state = json.loads((out / "fold0/calibration.json").read_text())
    assert state["kind"] == "temperature" and state["temperature"] == pytest.approx(metrics["temperature"])
    assert np.isfinite(metrics["binary"]["ece"]) and 0 <= metrics["binary"]["brier"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert "binary_ece" in summary and "binary_brier" in summary
    run = tmp_path / "train"
    assert main(["train", str(features_config), "train.calibrate=temperature", "--out", str(run), "--quiet"]) == 0
    bundle = load_bundle(run / "bundle")
    assert bundle.calibrator is not None and bundle.calibrator.temperature == pytest.approx(
        bundle.meta["train"]["temperature"])


def test_unknown_calibration_is_a_config_error(features_config, tmp_path, capsys):
    assert main(["cv", str(features_config), "train.calibrate=platt", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "train.calibrate" in capsys.readouterr().err
