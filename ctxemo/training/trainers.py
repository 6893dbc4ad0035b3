
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List

import torch
from omegaconf import DictConfig

from ctxemo.data.datasets import CallItem
from ctxemo.data.splits import callers_of, rows_of_callers
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
        from ctxemo.training.end_to_end import (
            train_end_to_end,  # the encoder stack loads only when needed
        )

        return train_end_to_end
    return train_two_stage
