"""The training engine: AdamW, warmup + cosine, clipping, accumulation, early stopping on an
inner-validation metric, an atomic checkpoint every epoch, and `resume` that ends where an
uninterrupted run would have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ctxemo.data.datasets import CallBatch, CallItem, batch_indices, collate
from ctxemo.device import autocast, resolve_device  # noqa: F401  (resolve_device: used by callers of fit)
from ctxemo.errors import CtxemoError
from ctxemo.evaluation.metrics import average_precision
from ctxemo.evaluation.scoring import SegmentScores, score_items
from ctxemo.io import atomic_path
from ctxemo.models.call_model import CallModel
from ctxemo.taxonomy import Taxonomy
from ctxemo.training import distributed
from ctxemo.training.objective import Objective

# Metrics where larger is better; "loss" is the one exception.
LOWER_IS_BETTER = {"loss"}


def validation_metrics(scores: SegmentScores, *, taxonomy: Taxonomy, loss: float) -> Dict[str, float]:
    """Metrics for early stopping, computed every epoch on the inner validation calls.

    `score` = mean of binary average precision and fine macro average precision: threshold-free
    (thresholds are tuned only after training) and cheap enough to run every epoch.
    """
    out = {"loss": loss, "binary_ap": average_precision(scores.negative, scores.p_negative)}
    fine_ap = [average_precision(scores.fine[:, j], scores.p_fine[:, j]) for j in range(scores.fine.shape[1])]
    out["fine_macro_ap"] = float(np.nanmean(fine_ap)) if np.isfinite(fine_ap).any() else float("nan")
    parts = [v for v in (out["binary_ap"], out["fine_macro_ap"]) if np.isfinite(v)]
    # A validation split with no positives at all has no AP: score 0 rather than NaN (never "better").
    out["score"] = float(np.mean(parts)) if parts else 0.0
    return out


def warmup_cosine(total_steps: int, warmup_frac: float) -> Callable[[int], float]:
    warmup = max(1, int(round(total_steps * warmup_frac)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class TrainResult:
    best_epoch: int
    best_metrics: Dict[str, float]
    history: List[Dict[str, float]] = field(default_factory=list)
    state_dict: Dict[str, torch.Tensor] = field(default_factory=dict)


def _is_better(value: float, best: Optional[float], metric: str, min_delta: float = 0.0) -> bool:
    """Whether this epoch's validation score replaces the best so far. An undefined (NaN) score never
    beats a defined one; until a defined one appears, the latest epoch is kept."""
    if not np.isfinite(value):
        return best is None or not np.isfinite(best)
    if best is None or not np.isfinite(best):
        return True
    return value < best - min_delta if metric in LOWER_IS_BETTER else value > best + min_delta


def parameter_groups(model: torch.nn.Module, *, lr: float, encoder_lr: float, weight_decay: float) -> List[dict]:
    """Encoder adapters learn slowly (encoder_lr), the context stage and heads at `lr`.
    Norms and biases get no weight decay."""
    groups: Dict[tuple, List[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_encoder = name.startswith("encoder.")
        no_decay = param.dim() < 2
        groups.setdefault((is_encoder, no_decay), []).append(param)
    return [{"params": params, "lr": encoder_lr if enc else lr, "weight_decay": 0.0 if nd else weight_decay}
            for (enc, nd), params in groups.items()]


def trainable_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """CPU copies of what training can change: trainable parameters and every buffer.

    Frozen parameters (e.g. a LoRA model's base encoder) are left out: they are rebuilt identically from
    the config, and copying them every epoch would cost gigabytes for a large encoder.
    """
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in frozen}


def load_trainable_state(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Inverse of `trainable_state`; refuses a state that misses a trainable parameter or adds keys."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise CtxemoError(f"saved state does not match the model: missing {sorted(set(missing) - frozen)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}")


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path) -> dict:
    # weights_only: a checkpoint is data, never code; a tampered pickle is refused.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CtxemoError(f"cannot load checkpoint {path} safely: {exc}") from None


def fit(model: nn.Module, **kwargs) -> TrainResult:
    """See `_fit`. On CPU the context stage (a CallModel alone) trains on one thread: its tensors are
    tiny, and OpenMP workers spin-waiting on a shared 2-core machine made each step ~10x slower (one demo
    fold, machine shared with another job: 108 s with the default threads under cProfile, 9-10 s with one
    thread). End-to-end models run a speech encoder, whose large matmuls do use the threads."""
    if resolve_device(kwargs["cfg_train"].device).type != "cpu" or not isinstance(model, CallModel):
        return _fit(model, **kwargs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(model, **kwargs)
    finally:
        torch.set_num_threads(threads)


EpochItems = Callable[[torch.Generator], Sequence[CallItem]]
MakeBatch = Callable[[Sequence[CallItem], torch.device], CallBatch]
Validate = Callable[[nn.Module, torch.device], tuple]


def _fit(model: nn.Module, *, train_items: Sequence[CallItem], val_items: Sequence[CallItem], objective: Objective,
         taxonomy: Taxonomy, cfg_train, seed: int, window: int = 0, window_overlap: int = 0,
         checkpoint_path: Optional[Path] = None, resume: bool = False, progress: bool = True,
         desc: str = "train", epoch_items: Optional[EpochItems] = None, make_batch: MakeBatch = collate,
         validate: Optional[Validate] = None, log_dir: Optional[Path] = None) -> TrainResult:
    """Train `model`; keep the state that scored best on the inner validation calls.

    Two-stage mode (the defaults): `model` is a CallModel, a training unit is a whole call of
    `train_items`. End-to-end mode (ctxemo.training.end_to_end) passes the three hooks instead.

    Args:
        train_items / val_items: calls of the training callers, split by caller (never the test fold).
        cfg_train: a TrainConfig node.
        seed: seeds batch order and dropout; same seed + data -> identical result on CPU.
        checkpoint_path: written atomically after every epoch; with `resume`, training continues from it.
            Under torchrun (ctxemo.training.distributed) each rank trains on its share of every batch; rank 0 writes.
        epoch_items: the training units of one epoch, drawn with the batch-order generator (default:
            `train_items`); their number must not change between epochs (it fixes the LR schedule).
        make_batch: units -> CallBatch whose `.inputs` the model takes (default: `collate`).
        validate: (model, device) -> (SegmentScores, loss) on the inner validation calls (default:
            `score_items` over `val_items`).
        log_dir: if given, every epoch's metrics (numbers only) are also written there for TensorBoard.
    Returns:
        TrainResult with the best state (already loaded into `model`) and the per-epoch history; its
        state holds trainable parameters and buffers only (see `trainable_state`).
    """
    if epoch_items is None:
        epoch_items = lambda generator: train_items  # noqa: E731
    if validate is None:
        validate = lambda m, device: score_items(  # noqa: E731
            m, val_items, window=window, overlap=window_overlap, batch_calls=cfg_train.batch_calls, device=device,
            objective=objective)
    device = resolve_device(cfg_train.device)
    model.to(device)
    objective.to(device)
    train_model = distributed.wrap_model(model)  # DDP under torchrun; `model` itself otherwise
    metric = cfg_train.early_stop_metric
    units_per_epoch = len(epoch_items(torch.Generator().manual_seed(seed)))
    steps_per_epoch = math.ceil(math.ceil(units_per_epoch / cfg_train.batch_calls) / cfg_train.grad_accum)
    optimizer, scheduler = make_optimizer(model, cfg_train, total_steps=steps_per_epoch * cfg_train.epochs)
    generator = torch.Generator().manual_seed(seed)  # batch order: the same on every rank
    torch.manual_seed(seed + distributed.rank())  # dropout: a stream per rank (rank 0 = one process)
    start_epoch, best, best_epoch, stale = 0, None, -1, 0
    history: List[Dict[str, float]] = []
    best_state = trainable_state(model)
    best_metrics: Dict[str, float] = {}

    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        ckpt = _load_checkpoint(Path(checkpoint_path))
        load_trainable_state(model, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        start_epoch, best, best_epoch, stale = ckpt["epoch"] + 1, ckpt["best"], ckpt["best_epoch"], ckpt["stale"]
        history, best_state, best_metrics = ckpt["history"], ckpt["best_state"], ckpt["best_metrics"]
        if distributed.is_main():  # a resume says what it keeps
            print(f"[resume] {desc}: epoch(s) 1-{start_epoch} of {cfg_train.epochs} kept from {checkpoint_path}, "
                  f"resuming at epoch {start_epoch + 1}", flush=True)

    board = _scalar_writer(log_dir) if log_dir is not None and distributed.is_main() else None
    bar = tqdm(range(start_epoch, cfg_train.epochs), desc=desc, disable=not (progress and distributed.is_main()),
               leave=False, initial=start_epoch, total=cfg_train.epochs)
    for epoch in bar:
        if stale >= cfg_train.patience:
            break
        model.train()
        total, batches = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        units = epoch_items(generator)
        order = batch_indices(len(units), batch_calls=cfg_train.batch_calls, shuffle=True, generator=generator,
                              lengths=[len(u.rows) for u in units], bucket_calls=cfg_train.bucket_calls)
        for i, calls in enumerate(order):
            calls, step_objective = distributed.shard_batch(calls, units, objective)
            batch = make_batch([units[j] for j in calls], device)
            total += backward_batch(train_model, batch, step_objective, device=device, grad_accum=cfg_train.grad_accum)
            batches += 1
            if (i + 1) % cfg_train.grad_accum == 0:
                optimizer_step(model, optimizer, scheduler, cfg_train.grad_clip)
        if batches % cfg_train.grad_accum:
            optimizer_step(model, optimizer, scheduler, cfg_train.grad_clip)
        scores, val_loss = validate(model, device)
        metrics = validation_metrics(scores, taxonomy=taxonomy, loss=val_loss)
        metrics.update(epoch=epoch, train_loss=distributed.all_reduce_mean(total) / max(batches, 1))
        metrics = distributed.broadcast_object(metrics)  # every rank takes rank 0's early-stopping decision
        history.append(metrics)
        if _is_better(metrics[metric], best, metric, cfg_train.min_delta):
            best, best_epoch, stale = metrics[metric], epoch, 0
            best_state = trainable_state(model)
            best_metrics = dict(metrics)
        else:
            stale += 1
        bar.set_postfix({"train_loss": f"{metrics['train_loss']:.3f}", f"val_{metric}": f"{metrics[metric]:.3f}"})
        if board is not None:
            for name, value in metrics.items():
                if name != "epoch":
                    board.add_scalar(name if name == "train_loss" else f"val/{name}", value, epoch)
            board.flush()
        if checkpoint_path is not None and distributed.is_main():
            _save_checkpoint(Path(checkpoint_path), {
                "model": trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "epoch": epoch, "best": best, "best_epoch": best_epoch,
                "stale": stale, "history": history, "best_state": best_state, "best_metrics": best_metrics,
            })
    if board is not None:
        board.close()
    load_trainable_state(model, best_state)
    return TrainResult(best_epoch=best_epoch, best_metrics=best_metrics, history=history, state_dict=best_state)


def _scalar_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CtxemoError('train.tensorboard=true needs the tensorboard package: pip install ".[tensorboard]"') from None
    return SummaryWriter(log_dir=str(log_dir))


def make_optimizer(model: nn.Module, cfg_train, *, total_steps: int):
    """AdamW over `parameter_groups` and its warmup + cosine schedule over `total_steps` optimizer steps."""
    optimizer = torch.optim.AdamW(parameter_groups(model, lr=cfg_train.lr, encoder_lr=cfg_train.encoder_lr,
                                                   weight_decay=cfg_train.weight_decay))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, cfg_train.warmup_frac))
    return optimizer, scheduler


def backward_batch(train_model: nn.Module, batch: CallBatch, objective, *, device: torch.device,
                   grad_accum: int = 1) -> float:
    """One batch's forward under the mixed-precision rule (`ctxemo.device.autocast`), its loss and the
    backward pass (gradients accumulate until `optimizer_step`); returns the batch's loss."""
    with autocast(device):
        loss = objective(train_model(batch.inputs), batch)
    (loss / grad_accum).backward()
    return loss.item()


def optimizer_step(model, optimizer, scheduler, grad_clip: float) -> None:
    """Clip, step the optimizer and the schedule, clear the gradients."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


# A trained fold's model as a function: calls -> SegmentScores of their caller segments.
Scorer = Callable[[Sequence[CallItem]], SegmentScores]


class TrainedModel(NamedTuple):
    result: TrainResult
    score: Scorer
    model: torch.nn.Module  # CallModel (two-stage) or EndToEndModel
