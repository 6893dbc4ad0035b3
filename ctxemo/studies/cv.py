"""Cross-validation of one configuration: caller-grouped folds, an inner validation split of the
training callers for early stopping and thresholds, and per-fold metrics + predictions.

The test fold is touched exactly once per fold, after training and threshold tuning are done.
"""
from __future__ import annotations

import dataclasses
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
    prevalence_spread,
    regroup_for_protocol,
    save_folds,
)
from ctxemo.embedding.corpus import CorpusData, has_fine_labels, load_corpus
from ctxemo.errors import ConfigError
from ctxemo.evaluation.evaluate import (
    HEADLINE,
    decision_thresholds,
    evaluate,
    headline,
    trivial_metrics,
)
from ctxemo.evaluation.metrics import (
    summarize_folds,
)
from ctxemo.io import atomic_path, read_json, remove_leftover_temps, write_json
from ctxemo.reports.tables import write_predictions, write_summary_tables
from ctxemo.runinfo import RunFolder
from ctxemo.taxonomy import Taxonomy
from ctxemo.training import distributed
from ctxemo.training.crossfit import discard_checkpoints, inner_splits, train_fold_model
from ctxemo.training.workers import resolve_workers, run_jobs

# ----------------------------------------------------------------------------- folds


def get_folds(manifest: Manifest, path: Path, *, n_folds: int, seed: int) -> List[np.ndarray]:
    """Folds saved at `path` if present (so every arm and every resume uses the same), else new ones
    (not saved here: nothing is written before every check, these folds included, has passed)."""
    if path.is_file():
        return load_folds(path, manifest.caller_id)
    return make_folds(manifest, n_folds=n_folds, seed=seed)  # deterministic: every rank gets the same


def selected_folds(cfg: DictConfig, data: CorpusData, folds: List[np.ndarray]) -> List[int]:
    """The folds to run (`cv.only_folds`, or all), once each is known to be possible: a valid number and an
    inner split its training callers allow. Raises before anything is written."""
    selected = list(cfg.cv.only_folds) or list(range(len(folds)))
    if any(not 0 <= k < len(folds) for k in selected):
        raise ConfigError(f"config key 'cv.only_folds' = {selected}: folds are numbered 0 to {len(folds) - 1}")
    for k in selected:
        inner_splits(cfg, data, np.setdiff1d(np.arange(len(data.manifest)), folds[k]), seed=cfg.seed + k)
    return selected


def resume_note(run_dir: Path, folds: List[int]) -> Optional[str]:
    """What a rerun keeps, e.g. "fold(s) 0-2 done earlier (kept); running fold(s) 3-4"; None on a fresh run."""
    done = [k for k in folds if (run_dir / f"fold{k}" / "metrics.json").is_file()]
    if not done:
        return None
    rest = [k for k in folds if k not in done]
    return (f"{run_dir}: fold(s) {_span(done)} done earlier (kept); "
            + (f"running fold(s) {_span(rest)}" if rest else "rebuilding the summary from them"))


def _span(numbers: List[int]) -> str:
    """[0, 1, 2, 4] -> "0-2, 4"."""
    parts, start = [], None
    for i, k in enumerate(numbers):
        start = k if start is None else start
        if i + 1 == len(numbers) or numbers[i + 1] != k + 1:
            parts.append(str(k) if k == start else f"{start}-{k}")
            start = None
    return ", ".join(parts)


# ----------------------------------------------------------------------------- one fold


