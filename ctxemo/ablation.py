"""Ablations: several arms (each a list of key=value overrides on one base config), all on the same
caller-grouped folds, compared with a paired test against a reference arm.

A rerun skips finished arm-folds, so a killed ablation resumes where it stopped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from ctxemo import distributed
from ctxemo.config import load_config
from ctxemo.errors import ConfigError
from ctxemo.experiment import HEADLINE, CorpusData, load_corpus, run_cv
from ctxemo.io import write_json, write_text
from ctxemo.metrics import paired_test
from ctxemo.report import comparison_markdown, print_comparison, write_csv
from ctxemo.report_run import finish_comparison
from ctxemo.runinfo import start_run


def arms_from_config(cfg: DictConfig) -> Dict[str, List[str]]:
    arms = {name: list(overrides) for name, overrides in cfg.ablation.arms.items()}
    if len(arms) < 2:
        raise ConfigError("config key 'ablation.arms' needs at least two arms (name: [key=value, ...])")
    reference = cfg.ablation.reference or next(iter(arms))
    if reference not in arms:
        raise ConfigError(f"config key 'ablation.reference' = {reference!r} is not an arm; arms: {list(arms)}")
    return arms


def _data_key(cfg: DictConfig) -> str:
    """Arms that agree on data and encoder share one loaded corpus (and one embedding pass)."""
    return OmegaConf.to_yaml(OmegaConf.create({"data": cfg.data, "encoder": cfg.encoder, "seed": cfg.seed}))


def run_ablation(cfg: DictConfig, run_dir: Path, *, progress: bool = True, log=print) -> Dict:
    """Run every arm's CV on shared folds and write the comparison (summary.json/.csv/.md).

    Returns:
        {"reference", "metrics", "arms": {arm: summary}, "paired": {arm: {metric: paired_test}}}.
    """
    run_dir = Path(run_dir)
    arms = arms_from_config(cfg)
    reference = cfg.ablation.reference or next(iter(arms))
    folds_path = run_dir / "folds.json"
    loaded: Dict[str, CorpusData] = {}
    summaries: Dict[str, Dict] = {}
    for arm, overrides in arms.items():
        arm_cfg = load_config(overrides=overrides, base=cfg)
        key = _data_key(arm_cfg)
        if key not in loaded:
            loaded[key] = load_corpus(arm_cfg, cache_root=Path(cfg.out_dir) / "cache", progress=progress)
        main = distributed.is_main()  # under torchrun, other ranks train alongside and write nothing
        arm_dir = start_run(run_dir / arm, arm_cfg, command="ablate-arm") if main else run_dir / arm
        if main:
            log(f"[ablate] arm {arm!r}: {' '.join(overrides) or '(base config)'}")
        summaries[arm] = run_cv(arm_cfg, arm_dir, data=loaded[key], folds_path=folds_path,
                                progress=progress and main)
    if not distributed.is_main():
        return {"reference": reference, "arms": summaries}
    result = write_comparison(run_dir, summaries, reference=reference, log=log)
    return finish_comparison(run_dir, result, log=log)


def write_comparison(run_dir: Path, summaries: Dict[str, Dict], *, reference: str, log=print,
                     metrics: Optional[List[str]] = None) -> Dict:
    """Paired tests vs `reference` on the per-fold values; writes summary.json, summary.csv, summary.md."""
    metrics = metrics or [m for m in HEADLINE if m in summaries[reference]]
    paired = {
        arm: {name: paired_test(summaries[reference][name]["folds"], summary[name]["folds"])
              for name in summaries[reference] if name in summary}
        for arm, summary in summaries.items() if arm != reference
    }
    result = {"reference": reference, "metrics": metrics, "arms": summaries, "paired": paired}
    write_json(run_dir / "summary.json", result)
    write_text(run_dir / "summary.md", comparison_markdown(summaries, paired, reference=reference, metrics=metrics))
    write_csv(run_dir / "summary.csv", ["arm", "metric", "mean", "std", "mean_diff_vs_ref", "p_ttest", "p_wilcoxon"],
              [[arm, name, s["mean"], s["std"],
                paired.get(arm, {}).get(name, {}).get("mean_diff", ""),
                paired.get(arm, {}).get(name, {}).get("p_ttest", ""),
                paired.get(arm, {}).get(name, {}).get("p_wilcoxon", "")]
               for arm, summary in summaries.items() for name, s in summary.items()])
    log(print_comparison(summaries, paired, reference=reference, metrics=metrics))
    return result
