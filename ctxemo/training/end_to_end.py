"""End-to-end mode (train.mode=end_to_end): the speech encoder (LoRA, full or frozen with a trainable
pooling) and the context stage train together on windows of `train.window_segments` consecutive
segments; validation and test embed every segment with the current encoder and score whole calls
exactly as two-stage mode does, so the two modes are evaluated the same way.

What differs from two-stage training, and why:
- Training units are windows, not calls (ctxemo.data.windows): a batch holds batch_calls x K segments
  of audio, which is what fits through an encoder with gradients.
- The context stage standardises its inputs with statistics of the *initial* encoder's embeddings of up
  to STATS_SEGMENTS fit segments; the adapters start as a no-op (LoRA B = 0), so these are the
  statistics the two-stage model would have used, and a small encoder_lr keeps them close.
- Gradient checkpointing (encoder.gradient_checkpointing) trades recomputation for activation memory.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig

from ctxemo.data.datasets import CallBatch, CallItem, collate
from ctxemo.data.windows import epoch_windows
from ctxemo.device import resolve_device
from ctxemo.embedding.corpus import CorpusData, audio_specs
from ctxemo.embedding.encode import (
    PAD_MULTIPLE_SEC,
    AudioSpec,
    EmbedSettings,
    as_audio_spec,
    build_seeded_encoder,
    encode_rows,
    length_buckets,
    pad_segments,
    read_segment,
)
from ctxemo.evaluation.scoring import SegmentScores, score_items
from ctxemo.models.call_model import build_call_model, feature_stats
from ctxemo.models.end_to_end_model import AudioCallInputs, EndToEndModel
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.loop import TrainedModel, fit

STATS_SEGMENTS = 1024  # fit segments embedded once to set the context stage's input statistics


def make_window_batch(units: Sequence[CallItem], device: torch.device, *, cfg: DictConfig,
                      specs: Sequence[AudioSpec]) -> CallBatch:
    """Windows -> a CallBatch whose inputs carry the audio of every real segment (AudioCallInputs)."""
    settings = EmbedSettings.from_config(cfg)
    return window_batch(units, device, cfg=cfg, load=lambda row: read_segment(settings, specs[row]),
                        settings=settings)


def window_batch(units: Sequence[CallItem], device: torch.device, *, cfg: DictConfig,
                 load: Callable[[int], np.ndarray], settings: Optional[EmbedSettings] = None) -> CallBatch:
    """`make_window_batch` with the audio from `load(row)` (a manifest row's mono waveform at
    data.sample_rate): benchmarks/bench_gpu.py feeds synthetic waves through the same batching.
    settings: `EmbedSettings.from_config(cfg)`, when the caller already has them."""
    batch = collate(units, device)
    rows = [int(r) for unit in units for r in unit.rows]  # row-major order of seg_mask's True entries
    sr = int(cfg.data.sample_rate)
    settings = settings or EmbedSettings.from_config(cfg)
    padded, lens = pad_segments(settings, [load(r) for r in rows])
    buckets = length_buckets((lens.double() / sr).tolist(), batch_size=int(cfg.encoder.batch_size),
                             max_batch_sec=float(cfg.encoder.max_batch_sec))
    calls = batch.inputs
    inputs = AudioCallInputs(waves=padded.to(device), wave_lens=lens.to(device), buckets=buckets,
                             seg_mask=calls.seg_mask, role=calls.role, position=calls.position,
                             time_feats=calls.time_feats)
    return batch._replace(inputs=inputs)


def with_embeddings(cfg: DictConfig, model: EndToEndModel, calls: Sequence[CallItem], specs: Sequence[AudioSpec],
                    device: torch.device) -> List[CallItem]:
    """The same calls, their `feats` filled by the model's current encoder (eval mode, no gradients)."""
    rows = np.concatenate([it.rows for it in calls])
    emb = encode_rows(EmbedSettings.from_config(cfg), model.encoder, [specs[r] for r in rows], device=str(device))
    bounds = np.cumsum([0] + [len(it.rows) for it in calls])
    return [dataclasses.replace(it, feats=emb[a:b]) for it, a, b in zip(calls, bounds[:-1], bounds[1:])]


def score_calls(cfg: DictConfig, model: EndToEndModel, calls: Sequence[CallItem], specs: Sequence[AudioSpec],
                device: torch.device, objective=None) -> Tuple[SegmentScores, float]:
    """Embed the calls with the current encoder, then score whole calls with the context stage."""
    embedded = with_embeddings(cfg, model, calls, specs, device)
    return score_items(model.call_model, embedded, window=cfg.context.window, overlap=cfg.context.window_overlap,
                       batch_calls=cfg.train.batch_calls, device=device, objective=objective)


def input_statistics(cfg: DictConfig, encoder, calls: Sequence[CallItem], specs: Sequence[AudioSpec], *,
                     seed: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the initial encoder's embeddings of a seeded sample of at most STATS_SEGMENTS fit
    segments: the context stage standardises its inputs with them."""
    rows = np.concatenate([it.rows for it in calls])
    if len(rows) > STATS_SEGMENTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, STATS_SEGMENTS, replace=False))
    return feature_stats(encode_rows(EmbedSettings.from_config(cfg), encoder, [specs[r] for r in rows], device=str(device)))


def train_end_to_end(cfg: DictConfig, data: CorpusData, items: Dict[str, List[CallItem]], *, taxonomy: Taxonomy,
                     objective, fine_bias, fold: int, fold_dir: Path, progress: bool) -> TrainedModel:
    """Train encoder + context stage + heads on windows of the fit calls; early stopping and the
    returned scorer embed whole calls with the encoder as it is at that point."""
    device = resolve_device(cfg.train.device)
    specs = [as_audio_spec(spec) for spec in audio_specs(data.manifest)]
    # Same weights as the encoder that fills the embedding cache (seeded random init or a checkpoint),
    # with the configured fine-tuning (LoRA / full / frozen) and gradient checkpointing.
    encoder = build_seeded_encoder(cfg).to(device)
    stats = input_statistics(cfg, encoder, items["fit"], specs, seed=cfg.seed + fold, device=device)
    torch.manual_seed(cfg.seed + fold)
    call_model = build_call_model(cfg, d_in=encoder.output_dim, taxonomy=taxonomy, fine_bias=fine_bias,
                                  train_stats=stats)
    model = EndToEndModel(encoder, call_model,
                          pad_multiple=int(PAD_MULTIPLE_SEC * cfg.data.sample_rate)).to(device)
    window = int(cfg.train.window_segments)
    result = fit(model, train_items=items["fit"], val_items=items["val"], objective=objective, taxonomy=taxonomy,
                 cfg_train=cfg.train, seed=cfg.seed + fold, checkpoint_path=fold_dir / "checkpoint.pt", resume=True,
                 log_dir=fold_dir / "tensorboard" if cfg.train.tensorboard else None,
                 progress=progress, desc=f"fold {fold} (end-to-end)",
                 epoch_items=lambda generator: epoch_windows(items["fit"], window=window, generator=generator),
                 make_batch=partial(make_window_batch, cfg=cfg, specs=specs),
                 validate=lambda m, dev: score_calls(cfg, m, items["val"], specs, dev, objective=objective))
    return TrainedModel(result, lambda calls: score_calls(cfg, model, calls, specs, device)[0], model)
