"""Cross-validation of one configuration: caller-grouped folds, an inner validation split of the
training callers for early stopping and thresholds, and per-fold metrics + predictions.

The test fold is touched exactly once per fold, after training and threshold tuning are done.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from omegaconf import DictConfig
from safetensors.torch import save_file

from ctxemo.data.datasets import build_call_items
from ctxemo.data.manifest import Manifest
from ctxemo.data.splits import (
    fold_prevalence,
    load_folds,
    make_folds,
    save_folds,
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
from ctxemo.training.crossfit import discard_checkpoints, train_fold_model
from ctxemo.training.workers import resolve_workers, run_jobs

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


def run_fold(cfg: DictConfig, data: CorpusData, *, fold: int, test_rows: np.ndarray, fold_dir: Path,
             progress: bool = True) -> Dict:
    """Train on the other folds' callers (inner validation for early stopping: one split or cross-fitting,
    see ctxemo.training.crossfit), tune thresholds on the inner out-of-fold predictions, then score the
    test fold once. Writes metrics.json, predictions.csv, model.safetensors (and smoother.json)."""
    manifest, taxonomy = data.manifest, Taxonomy.from_config(cfg.taxonomy)
    train_rows = np.setdiff1d(np.arange(len(manifest)), test_rows)
    model = train_fold_model(cfg, data, train_rows, taxonomy=taxonomy, fold=fold, fold_dir=fold_dir,
                             progress=progress)
    thresholds = decision_thresholds(model.oof, taxonomy, tune=cfg.cv.tune_thresholds)
    binary_threshold, fine_thresholds = thresholds.binary, thresholds.fine
    test_calls = build_call_items(manifest, data.feats, rows=test_rows, use_operator_turns=cfg.data.use_operator_turns)
    test_scores = model.score(test_calls)
    metrics = evaluate(test_scores, taxonomy=taxonomy, binary_threshold=binary_threshold,
                       fine_thresholds=fine_thresholds)
    metrics.update(fold=fold, **model.info, n_test_calls=len(test_calls),
                   thresholds={"binary": binary_threshold,
                               "fine": None if fine_thresholds is None else list(map(float, fine_thresholds))})
    if not distributed.is_main():  # every rank scored the full sets; rank 0 writes them
        return metrics
    fold_dir.mkdir(parents=True, exist_ok=True)
    states = [m.result.state_dict for m in model.members]
    weights = states[0] if len(states) == 1 else {f"member{i}.{k}": v for i, s in enumerate(states) for k, v in s.items()}
    with atomic_path(fold_dir / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
    if model.smoother is not None:
        write_json(fold_dir / "smoother.json", model.smoother.state())
    write_predictions(fold_dir / "predictions.csv", test_scores, manifest=manifest, fold=fold,
                      binary_threshold=binary_threshold, fine_thresholds=fine_thresholds)
    histories = [m.result.history for m in model.members]
    write_json(fold_dir / "history.json", histories[0] if len(histories) == 1 else histories)
    # metrics.json last: its presence marks the fold finished (a resumed run skips it).
    write_json(fold_dir / "metrics.json", metrics)
    discard_checkpoints(fold_dir)  # no longer needed once the fold is done
    return metrics


@dataclass
class CVPlan:
    """One configuration's CV, ready to run: its data, folds and the folds selected (finished or not)."""

    cfg: DictConfig
    run_dir: Path
    data: CorpusData
    folds: List[np.ndarray]
    selected: List[int]

    def finished(self, k: int) -> bool:
        return (self.run_dir / f"fold{k}" / "metrics.json").is_file()


def plan_cv(cfg: DictConfig, run_dir: Path, *, data: Optional[CorpusData] = None, folds_path: Optional[Path] = None,
            progress: bool = True) -> CVPlan:
    """Load the data (unless given), fix the folds and write their prevalences; trains nothing."""
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
    return CVPlan(cfg, run_dir, data, folds, selected)


def run_plans(plans: Sequence[CVPlan], *, workers: int, progress: bool = True) -> List[Dict]:
    """Every unfinished fold of every plan (e.g. an ablation's arms) as one pool of jobs on `workers`
    processes (training/workers.py); each plan's summary is written as soon as its last fold is done (serially:
    before the next arm starts, so a killed ablation keeps its finished arms). Finished folds are read, not rerun."""
    jobs, owners = [], []
    for p, plan in enumerate(plans):
        for k in plan.selected:
            if not plan.finished(k):
                # Bars only in the serial loop: parallel bars would interleave.
                jobs.append(partial(_fold_job, plan, k, progress=progress and workers <= 1))
                owners.append((p, k))

    computed: Dict = {}
    remaining = [sum(owner == p for owner, _ in owners) for p in range(len(plans))]
    summaries: Dict[int, Dict] = {}

    def finish(p: int) -> None:  # as soon as a plan's last fold is done (serially: before the next arm starts)
        plan = plans[p]
        per_fold = [headline(computed[(p, k)] if (p, k) in computed else read_json(plan.run_dir / f"fold{k}" / "metrics.json"))
                    for k in plan.selected]
        summaries[p] = summarize_folds(per_fold)
        if distributed.is_main():
            write_json(plan.run_dir / "summary.json", summaries[p])
            write_summary_tables(plan.run_dir, summaries[p], metrics=HEADLINE)

    def on_done(i: int, metrics: Dict) -> None:
        p, k = owners[i]
        computed[(p, k)] = metrics
        remaining[p] -= 1
        if progress and workers > 1 and distributed.is_main():  # parallel runs have no bars: a line per fold
            done = len(computed)
            print(f"[cv] {plans[p].run_dir.name} fold {k} done ({done}/{len(jobs)} on {workers} workers)", flush=True)
        if remaining[p] == 0:
            finish(p)

    for p in range(len(plans)):
        if remaining[p] == 0:
            finish(p)
    run_jobs(jobs, workers=workers, on_done=on_done)
    return [summaries[p] for p in range(len(plans))]


def _fold_job(plan: CVPlan, k: int, *, progress: bool) -> Dict:
    return run_fold(plan.cfg, plan.data, fold=k, test_rows=plan.folds[k], fold_dir=plan.run_dir / f"fold{k}",
                    progress=progress)


def plan_workers(cfg: DictConfig) -> int:
    """How many processes run the folds (`cv.workers`, see ctxemo.training.workers)."""
    return resolve_workers(int(cfg.cv.workers), device=str(cfg.train.device))


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
    plan = plan_cv(cfg, run_dir, data=data, folds_path=folds_path, progress=progress)
    return run_plans([plan], workers=plan_workers(cfg), progress=progress)[0]
