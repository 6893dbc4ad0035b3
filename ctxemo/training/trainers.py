
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List

import torch
from omegaconf import DictConfig

from ctxemo.config import BASELINE_MODES
from ctxemo.data.datasets import CallItem
from ctxemo.data.splits import callers_of, rows_of_callers
from ctxemo.data.windows import epoch_windows
from ctxemo.device import resolve_device
from ctxemo.embedding.corpus import CorpusData
from ctxemo.evaluation.scoring import score_items
from ctxemo.models.call_model import build_call_model, feature_stats
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.loop import TrainedModel, fit


def train_two_stage(cfg: DictConfig, data: CorpusData, items: Dict[str, List[CallItem]], *, taxonomy: Taxonomy,
                    objective, fine_bias, fold: int, fold_dir: Path, progress: bool) -> TrainedModel:
    """Context stage + heads on the cached segment embeddings of the fit calls."""
    # Feature statistics over every row of the fit callers (operator turns included).
    fit_rows = rows_of_callers(data.manifest, callers_of(data.manifest, items["fit"]))
    torch.manual_seed(cfg.seed + fold)
    model = build_call_model(cfg, d_in=data.feats.shape[1], taxonomy=taxonomy, fine_bias=fine_bias,
                             train_stats=feature_stats(data.feats, fit_rows))
    window, overlap = cfg.context.window, cfg.context.window_overlap
    # With context windows, training sees the same windows of `context.window` segments that validation, test,
    # predict and live scoring use (the tiling shifts every epoch), not whole calls the model never scores.
    epoch_items = (lambda generator: epoch_windows(items["fit"], window=window, generator=generator)) if window else None
    result = fit(model, train_items=items["fit"], val_items=items["val"], objective=objective, taxonomy=taxonomy,
                 cfg_train=cfg.train, seed=cfg.seed + fold, window=window, window_overlap=overlap,
                 epoch_items=epoch_items,
                 checkpoint_path=fold_dir / "checkpoint.pt", resume=True,
                 log_dir=fold_dir / "tensorboard" if cfg.train.tensorboard else None, progress=progress,
                 desc=f"fold {fold}")
    device = resolve_device(cfg.train.device)
    return TrainedModel(result, lambda calls: score_items(model, calls, window=window, overlap=overlap,
                                                          device=device)[0], model)


def trainer(cfg: DictConfig) -> Callable[..., TrainedModel]:
    """The trainer of `train.mode` (all share one signature): two_stage, end_to_end, or a baseline."""
    if cfg.train.mode in BASELINE_MODES:
        from ctxemo.training.baselines import train_linear_probe, train_prior

        return train_linear_probe if cfg.train.mode == "linear_probe" else train_prior
    if cfg.train.mode == "end_to_end":
        from ctxemo.training.end_to_end import (
            train_end_to_end,  # the encoder stack loads only when needed
        )

        return train_end_to_end
    return train_two_stage
