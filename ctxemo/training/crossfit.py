"""A fold's model from its training callers, the way every study builds it: inner validation, seed
ensembles, out-of-fold predictions for thresholds, and the smoothing route's second stage.

Why: with few callers a single inner split holds out one or two callers, and they alone pick the best
epoch and every threshold (thresholds of 0.02 and 0.735 were seen on EmoDB, test F1 0 at AUROC 0.76).
With `cv.inner_folds: K` the training callers are cut into K caller-disjoint groups; model k trains on the
other groups and early-stops on group k, so every training caller is predicted once by a model that never
saw it. Thresholds (and the smoother) are fitted on those pooled out-of-fold predictions, and the test
fold is scored with the average of the K models' probabilities (`train.ensemble: E` trains E seeds per
group, averaged too). With K = 0 and E = 1 this is exactly one model with one inner split.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ctxemo.data.datasets import CallItem, build_call_items
from ctxemo.data.splits import caller_folds, rows_of_callers, split_inner
from ctxemo.embedding.corpus import CorpusData
from ctxemo.errors import ConfigError
from ctxemo.evaluation.scoring import SegmentScores
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.calibration import TemperatureScaler, fit_calibration
from ctxemo.training.loop import TrainedModel
from ctxemo.training.objective import build_objective
from ctxemo.training.smoothing import PosteriorSmoother
from ctxemo.training.trainers import trainer

# Seeds of the members: member (group k, ensemble e) trains from cfg.seed + SEED_STRIDE_E * e + SEED_STRIDE_K * k.
SEED_STRIDE_K, SEED_STRIDE_E = 100, 1000


@dataclass
class FoldModel:
    """What a fold's training produced."""

    oof: SegmentScores  # inner-validation predictions: each training caller by models that never saw it
    score: Callable[[Sequence[CallItem]], SegmentScores]  # calls -> the members' averaged (smoothed) scores
    members: List[TrainedModel]
    info: Dict = field(default_factory=dict)  # best epochs, epochs run, call counts
    smoother: Optional[PosteriorSmoother] = None
    calibrator: Optional[TemperatureScaler] = None  # train.calibrate: temperature


def average_scores(parts: Sequence[SegmentScores]) -> SegmentScores:
    """Mean probabilities of several models' scores of the same segments (same rows, same order)."""
    first = parts[0]
    for other in parts[1:]:
        if not np.array_equal(other.rows, first.rows):
            raise ValueError("ensemble members scored different segments")
    if len(parts) == 1:
        return first
    return SegmentScores(first.rows, np.mean([p.p_negative for p in parts], axis=0),
                         np.mean([p.p_fine for p in parts], axis=0), first.negative, first.fine)


def concat_scores(parts: Sequence[SegmentScores]) -> SegmentScores:
    if len(parts) == 1:
        return parts[0]
    return SegmentScores(*(np.concatenate([getattr(p, f) for p in parts])
                           for f in ("rows", "p_negative", "p_fine", "negative", "fine")))