def run_fold(cfg: DictConfig, data: CorpusData, *, fold: int, test_rows: np.ndarray, fold_dir: Path,
             progress: bool = True) -> Dict:
    """Train on the other folds' callers (inner validation for early stopping: one split or cross-fitting,
    see ctxemo.training.crossfit), tune thresholds on the inner out-of-fold predictions, then score the
    test fold once. Writes metrics.json, predictions.csv, model.safetensors (and smoother.json, calibration.json)."""
    manifest, taxonomy = data.manifest, Taxonomy.from_config(cfg.taxonomy)
    train_rows = np.setdiff1d(np.arange(len(manifest)), test_rows)
    model = train_fold_model(cfg, data, train_rows, taxonomy=taxonomy, fold=fold, fold_dir=fold_dir,
                             progress=progress)
    thresholds = decision_thresholds(model.oof, taxonomy, tune=cfg.cv.tune_thresholds)
    binary_threshold, fine_thresholds = thresholds.binary, thresholds.fine
    test_calls = build_call_items(manifest, data.feats, rows=test_rows, use_operator_turns=cfg.data.use_operator_turns)
    test_scores = model.score(test_calls)
    fine_labelled = has_fine_labels(cfg, manifest)
    metrics = evaluate(test_scores, taxonomy=taxonomy, binary_threshold=binary_threshold,
                       fine_thresholds=fine_thresholds, fine_labelled=fine_labelled)
    train_callers = train_rows[manifest.is_caller[train_rows]]
    metrics["trivial"] = trivial_metrics(test_scores, taxonomy=taxonomy,
                                         train_negative_share=float(manifest.negative[train_callers].mean()),
                                         train_fine_share=manifest.fine[train_callers].mean(axis=0),
                                         fine_labelled=fine_labelled)
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
    if model.calibrator is not None:
        write_json(fold_dir / "calibration.json", model.calibrator.state())
    write_predictions(fold_dir / "predictions.csv", test_scores, manifest=manifest, fold=fold,
                      binary_threshold=binary_threshold, fine_thresholds=fine_thresholds)
    histories = [m.result.history for m in model.members]
    write_json(fold_dir / "history.json", histories[0] if len(histories) == 1 else histories)
    # metrics.json last: its presence marks the fold finished (a resumed run skips it).
    write_json(fold_dir / "metrics.json", metrics)
    discard_checkpoints(fold_dir)  # no longer needed once the fold is done
    remove_leftover_temps(fold_dir)  # an earlier, killed attempt's half-written files
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
            folder: Optional[RunFolder] = None, progress: bool = True, log=print) -> CVPlan:
    """Load the data (unless given), fix and check the folds, write their prevalences; trains nothing.

    folder: the run folder's guard (`ctxemo cv`): checks the inputs before they are embedded and writes
    config.yaml and run.json once the folds are known to be possible. None: the caller did that.
    """
    run_dir = Path(run_dir)
    distributed.init_from_env()  # under torchrun: join the process group (a no-op otherwise)
    if data is None:
        data = load_corpus(cfg, progress=progress, check_inputs=folder.check_inputs if folder else None)
    data = dataclasses.replace(data, manifest=regroup_for_protocol(data.manifest, cfg.cv.protocol))
    has_fine_labels(cfg, data.manifest)  # refuses, before any training, a fine head with no fine labels
    folds_path = folds_path or run_dir / "folds.json"
    folds = get_folds(data.manifest, folds_path, n_folds=cfg.cv.folds, seed=cfg.seed)
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    caller_rows = data.manifest.is_caller
    selected = selected_folds(cfg, data, folds)
    if distributed.is_main():  # every check has passed: the first writes
        if folder is not None:
            folder.start(command="cv", inputs=data.inputs)
        if not folds_path.is_file():
            save_folds(folds_path, folds, data.manifest.caller_id)
        prevalence = fold_prevalence([f[caller_rows[f]] for f in folds], data.manifest.label_matrix(),
                                     ["negative", *taxonomy.labels], groups=data.manifest.caller_id)
        write_json(run_dir / "fold_prevalence.json", prevalence)
        if progress:
            spread = prevalence_spread(prevalence)
            log(f"[cv] folds' negative share {[round(f['positive_share']['negative'], 3) for f in prevalence]}: "
                f"spread (std) binary {spread['binary_spread']:.3f}, fine labels {spread['fine_spread']:.3f}")
        note = resume_note(run_dir, selected)
        if note:
            log(f"[resume] {note}")
    return CVPlan(cfg, run_dir, data, folds, selected)


