"""`ctxemo train`: one model on all callers, ready to use: early stopping and decision thresholds on a
caller-disjoint inner validation split, written as a model bundle (see ctxemo.inference.bundle).

Two-stage: segment embeddings come from the cache (`ctxemo embed`), the context model trains on them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
from omegaconf import DictConfig

from ctxemo.config import BASELINE_MODES
from ctxemo.embedding.corpus import (
    CorpusData,
    audio_specs,
    has_fine_labels,
    load_corpus,
)
from ctxemo.embedding.encode import EmbedSettings, as_audio_spec, read_segment
from ctxemo.errors import ConfigError
from ctxemo.evaluation.evaluate import decision_thresholds, evaluate
from ctxemo.inference.bundle import (
    build_encoder,
    save_bundle,
    verify_rebuilt_embeddings,
)
from ctxemo.io import write_json
from ctxemo.models.ensemble import EnsembleCallModel
from ctxemo.runinfo import RunFolder, start_run
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.crossfit import discard_checkpoints, inner_splits, train_fold_model

VERIFY_ROWS = 4  # segments re-embedded with the rebuilt encoder before the bundle is written
BAND_ROWS = 64  # caller segments whose band edge is recorded in the bundle


def train_bundle(cfg: DictConfig, run_dir: str | Path, progress: bool = True, *, data: CorpusData | None = None,
                 folder: RunFolder | None = None, log=print) -> Path:
    """Train on every caller and write `run_dir/bundle`.

    Args:
        cfg: resolved config (two_stage, or end_to_end: the bundle then carries the encoder's trained weights).
        run_dir: run folder: config.yaml, run.json, inner-validation metrics.json, history.json, bundle/.
        data: manifest + features if already loaded (else `load_corpus`, using the embedding cache).
        folder: the run folder's guard (`ctxemo train`): inputs checked before they are embedded, config.yaml
            and run.json written once they pass (default: written without checks).
    Returns:
        The bundle folder.
    Raises:
        CtxemoError: the rebuilt encoder does not reproduce the cached embeddings.
    """
    run_dir = Path(run_dir)
    if cfg.train.mode in BASELINE_MODES:
        raise ConfigError(f"config key 'train.mode' = {cfg.train.mode!r} is a baseline for cv / ablate; "
                          "`ctxemo train` builds a bundle from train.mode=two_stage or end_to_end")
    end_to_end = cfg.train.mode == "end_to_end"
    if end_to_end and (cfg.cv.inner_folds >= 2 or cfg.train.ensemble > 1):
        raise ConfigError("an end-to-end bundle holds one encoder: set cv.inner_folds=0 and train.ensemble=1 "
                          "for `ctxemo train` in train.mode=end_to_end")
    if data is None:
        data = load_corpus(cfg, progress=progress, check_inputs=folder.check_inputs if folder else None)
    has_fine_labels(cfg, data.manifest)  # refuses, before any training, a fine head with no fine labels
    inner_splits(cfg, data, np.arange(len(data.manifest)), seed=cfg.seed)  # possible? (raises before any write)
    if folder is not None:
        folder.start(command="train", inputs=data.inputs)
    else:
        start_run(run_dir, cfg, command="train", inputs=data.inputs)
    manifest, taxonomy = data.manifest, Taxonomy.from_config(cfg.taxonomy)
    # As one CV fold (fold 0: seed cfg.seed) whose "training folds" are every caller: the same inner
    # protocol (one split, or cross-fitting with an ensemble of the inner models) and the same thresholds.
    trained = train_fold_model(cfg, data, np.arange(len(manifest)), taxonomy=taxonomy, fold=0, fold_dir=run_dir,
                               progress=progress)
    thresholds = decision_thresholds(trained.oof, taxonomy, tune=cfg.cv.tune_thresholds)
    val_metrics = evaluate(trained.oof, taxonomy=taxonomy, binary_threshold=thresholds.binary,
                           fine_thresholds=thresholds.fine)
    if not cfg.data.features and not end_to_end:
        _verify_encoder(cfg, data)
    info: Dict = {**trained.info, "inner_val_binary_f1": val_metrics["binary"].get("f1")}
    if not cfg.data.features:
        info["audio"] = training_band(cfg, data)
    models = [m.model.cpu() for m in trained.members]
    # End-to-end: the bundle carries the encoder's trained weights (adapters, pooling) next to the context model.
    encoder = models[0].encoder if end_to_end else None
    call_models = [m.call_model if end_to_end else m for m in models]
    model = call_models[0] if len(call_models) == 1 else EnsembleCallModel(call_models)
    bundle = save_bundle(run_dir / "bundle", cfg=cfg, model=model, thresholds=thresholds,
                         d_in=encoder.output_dim if end_to_end else data.feats.shape[1], encoder=encoder,
                         time_features_used=_has_timing(data, np.arange(len(manifest))), train_info=info,
                         smoother=trained.smoother, calibrator=trained.calibrator)
    histories = [m.result.history for m in trained.members]
    write_json(run_dir / "history.json", histories[0] if len(histories) == 1 else histories)
    # Inner-validation figures: what early stopping and thresholds saw; not an estimate of test performance.
    write_json(run_dir / "metrics.json", {"split": "inner_validation", **val_metrics, **info,
                                          "thresholds": {"binary": thresholds.binary,
                                                         "fine": None if thresholds.fine is None
                                                         else [float(v) for v in thresholds.fine]}})
    discard_checkpoints(run_dir)
    log(f"bundle written to {bundle} (best epoch {info['best_epoch']}, {len(models)} model(s), inner-validation "
        f"binary F1 {val_metrics['binary'].get('f1', float('nan')):.3f})")
    return bundle


def training_band(cfg: DictConfig, data: CorpusData, *, rows_max: int = BAND_ROWS) -> Dict:
    """What the training audio was: its most common file sample rate and upper band edge (as embedded,
    so with data.telephone_share), measured on up to `rows_max` caller segments spread over the corpus.
    Bundles keep it so that predict and LiveSession can warn when an input's band differs."""
    from collections import Counter

    from ctxemo.data.audio import audio_info
    from ctxemo.data.telephone import upper_band_edge_hz

    callers = np.flatnonzero(data.manifest.is_caller)
    rows = callers[np.linspace(0, len(callers) - 1, min(rows_max, len(callers))).astype(int)] if len(callers) else []
    specs, settings = audio_specs(data.manifest), EmbedSettings.from_config(cfg)
    waves = [read_segment(settings, as_audio_spec(specs[r])) for r in rows]
    rates = Counter(int(audio_info(as_audio_spec(specs[r]).path).samplerate) for r in rows)
    return {"sample_rate_hz": rates.most_common(1)[0][0] if rates else None,
            "upper_band_edge_hz": upper_band_edge_hz(waves, settings.sample_rate),
            "telephone_share": float(cfg.data.telephone_share)}


def _has_timing(data: CorpusData, rows: np.ndarray) -> bool:
    """Timing inputs are used only if training segments had start and end (else they were all zeros)."""
    rows = rows[data.manifest.is_caller[rows]]
    start, end = data.manifest.start_sec[rows], data.manifest.end_sec[rows]
    return bool(len(rows)) and bool(np.isfinite(start).all() and np.isfinite(end).all())


def _verify_encoder(cfg: DictConfig, data: CorpusData) -> None:
    """Re-embed a few cached segments with the encoder rebuilt from config + seed: they must agree."""
    rows = np.flatnonzero(data.manifest.is_caller)[:VERIFY_ROWS]
    specs = audio_specs(data.manifest)
    settings = EmbedSettings.from_config(cfg)
    waves = [read_segment(settings, as_audio_spec(specs[r])) for r in rows]
    verify_rebuilt_embeddings(build_encoder(cfg), waves, data.feats[rows], cfg=cfg)
