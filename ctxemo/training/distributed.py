"""Data-parallel training across processes started by `torchrun` (gloo on CPU, NCCL on GPU).

With WORLD_SIZE > 1 in the environment, every rank runs the same CV loop: it sees the same global
batches of calls (same seed, same shuffle), trains on its own share of each batch, and DDP averages
the gradients. Each rank's loss is rescaled so that this average equals the gradient of the one-process
loss on the whole batch. Validation and test sets are scored in full on every rank; only rank 0 writes.
Without WORLD_SIZE > 1 every helper here is a no-op and nothing is initialised.
"""
from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from typing import Iterator, List, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist

from ctxemo.data.datasets import CallItem
from ctxemo.training.objective import Objective, fine_loss_rows

T = TypeVar("T")


def init_from_env() -> bool:
    """Join the process group described by torchrun's env vars (once); True when running distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:  # one GPU per rank, picked before NCCL starts
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """The rank that writes files and prints progress (the only rank when not distributed)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run a block on rank 0 first, then on the others (e.g. create a file once, then read it)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(items: Sequence[T]) -> List[T]:
    """This rank's share of `items`: every world_size-th one, starting at its rank (disjoint, covering)."""
    return list(items[rank()::world_size()])


def all_reduce_mean(value: float) -> float:
    """Mean of a Python float over ranks (float64 on the CPU with gloo, on the GPU with NCCL)."""
    if not is_distributed():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (keeps decisions such as early stopping identical across ranks)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """DDP around `model` when distributed (the model itself otherwise); call after moving it to its device.

    find_unused_parameters: the isolated arm never uses the role/time embeddings, nor the binary
    head when binary_from=fine. Parameters are already identical on every rank (same seed), and DDP
    broadcasts rank 0's anyway.
    """
    if not is_distributed():
        return model
    device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def _loss_rows(items: Sequence[CallItem], objective: Objective) -> Tuple[int, int]:
    """(rows in the binary loss, rows in the fine loss) of these calls, as Objective counts them."""
    n_binary = n_fine = 0
    for it in items:
        negative, fine = it.negative[it.scored], it.fine[it.scored]
        n_binary += len(negative)
        n_fine += int(fine_loss_rows(negative, fine, multilabel=objective.multilabel,
                                     negative_only=objective.negative_only).sum())
    return n_binary, n_fine


def shard_batch(calls: Sequence[int], items: Sequence[CallItem], objective: Objective) -> Tuple[List[int], Objective]:
    """This rank's calls of one global batch, and the objective to train them with.

    The objective is a mean over rows (binary part over scored rows, fine part over fine rows), so a
    rank holding n of the batch's N rows weighs its part by world_size * n / N: DDP's mean over ranks
    then gives exactly the one-process gradient of the whole batch, whatever the shares' sizes.
    A rank left without calls (a last batch smaller than the world) still joins the all-reduce, with
    the batch's first call at weight 0.
    """
    if not is_distributed():
        return list(calls), objective
    mine = shard(calls)
    n_binary, n_fine = _loss_rows([items[i] for i in calls], objective)
    my_binary, my_fine = _loss_rows([items[i] for i in mine], objective)
    scaled = copy.copy(objective)  # shares the loss modules; only the two weights differ
    scaled.binary_weight = objective.binary_weight * world_size() * my_binary / max(n_binary, 1)
    scaled.fine_weight = objective.fine_weight * world_size() * my_fine / max(n_fine, 1)
    return (mine or list(calls[:1])), scaled

