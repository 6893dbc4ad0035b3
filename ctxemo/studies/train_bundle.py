"""`ctxemo train`: one model on all callers, ready to use: early stopping and decision thresholds on a
caller-disjoint inner validation split, written as a model bundle (see ctxemo.inference.bundle).

Two-stage: segment embeddings come from the cache (`ctxemo embed`), the context model trains on them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
from omegaconf import DictConfig

from ctxemo.data.datasets import build_call_items
from ctxemo.data.splits import split_inner
from ctxemo.embedding.corpus import CorpusData, audio_specs, load_corpus
from ctxemo.embedding.encode import EmbedSettings, as_audio_spec, read_segment
from ctxemo.evaluation.evaluate import decision_thresholds, evaluate
from ctxemo.inference.bundle import (
    build_encoder,
    save_bundle,
    verify_rebuilt_embeddings,
)
from ctxemo.io import write_json
from ctxemo.runinfo import start_run
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.objective import build_objective
from ctxemo.training.trainers import trainer

VERIFY_ROWS = 4  # segments re-embedded with the rebuilt encoder before the bundle is written


def train_bundle(cfg: DictConfig, run_dir: str | Path, progress: bool = True, *, data: CorpusData | None = None,
                 log=print) -> Path:
    """Train on every caller and write `run_dir/bundle`.

    Args:
        cfg: resolved config (two_stage, or end_to_end: the bundle then carries the encoder's trained weights).
        run_dir: run folder: config.yaml, run.json, inner-validation metrics.json, history.json, bundle/.
        data: manifest + features if already loaded (else `load_corpus`, using the embedding cache).
    Returns:
        The bundle folder.
    Raises:
        CtxemoError: the rebuilt encoder does not reproduce the cached embeddings.
    """
    run_dir = Path(run_dir)
    start_run(run_dir, cfg, command="train")
    data = data if data is not None else load_corpus(cfg, progress=progress)
    manifest, taxonomy = data.manifest, Taxonomy.from_config(cfg.taxonomy)
    fit_rows, val_rows = split_inner(manifest, np.arange(len(manifest)), val_fraction=cfg.cv.inner_val_fraction,
                                     seed=cfg.seed)
    use_operator = cfg.data.use_operator_turns
    items = {name: build_call_items(manifest, data.feats, rows=rows, use_operator_turns=use_operator)
             for name, rows in (("fit", fit_rows), ("val", val_rows))}
    objective, fine_bias = build_objective(cfg, train_items=items["fit"], taxonomy=taxonomy)
    end_to_end = cfg.train.mode == "end_to_end"
    # As one CV fold (fold 0: seed cfg.seed) whose "training folds" are every caller.
    result, score, model = trainer(cfg)(cfg, data, items, taxonomy=taxonomy, objective=objective, fine_bias=fine_bias, fold=0,
                                 fold_dir=run_dir, progress=progress)
    val_scores = score(items["val"])
    thresholds = decision_thresholds(val_scores, taxonomy, tune=cfg.cv.tune_thresholds)
    val_metrics = evaluate(val_scores, taxonomy=taxonomy, binary_threshold=thresholds.binary,
                           fine_thresholds=thresholds.fine)
    if not cfg.data.features and not end_to_end:
        _verify_encoder(cfg, data)
    info: Dict = {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                  "n_fit_calls": len(items["fit"]), "n_val_calls": len(items["val"]),
                  "inner_val_binary_f1": val_metrics["binary"].get("f1")}
    model.cpu()
    # End-to-end: the bundle carries the encoder's trained weights (adapters, pooling) next to the context model.
    call_model, encoder = (model.call_model, model.encoder) if end_to_end else (model, None)
    bundle = save_bundle(run_dir / "bundle", cfg=cfg, model=call_model, thresholds=thresholds,
                         d_in=encoder.output_dim if end_to_end else data.feats.shape[1], encoder=encoder,
                         time_features_used=_has_timing(data, fit_rows), train_info=info)
    write_json(run_dir / "history.json", result.history)
    # Inner-validation figures: what early stopping and thresholds saw; not an estimate of test performance.
    write_json(run_dir / "metrics.json", {"split": "inner_validation", **val_metrics, **info,
                                          "thresholds": {"binary": thresholds.binary,
                                                         "fine": None if thresholds.fine is None
                                                         else [float(v) for v in thresholds.fine]}})
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    log(f"bundle written to {bundle} (best epoch {result.best_epoch}, inner-validation binary F1 "
        f"{val_metrics['binary'].get('f1', float('nan')):.3f})")
    return bundle


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
