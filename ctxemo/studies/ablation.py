"""Ablations: several arms (each a list of key=value overrides on one base config), all on the same
caller-grouped folds, compared with a paired test against a reference arm.

A rerun skips finished arm-folds, so a killed ablation resumes where it stopped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from ctxemo.config import BASELINES, load_config
from ctxemo.embedding.corpus import CorpusData, load_corpus
from ctxemo.errors import ConfigError
from ctxemo.reports.comparison import finish_comparison, write_comparison
from ctxemo.runinfo import RunFolder, start_run
from ctxemo.studies.cv import (
    get_folds,
    plan_cv,
    plan_workers,
    run_plans,
    selected_folds,
)
from ctxemo.training import distributed


def arms_from_config(cfg: DictConfig) -> Dict[str, List[str]]:
    arms = {name: list(overrides) for name, overrides in cfg.ablation.arms.items()}
    if not arms:
        raise ConfigError("config key 'ablation.arms' is empty: give at least one arm (name: [key=value, ...])")
    reference = cfg.ablation.reference or next(iter(arms))
    if reference not in arms:
        raise ConfigError(f"config key 'ablation.reference' = {reference!r} is not an arm; arms: {list(arms)}")
    # The baselines run on the reference arm's settings (same data, folds, inner protocol, thresholds).
    for name in cfg.ablation.baselines:
        if name not in arms:
            arms[name] = [*arms[reference], *BASELINES[name]]
    if len(arms) < 2:
        raise ConfigError("config key 'ablation.arms' needs at least two arms (name: [key=value, ...]), "
                          "counting the baselines of 'ablation.baselines'")
    return arms


def _data_key(cfg: DictConfig) -> str:
    """Arms that agree on data and encoder share one loaded corpus (and one embedding pass)."""
    # End-to-end arms load no embeddings (the encoder trains on the audio); every other mode needs them.
    return OmegaConf.to_yaml(OmegaConf.create({"data": cfg.data, "encoder": cfg.encoder, "seed": cfg.seed,
                                               "embeddings": cfg.train.mode != "end_to_end"}))


def run_ablation(cfg: DictConfig, run_dir: Path, *, folder: Optional[RunFolder] = None, command: str = "ablate",
                 progress: bool = True, log=print) -> Dict:
    """Run every arm's CV on shared folds and write the comparison (summary.json/.csv/.md).

    Args:
        folder: the study folder's guard: the first arm's inputs are checked before they are embedded, and
            nothing is written before the folds are known to be possible. None: the caller wrote the folder.
        command: what run.json records (`ablate`, `demo`).
    Returns:
        {"reference", "metrics", "arms": {arm: summary}, "paired": {arm: {metric: paired_test}}}.
    """
    run_dir = Path(run_dir)
    arms = arms_from_config(cfg)
    reference = cfg.ablation.reference or next(iter(arms))
    folds_path = run_dir / "folds.json"
    arm_cfgs = {arm: load_config(overrides=overrides, base=cfg) for arm, overrides in arms.items()}
    loaded: Dict[str, CorpusData] = {}
    main = distributed.is_main()  # under torchrun, other ranks train alongside and write nothing

    def corpus(arm_cfg: DictConfig, check_inputs=None) -> CorpusData:
        key = _data_key(arm_cfg)
        if key not in loaded:
            loaded[key] = load_corpus(arm_cfg, cache_root=Path(cfg.out_dir) / "cache", progress=progress,
                                      check_inputs=check_inputs)
        return loaded[key]

    if folder is not None:
        first_cfg = next(iter(arm_cfgs.values()))
        first = corpus(first_cfg, folder.check_inputs)
        # The folds and their inner splits possible? (raises if not, before anything is written)
        selected_folds(first_cfg, first, get_folds(first.manifest, folds_path, n_folds=cfg.cv.folds, seed=cfg.seed))
        if main:
            folder.start(command=command, inputs=first.inputs)
    plans = []
    for arm, arm_cfg in arm_cfgs.items():
        data = corpus(arm_cfg)
        arm_dir = start_run(run_dir / arm, arm_cfg, command="ablate-arm", inputs=data.inputs) if main else run_dir / arm
        if main:
            log(f"[ablate] arm {arm!r}: {' '.join(arms[arm]) or '(base config)'}")
        plans.append(plan_cv(arm_cfg, arm_dir, data=data, folds_path=folds_path, progress=progress and main, log=log))
    # Every arm's folds in one pool of workers (cv.workers), so that no core waits for a slow arm.
    workers = min(plan_workers(plan.cfg) for plan in plans)
    summaries = dict(zip(arms, run_plans(plans, workers=workers, progress=progress and main, log=log)))
    if not distributed.is_main():
        return {"reference": reference, "arms": summaries}
    result = write_comparison(run_dir, summaries, reference=reference, log=log)
    return finish_comparison(run_dir, result, log=log)
