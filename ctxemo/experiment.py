"""Cross-validation of one configuration: caller-grouped folds, an inner validation split of the
training callers for early stopping and thresholds, and per-fold metrics + predictions.

The test fold is touched exactly once per fold, after training and threshold tuning are done.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from safetensors.torch import save_file

from ctxemo import distributed
from ctxemo.data.datasets import CallItem, build_call_items
from ctxemo.data.features import load_features
from ctxemo.data.manifest import Manifest, load_manifest
from ctxemo.data.splits import caller_folds, fold_prevalence, inner_split, load_folds, save_folds
from ctxemo.errors import ConfigError, CtxemoError
from ctxemo.io import atomic_path, read_json, write_json
from ctxemo.metrics import binary_metrics, fine_metrics, flatten_metrics, summarize_folds, tune_binary_threshold, tune_thresholds
from ctxemo.models.model import build_call_model, feature_stats
from ctxemo.objective import build_objective
from ctxemo.report import write_predictions, write_summary_tables
from ctxemo.scoring import SegmentScores, score_items
from ctxemo.taxonomy import Taxonomy
from ctxemo.train import TrainResult, fit, resolve_device

# Headline metrics, in table order. Names are documented in README ("Reading a run folder").
HEADLINE = ["binary_f1", "binary_seed_weighted_f1", "binary_auroc", "fine_weighted_f1", "fine_macro_f1",
            "fine_micro_f1"]


@dataclass
class CorpusData:
    manifest: Manifest
    feats: np.ndarray  # [n, d] float32, row i = manifest row i; d = 0 in end-to-end mode (no cached embeddings)


def load_corpus(cfg: DictConfig, *, cache_root: Optional[Path] = None, progress: bool = True) -> CorpusData:
    """Manifest + segment features: precomputed `.npy` if configured, else the (cached) encoder."""
    if not cfg.data.manifest:
        raise CtxemoError("config key 'data.manifest' is not set (give data.manifest=path/to/manifest.csv)")
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    end_to_end = cfg.train.mode == "end_to_end"
    if end_to_end and cfg.data.features:
        raise ConfigError("config key 'data.features' is set, but train.mode=end_to_end trains the encoder on "
                          "the audio: unset data.features (data.features=null) or use train.mode=two_stage")
    precomputed = bool(cfg.data.features)
    manifest = load_manifest(cfg.data.manifest, taxonomy, require_audio=not precomputed)
    if end_to_end:
        feats = np.zeros((len(manifest), 0), np.float32)  # the encoder embeds the audio while training
    elif precomputed:
        feats = load_features(cfg.data.features, len(manifest))
    else:
        from ctxemo.embed import embed_manifest  # the encoder stack loads only when needed

        cache_root = Path(cache_root) if cache_root is not None else Path(cfg.out_dir) / "cache"
        feats = embed_manifest(cfg, audio_specs(manifest), cache_dir=cache_root, progress=progress)
    return CorpusData(manifest=manifest, feats=feats)


def audio_specs(manifest: Manifest) -> List[tuple]:
    """(path, start_sec | None, end_sec | None) per manifest row, for the embedding stage."""
    def sec(v: float) -> Optional[float]:
        return None if np.isnan(v) else float(v)
    return [(manifest.audio_path(i), sec(manifest.start_sec[i]), sec(manifest.end_sec[i])) for i in range(len(manifest))]


# ----------------------------------------------------------------------------- folds

def make_folds(manifest: Manifest, *, n_folds: int, seed: int) -> List[np.ndarray]:
    """Test rows per fold (all rows of the fold's callers), stratified on caller segments' labels."""
    caller_rows = np.flatnonzero(manifest.is_caller)
    groups = [manifest.caller_id[r] for r in caller_rows]
    folds = caller_folds(groups, manifest.label_matrix()[caller_rows], n_folds=n_folds, seed=seed)
    return [rows_of_callers(manifest, {groups[i] for i in fold}) for fold in folds]


def rows_of_callers(manifest: Manifest, callers: set) -> np.ndarray:
    return np.array([i for i, c in enumerate(manifest.caller_id) if c in callers], dtype=np.int64)


def fold_callers(manifest: Manifest, folds: Sequence[np.ndarray]) -> List[List[str]]:
    return [sorted({manifest.caller_id[r] for r in fold}) for fold in folds]


def get_folds(manifest: Manifest, path: Path, *, n_folds: int, seed: int) -> List[np.ndarray]:
    """Folds saved at `path` if present (so every arm and every resume uses the same), else new ones."""
    if path.is_file():
        return load_folds(path, manifest.caller_id)
    folds = make_folds(manifest, n_folds=n_folds, seed=seed)  # deterministic: every rank gets the same
    if distributed.is_main():
        save_folds(path, folds, manifest.caller_id)
    return folds


def split_inner(manifest: Manifest, train_rows: np.ndarray, *, val_fraction: float, seed: int):
    """Caller-disjoint (fit rows, validation rows) inside the training callers."""
    caller_rows = train_rows[manifest.is_caller[train_rows]]
    groups = np.array(manifest.caller_id, dtype=object)
    fit_rows, val_rows = inner_split(caller_rows, list(groups), manifest.label_matrix(), val_fraction=val_fraction,
                                     seed=seed)
    fit_callers = {groups[r] for r in fit_rows}
    val_callers = {groups[r] for r in val_rows}
    assert not fit_callers & val_callers, "inner split leaked a caller"
    return rows_of_callers(manifest, fit_callers), rows_of_callers(manifest, val_callers)


# ----------------------------------------------------------------------------- one fold

def evaluate(scores: SegmentScores, *, taxonomy: Taxonomy, binary_threshold: float, fine_thresholds) -> Dict:
    """Binary metrics on every scored segment; fine metrics on every segment (multi-label) or on the
    labelled ones (single-label: an unlabelled segment has no class to compare with)."""
    fine_scores = scores if taxonomy.multilabel else scores.subset(scores.fine.sum(1) > 0)
    return {
        "binary": binary_metrics(scores.negative, scores.p_negative, threshold=binary_threshold),
        "fine": fine_metrics(fine_scores.fine if taxonomy.multilabel else fine_scores.fine.argmax(1),
                             fine_scores.p_fine, labels=list(taxonomy.labels), multilabel=taxonomy.multilabel,
                             thresholds=fine_thresholds),
    }


# A trained fold's model as a function: calls -> SegmentScores of their caller segments.
Scorer = Callable[[Sequence[CallItem]], SegmentScores]


class TrainedModel(NamedTuple):
    result: TrainResult
    score: Scorer
    model: torch.nn.Module  # CallModel (two-stage) or EndToEndModel


def fold_items(cfg: DictConfig, data: CorpusData, *, fold: int, test_rows: np.ndarray) -> Dict[str, List[CallItem]]:
    """Calls of the fold: "fit" and "val" (caller-disjoint, both from the training folds) and "test"."""
    manifest = data.manifest
    train_rows = np.setdiff1d(np.arange(len(manifest)), test_rows)
    fit_rows, val_rows = split_inner(manifest, train_rows, val_fraction=cfg.cv.inner_val_fraction,
                                     seed=cfg.seed + fold)
    return {name: build_call_items(manifest, data.feats, rows=rows, use_operator_turns=cfg.data.use_operator_turns)
            for name, rows in (("fit", fit_rows), ("val", val_rows), ("test", test_rows))}


def callers_of(manifest: Manifest, calls: Sequence[CallItem]) -> set:
    return {manifest.caller_id[it.rows[0]] for it in calls}


def train_two_stage(cfg: DictConfig, data: CorpusData, items: Dict[str, List[CallItem]], *, objective,
                    fine_bias, fold: int, fold_dir: Path, progress: bool) -> TrainedModel:
    """Context stage + heads on the cached segment embeddings of the fit calls."""
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    # Feature statistics over every row of the fit callers (operator turns included).
    fit_rows = rows_of_callers(data.manifest, callers_of(data.manifest, items["fit"]))
    torch.manual_seed(cfg.seed + fold)
    model = build_call_model(cfg, d_in=data.feats.shape[1], taxonomy=taxonomy, fine_bias=fine_bias,
                             train_stats=feature_stats(data.feats, fit_rows))
    window, overlap = cfg.context.window, cfg.context.window_overlap
    result = fit(model, train_items=items["fit"], val_items=items["val"], objective=objective, taxonomy=taxonomy,
                 cfg_train=cfg.train, seed=cfg.seed + fold, window=window, window_overlap=overlap,
                 checkpoint_path=fold_dir / "checkpoint.pt", resume=True,
                 log_dir=fold_dir / "tensorboard" if cfg.train.tensorboard else None, progress=progress,
                 desc=f"fold {fold}")
    device = resolve_device(cfg.train.device)
    return TrainedModel(result, lambda calls: score_items(model, calls, window=window, overlap=overlap,
                                                          device=device)[0], model)


def trainer(cfg: DictConfig) -> Callable[..., TrainedModel]:
    """train_two_stage, or train_end_to_end for train.mode=end_to_end (same signature)."""
    if cfg.train.mode == "end_to_end":
        from ctxemo.end_to_end import train_end_to_end  # the encoder stack loads only when needed

        return train_end_to_end
    return train_two_stage


def run_fold(cfg: DictConfig, data: CorpusData, *, fold: int, test_rows: np.ndarray, fold_dir: Path,
             progress: bool = True) -> Dict:
    """Train on the other folds' callers (inner split for early stopping), tune thresholds on the inner
    validation callers, then score the test fold once. Writes metrics.json, predictions.csv, model."""
    manifest, taxonomy = data.manifest, Taxonomy.from_config(cfg.taxonomy)
    items = fold_items(cfg, data, fold=fold, test_rows=test_rows)
    objective, fine_bias = build_objective(cfg, train_items=items["fit"], taxonomy=taxonomy)
    result, score, _ = trainer(cfg)(cfg, data, items, objective=objective, fine_bias=fine_bias, fold=fold,
                             fold_dir=fold_dir, progress=progress)
    val_scores = score(items["val"])
    if cfg.cv.tune_thresholds:
        binary_threshold = tune_binary_threshold(val_scores.negative, val_scores.p_negative)
        fine_thresholds = tune_thresholds(val_scores.fine, val_scores.p_fine) if taxonomy.multilabel else None
    else:
        binary_threshold, fine_thresholds = 0.5, None
    test_scores = score(items["test"])
    metrics = evaluate(test_scores, taxonomy=taxonomy, binary_threshold=binary_threshold,
                       fine_thresholds=fine_thresholds)
    metrics.update(fold=fold, best_epoch=result.best_epoch, epochs_run=len(result.history),
                   n_fit_calls=len(items["fit"]), n_val_calls=len(items["val"]), n_test_calls=len(items["test"]),
                   thresholds={"binary": binary_threshold,
                               "fine": None if fine_thresholds is None else list(map(float, fine_thresholds))})
    if not distributed.is_main():  # every rank scored the full sets; rank 0 writes them
        return metrics
    fold_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(fold_dir / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in result.state_dict.items()}, str(tmp))
    write_predictions(fold_dir / "predictions.csv", test_scores, manifest=manifest, fold=fold,
                      binary_threshold=binary_threshold, fine_thresholds=fine_thresholds)
    write_json(fold_dir / "history.json", result.history)
    # metrics.json last: its presence marks the fold finished (a resumed run skips it).
    write_json(fold_dir / "metrics.json", metrics)
    (fold_dir / "checkpoint.pt").unlink(missing_ok=True)  # no longer needed once the fold is done
    return metrics


def headline(metrics: Dict) -> Dict[str, float]:
    """Flat per-fold scalars, prefixed binary_* and fine_*."""
    flat = {f"binary_{k}": v for k, v in flatten_metrics(metrics["binary"]).items()}
    flat.update({f"fine_{k}": v for k, v in flatten_metrics(metrics["fine"]).items()})
    return flat


def run_cv(cfg: DictConfig, run_dir: Path, *, data: Optional[CorpusData] = None, folds_path: Optional[Path] = None,
           progress: bool = True) -> Dict:
    """K-fold caller-grouped CV of one configuration; finished folds are skipped on a rerun.

    Args:
        run_dir: output folder (per-fold subfolders, summary.{json,csv,md}).
        data: manifest + features, if already loaded (ablations share one).
        folds_path: folds file shared between arms (default run_dir/folds.json).
    Returns:
        summary dict {metric: {mean, std, folds}}.
    """
    run_dir = Path(run_dir)
    distributed.init_from_env()  # under torchrun: join the process group (a no-op otherwise)
    data = data if data is not None else load_corpus(cfg, progress=progress)
    folds = get_folds(data.manifest, folds_path or run_dir / "folds.json", n_folds=cfg.cv.folds, seed=cfg.seed)
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    caller_rows = data.manifest.is_caller
    if distributed.is_main():
        write_json(run_dir / "fold_prevalence.json", fold_prevalence(
            [f[caller_rows[f]] for f in folds], data.manifest.label_matrix(), ["negative", *taxonomy.labels],
            groups=data.manifest.caller_id))
    selected = list(cfg.cv.only_folds) or list(range(len(folds)))
    per_fold = []
    for k in selected:
        fold_dir = run_dir / f"fold{k}"
        if (fold_dir / "metrics.json").is_file():
            metrics = read_json(fold_dir / "metrics.json")
        else:
            metrics = run_fold(cfg, data, fold=k, test_rows=folds[k], fold_dir=fold_dir, progress=progress)
        per_fold.append(headline(metrics))
    summary = summarize_folds(per_fold)
    if distributed.is_main():
        write_json(run_dir / "summary.json", summary)
        write_summary_tables(run_dir, summary, metrics=HEADLINE)
    return summary
