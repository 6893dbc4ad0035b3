"""Where tensors run: the one device choice (`train.device`: auto | cpu | cuda) and the one mixed-precision
rule, shared by embedding, training, scoring, bundles and live scoring."""
from __future__ import annotations

from typing import ContextManager

import torch

from ctxemo.errors import CtxemoError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None) picks CUDA when present; asking for CUDA on a machine without it is an error."""
    if isinstance(name, torch.device):
        return name
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CtxemoError("config key 'train.device' = 'cuda' but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device) -> ContextManager:
    """bf16 autocast on CUDA; a no-op on CPU, where training stays exact float32 (the embedding pass has its
    own switch, `embedding_autocast`)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def embedding_autocast(device: torch.device, precision: str) -> ContextManager:
    """The embedding pass's arithmetic (`encoder.precision`): bf16 autocast for "bfloat16" on any device,
    exact float32 otherwise. Apart from `autocast` above because the cache's pass is inference only, where
    bf16 on a CPU with native bf16 (AVX512-BF16, AMX) runs 1.8-1.9x faster at cosine >= 0.99998 (bench_embed.py)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
