"""The training engine: reproducible, resumable after a kill, and able to fit a few calls."""
import numpy as np
import pytest
import torch
from conftest import dies_on_call

import ctxemo.training.loop as train_module
from ctxemo.data.datasets import build_call_items
from ctxemo.data.features import load_features
from ctxemo.data.manifest import load_manifest
from ctxemo.evaluation.metrics import average_precision
from ctxemo.evaluation.scoring import score_items
from ctxemo.models.call_model import build_call_model, feature_stats
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.loop import fit
from ctxemo.training.objective import build_objective


def _setup(cfg, rows_train=slice(0, 12), rows_val=slice(12, 16)):
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    manifest = load_manifest(cfg.data.manifest, taxonomy, require_audio=False)
    feats = load_features(cfg.data.features, len(manifest))
    items = build_call_items(manifest, feats)
    train_items, val_items = items[rows_train], items[rows_val]
    objective, bias = build_objective(cfg, train_items=train_items, taxonomy=taxonomy)
    torch.manual_seed(0)
    model = build_call_model(cfg, d_in=feats.shape[1], taxonomy=taxonomy, fine_bias=bias,
                             train_stats=feature_stats(np.concatenate([it.feats for it in train_items])))
    return model, train_items, val_items, objective, taxonomy


def _fit(cfg, **kwargs):
    model, train_items, val_items, objective, taxonomy = _setup(cfg)
    result = fit(model, train_items=train_items, val_items=val_items, objective=objective, taxonomy=taxonomy,
                 cfg_train=cfg.train, seed=1, progress=False, **kwargs)
    return model, result


def test_same_seed_same_result(features_config, load_test_config):
    cfg = load_test_config(features_config, "train.epochs=4", "train.patience=10")
    _, a = _fit(cfg)
    _, b = _fit(cfg)
    assert a.history == b.history
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_kill_then_resume_equals_uninterrupted(features_config, load_test_config, tmp_path, monkeypatch):
    cfg = load_test_config(features_config, "train.epochs=5", "train.patience=10")
    _, full = _fit(cfg)

    real_score = train_module.score_items
    checkpoint = tmp_path / "ckpt.pt"
    monkeypatch.setattr(train_module, "score_items", dies_on_call(real_score, 3))  # killed in epoch 3
    with pytest.raises(KeyboardInterrupt):
        _fit(cfg, checkpoint_path=checkpoint)
    assert checkpoint.is_file()
    monkeypatch.setattr(train_module, "score_items", real_score)
    _, resumed = _fit(cfg, checkpoint_path=checkpoint, resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3, 4]
    assert resumed.history == full.history
    assert all(torch.equal(full.state_dict[k], resumed.state_dict[k]) for k in full.state_dict)


def test_checkpoint_refuses_pickled_code(tmp_path, features_config, load_test_config):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    bad = tmp_path / "ckpt.pt"
    torch.save({"model": Evil()}, bad)
    cfg = load_test_config(features_config, "train.epochs=1")
    with pytest.raises(Exception, match="safely"):
        _fit(cfg, checkpoint_path=bad, resume=True)


def test_tiny_model_overfits_four_calls(features_config, load_test_config):
    cfg = load_test_config(features_config, "train.epochs=150", "train.patience=1000", "train.lr=0.01",
                           "context.dropout=0.0", "head.dropout=0.0", "train.weight_decay=0.0",
                           "loss.kind=bce", "context.d_model=32", "train.early_stop_metric=loss")
    model, train_items, _, objective, taxonomy = _setup(cfg, rows_train=slice(0, 4), rows_val=slice(0, 4))
    fit(model, train_items=train_items, val_items=train_items, objective=objective, taxonomy=taxonomy,
        cfg_train=cfg.train, seed=0, progress=False)
    scores, _ = score_items(model, train_items)
    assert ((scores.p_negative >= 0.5) == (scores.negative == 1)).mean() == 1.0


def test_fast_average_precision_matches_sklearn():
    from sklearn.metrics import average_precision_score
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.random(200)
    assert average_precision(y, p) == pytest.approx(average_precision_score(y, p))
    assert np.isnan(average_precision(np.zeros(5), p[:5]))


def test_tensorboard_logs_every_epochs_metrics(features_config, load_test_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_test_config(features_config, "train.epochs=3", "train.patience=10")
    _, result = _fit(cfg, log_dir=tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"train_loss", "val/score", "val/loss", "val/binary_ap"} <= set(events.Tags()["scalars"])
    logged = [e.value for e in events.Scalars("val/score")]
    assert logged == pytest.approx([h["score"] for h in result.history])


def test_cv_writes_tensorboard_logs_per_fold_only_when_asked(features_config, load_test_config, tmp_path):
    from ctxemo.studies.cv import run_cv

    run_cv(load_test_config(features_config, "train.epochs=1", "cv.folds=2", "train.tensorboard=true"),
           tmp_path / "on", progress=False)
    assert list((tmp_path / "on" / "fold0").glob("member*/tensorboard/events.*"))  # one log per inner model
    run_cv(load_test_config(features_config, "train.epochs=1", "cv.folds=2"), tmp_path / "off", progress=False)
    assert not (tmp_path / "off" / "fold0" / "tensorboard").exists()