def inner_splits(cfg: DictConfig, data: CorpusData, train_rows: np.ndarray, *, seed: int
                 ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(fit rows, validation rows) per inner fold, caller-disjoint, all inside `train_rows`."""
    manifest = data.manifest
    k = int(cfg.cv.inner_folds)
    if k < 2:
        return [split_inner(manifest, train_rows, val_fraction=cfg.cv.inner_val_fraction, seed=seed)]
    caller_rows = train_rows[manifest.is_caller[train_rows]]
    groups = [manifest.caller_id[r] for r in caller_rows]
    k = min(k, len(set(groups)))  # a fold with fewer callers than K: one caller per inner fold
    if k < 2:
        raise ConfigError(f"config key 'cv.inner_folds' = {cfg.cv.inner_folds}: cross-fitting needs at least 2 "
                          "training callers, this fold has one; use cv.inner_folds=0")
    folds = caller_folds(groups, manifest.label_matrix()[caller_rows], n_folds=k, seed=seed)
    out = []
    for fold in folds:
        val_callers = {groups[i] for i in fold}
        fit_callers = set(groups) - val_callers
        out.append((rows_of_callers(manifest, fit_callers), rows_of_callers(manifest, val_callers)))
    return out


def warn_if_no_positives(manifest, splits: Sequence[Tuple[np.ndarray, np.ndarray]], *, fold: int) -> int:
    """Warn (and count) inner validation splits whose callers have no negative segment: early stopping
    then has no score to follow (best epoch 0) and tuned thresholds fall back to 0.5."""
    empty = [k for k, (_, val_rows) in enumerate(splits)
             if not manifest.negative[val_rows[manifest.is_caller[val_rows]]].any()]
    if empty:
        warnings.warn(
            f"fold {fold}: {len(empty)} of {len(splits)} inner validation split(s) hold no negative caller segment: "
            "early stopping has nothing to score and the binary threshold stays 0.5. Give more calls, or "
            "cv.inner_folds=K (cross-fitting), or a larger cv.inner_val_fraction", stacklevel=2)
    return len(empty)


def _member_cfg(cfg: DictConfig, seed: int) -> DictConfig:
    return cfg if seed == cfg.seed else OmegaConf.merge(cfg, {"seed": seed})


def train_fold_model(cfg: DictConfig, data: CorpusData, train_rows: np.ndarray, *, taxonomy: Taxonomy, fold: int,
                     fold_dir: Path, progress: bool = True) -> FoldModel:
    """Train every member of the fold on its inner split, collect the out-of-fold predictions, and fit the
    smoother when `context.kind: smooth`. Member checkpoints go under `fold_dir` (a rerun resumes them)."""
    splits = inner_splits(cfg, data, train_rows, seed=cfg.seed + fold)
    warn_if_no_positives(data.manifest, splits, fold=fold)
    n_ensemble = int(cfg.train.ensemble)
    single = len(splits) == 1 and n_ensemble == 1
    members, oof_parts, best_epochs, epochs_run, n_fit, n_val = [], [], [], [], [], []
    for k, (fit_rows, val_rows) in enumerate(splits):
        items = {name: build_call_items(data.manifest, data.feats, rows=rows,
                                        use_operator_turns=cfg.data.use_operator_turns)
                 for name, rows in (("fit", fit_rows), ("val", val_rows))}
        objective, fine_bias = build_objective(cfg, train_items=items["fit"], taxonomy=taxonomy)
        val_runs = []
        for e in range(n_ensemble):
            member_cfg = _member_cfg(cfg, cfg.seed + SEED_STRIDE_E * e + SEED_STRIDE_K * k)
            member_dir = fold_dir if single else fold_dir / f"member{k}-{e}"
            trained = trainer(member_cfg)(member_cfg, data, items, taxonomy=taxonomy, objective=objective,
                                          fine_bias=fine_bias, fold=fold, fold_dir=member_dir, progress=progress)
            members.append(trained)
            val_runs.append(trained.score(items["val"]))
            best_epochs.append(trained.result.best_epoch)
            epochs_run.append(len(trained.result.history))
        oof_parts.append(average_scores(val_runs))
        n_fit.append(len(items["fit"]))
        n_val.append(len(items["val"]))
    oof = concat_scores(oof_parts)

    def ensemble_score(calls: Sequence[CallItem]) -> SegmentScores:
        return average_scores([m.score(calls) for m in members])

    smoother = None
    score = ensemble_score
    if cfg.context.kind == "smooth":
        smoother = PosteriorSmoother(taxonomy, causal=bool(cfg.context.causal))
        smoother.fit(oof, data.manifest)
        oof = smoother.apply(oof, data.manifest)

        def score(calls: Sequence[CallItem]) -> SegmentScores:
            return smoother.apply(ensemble_score(calls), data.manifest)

    # Calibration last: it rescales the probabilities the fold finally outputs (smoothed or not), fitted on
    # the same out-of-fold rows the thresholds are then tuned on.
    calibrator = fit_calibration(str(cfg.train.calibrate), oof)
    if calibrator is not None:
        oof = calibrator.apply_scores(oof)
        uncalibrated = score

        def score(calls: Sequence[CallItem]) -> SegmentScores:
            return calibrator.apply_scores(uncalibrated(calls))

    info = {"best_epoch": best_epochs[0] if single else best_epochs, "epochs_run": epochs_run[0] if single else epochs_run,
            "n_fit_calls": n_fit[0] if single else n_fit, "n_val_calls": n_val[0] if single else n_val,
            "n_members": len(members), "n_inner_folds": len(splits)}
    if calibrator is not None:
        info["temperature"] = calibrator.temperature
    return FoldModel(oof=oof, score=score, members=members, info=info, smoother=smoother, calibrator=calibrator)


def discard_checkpoints(fold_dir: Path) -> None:
    """Delete the members' resume checkpoints once a fold's (or a bundle's) results are written."""
    for path in [fold_dir / "checkpoint.pt", *fold_dir.glob("member*/checkpoint.pt")]:
        path.unlink(missing_ok=True)
    for member_dir in fold_dir.glob("member*"):
        if member_dir.is_dir() and not any(member_dir.iterdir()):
            member_dir.rmdir()