def run_plans(plans: Sequence[CVPlan], *, workers: int, progress: bool = True, log=print) -> List[Dict]:
    """Every unfinished fold of every plan (e.g. an ablation's arms) as one pool of jobs on `workers`
    processes (training/workers.py); each plan's summary is written as soon as its last fold is done
    (serially: before the next arm starts, so a killed ablation keeps its finished arms). Finished folds
    are read, not rerun."""
    jobs, owners = [], []
    for p, plan in enumerate(plans):
        for k in plan.selected:
            if not plan.finished(k):
                # Bars only in the serial loop: parallel bars would interleave.
                jobs.append(partial(_fold_job, plan, k, progress=progress and workers <= 1))
                owners.append((p, k))

    if workers > 1:  # longest first: a costly fold started last would leave the other workers idle
        order = sorted(range(len(jobs)), key=lambda i: -estimated_cost(plans[owners[i][0]], owners[i][1]))
        jobs, owners = [jobs[i] for i in order], [owners[i] for i in order]

    computed: Dict = {}
    remaining = [sum(owner == p for owner, _ in owners) for p in range(len(plans))]
    summaries: Dict[int, Dict] = {}

    def finish(p: int) -> None:
        plan = plans[p]
        per_fold = [headline(computed[(p, k)] if (p, k) in computed
                             else read_json(plan.run_dir / f"fold{k}" / "metrics.json")) for k in plan.selected]
        summaries[p] = summarize_folds(per_fold)
        if distributed.is_main():
            write_json(plan.run_dir / "summary.json", summaries[p])
            write_summary_tables(plan.run_dir, summaries[p], metrics=HEADLINE)

    def on_done(i: int, metrics: Dict) -> None:
        p, k = owners[i]
        computed[(p, k)] = metrics
        remaining[p] -= 1
        if progress and workers > 1 and distributed.is_main():  # parallel runs have no bars: a line per fold
            log(f"[cv] {plans[p].run_dir.name} fold {k} done ({len(computed)}/{len(jobs)} on {workers} workers)")
        if remaining[p] == 0:
            finish(p)

    for p in range(len(plans)):
        if remaining[p] == 0:
            finish(p)
    run_jobs(jobs, workers=workers, on_done=on_done)
    return [summaries[p] for p in range(len(plans))]


# Relative training cost per training row of each arm kind, for ordering parallel jobs only (results do not
# depend on it). Measured in bench_context.py: the contextual transformer's 5 folds took 71.9 s against the
# isolated arm's 28.7 s; smoothing and call_norm train the isolated model plus a cheap step.
_ARM_COST = {"transformer": 2.5}
_END_TO_END_COST = 100.0  # an encoder in the loop dwarfs any context model


def estimated_cost(plan: CVPlan, k: int) -> float:
    """A fold's expected training time in arbitrary units: its training rows times its arm's cost."""
    per_row = _END_TO_END_COST if plan.cfg.train.mode == "end_to_end" else _ARM_COST.get(plan.cfg.context.kind, 1.0)
    return per_row * (len(plan.data.manifest) - len(plan.folds[k]))


def _fold_job(plan: CVPlan, k: int, *, progress: bool) -> Dict:
    return run_fold(plan.cfg, plan.data, fold=k, test_rows=plan.folds[k], fold_dir=plan.run_dir / f"fold{k}",
                    progress=progress)


def plan_workers(cfg: DictConfig) -> int:
    """How many processes run the folds (`cv.workers`, see ctxemo.training.workers)."""
    return resolve_workers(int(cfg.cv.workers), device=str(cfg.train.device))


def run_cv(cfg: DictConfig, run_dir: Path, *, data: Optional[CorpusData] = None, folds_path: Optional[Path] = None,
           folder: Optional[RunFolder] = None, progress: bool = True, log=print) -> Dict:
    """K-fold caller-grouped CV of one configuration; finished folds are skipped on a rerun.

    Args:
        run_dir: output folder (per-fold subfolders, summary.{json,csv,md}).
        data: manifest + features, if already loaded (ablations share one).
        folds_path: folds file shared between arms (default run_dir/folds.json).
        folder: the run folder's guard (see plan_cv).
    Returns:
        summary dict {metric: {mean, std, folds}}.
    """
    plan = plan_cv(cfg, run_dir, data=data, folds_path=folds_path, folder=folder, progress=progress, log=log)
    return run_plans([plan], workers=plan_workers(cfg), progress=progress, log=log)[0]
