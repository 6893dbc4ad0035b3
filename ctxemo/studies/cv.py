"""Cross-validation of one configuration: caller-grouped folds, an inner validation split of the
training callers for early stopping and thresholds, and per-fold metrics + predictions.

The test fold is touched exactly once per fold, after training and threshold tuning are done.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from omegaconf import DictConfig
from safetensors.torch import save_file

from ctxemo.data.datasets import CallItem, build_call_items
from ctxemo.data.manifest import Manifest
from ctxemo.data.splits import (
    fold_prevalence,
    load_folds,
    make_folds,
    save_folds,
    split_inner,
)
from ctxemo.embedding.corpus import CorpusData, load_corpus
from ctxemo.evaluation.evaluate import HEADLINE, decision_thresholds, evaluate, headline
from ctxemo.evaluation.metrics import (
    summarize_folds,
)
from ctxemo.io import atomic_path, read_json, write_json
from ctxemo.reports.tables import write_predictions, write_summary_tables
from ctxemo.taxonomy import Taxonomy
from ctxemo.training import distributed
from ctxemo.training.objective import build_objective
from ctxemo.training.trainers import trainer

# ----------------------------------------------------------------------------- folds


def get_folds(manifest: Manifest, path: Path, *, n_folds: int, seed: int) -> List[np.ndarray]:
    """Folds saved at `path` if present (so every arm and every resume uses the same), else new ones."""
    if path.is_file():
        return load_folds(path, manifest.caller_id)
    folds = make_folds(manifest, n_folds=n_folds, seed=seed)  # deterministic: every rank gets the same
    if distributed.is_main():
        save_folds(path, folds, manifest.caller_id)
    return folds


# ----------------------------------------------------------------------------- one fold


def fold_items(cfg: DictConfig, data: CorpusData, *, fold: int, test_rows: np.ndarray) -> Dict[str, List[CallItem]]:
    """Calls of the fold: "fit" and "val" (caller-disjoint, both from the training folds) and "test"."""
    manifest = data.manifest
    train_rows = np.setdiff1d(np.arange(len(manifest)), test_rows)
    fit_rows, val_rows = split_inner(manifest, train_rows, val_fraction=cfg.cv.inner_val_fraction,
                                     seed=cfg.seed + fold)
    return {name: build_call_items(manifest, data.feats, rows=rows, use_operator_turns=cfg.data.use_operator_turns)
            for name, rows in (("fit", fit_rows), ("val", val_rows), ("test", test_rows))}


def run_fold(cfg: DictConfig, data: CorpusData, *, fold: int, test_rows: np.ndarray, fold_dir: Path,
             progress: bool = True) -> Dict:
    """Train on the other folds' callers (inner split for early stopping), tune thresholds on the inner
    validation callers, then score the test fold once. Writes metrics.json, predictions.csv, model."""
    manifest, taxonomy = data.manifest, Taxonomy.from_config(cfg.taxonomy)
    items = fold_items(cfg, data, fold=fold, test_rows=test_rows)
    objective, fine_bias = build_objective(cfg, train_items=items["fit"], taxonomy=taxonomy)
    result, score, _ = trainer(cfg)(cfg, data, items, taxonomy=taxonomy, objective=objective, fine_bias=fine_bias, fold=fold,
                             fold_dir=fold_dir, progress=progress)
    val_scores = score(items["val"])
    thresholds = decision_thresholds(val_scores, taxonomy, tune=cfg.cv.tune_thresholds)
    binary_threshold, fine_thresholds = thresholds.binary, thresholds.fine
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
