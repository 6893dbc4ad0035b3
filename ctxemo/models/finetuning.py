"""What trains in a segment encoder (encoder.finetune): LoRA injection through peft and the trainable set.

    frozen: layer weights + pooling (the backbone stays in eval mode: no dropout, no SpecAugment)
    lora:   LoRA matrices + layer weights + pooling
    full:   the whole backbone except its CNN front-end (and Whisper's fixed positions) + layer weights + pooling
The CNN front-end never trains.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch

from ctxemo.config import LoraConfig
from ctxemo.errors import ConfigError
from ctxemo.models.backbones import lora_targets
from ctxemo.models.upstream import Upstream

FINETUNE_MODES = ("frozen", "lora", "full")


def inject_lora(upstream: Upstream, lora: LoraConfig) -> None:
    """Add LoRA matrices (B = 0: a no-op at the start) to the backbone's target modules, in place."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    targets = lora_targets(upstream.family, lora.target_modules)
    peft_cfg = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=targets, bias="none")
    try:
        inject_adapter_in_model(peft_cfg, upstream.model)
    except ValueError as exc:  # peft: no module matched the targets
        raise ConfigError(f"encoder.lora.target_modules {targets}: {exc}") from None
    frozen = upstream.fixed_prefixes
    in_cnn = [n for n, _ in upstream.model.named_parameters() if "lora_" in n and n.startswith(frozen)]
    if in_cnn:
        raise ConfigError(f"encoder.lora.target_modules {targets} reach the CNN front-end ({in_cnn[:3]}), "
                          "which stays frozen; target transformer modules only")


def set_backbone_trainable(upstream: Upstream, finetune: str) -> None:
    """requires_grad on exactly the backbone parameters that `finetune` trains."""
    fixed = upstream.fixed_prefixes
    for name, param in upstream.model.named_parameters():
        if finetune == "full":
            param.requires_grad_(not name.startswith(fixed))
        elif finetune == "lora":
            param.requires_grad_("lora_" in name and not name.startswith(fixed))
        else:
            param.requires_grad_(False)


def check_selected_layer_trains(upstream: Upstream, layers: Union[str, int], finetune: str,
                                sample_rate: int = 16000) -> None:
    """Refuse backbone parameters marked trainable that the chosen hidden state does not depend on.

    With `encoder.layers` an index k, hidden state k is computed before transformer layers k.. run, so
    training them (finetune=lora/full) would be a silent no-op: they never receive a gradient. One
    backward pass of a 1-s random input finds them, whatever the family's module names.

    Raises:
        ConfigError naming encoder.layers, the parameters that would not train and those that would.
    """
    if finetune == "frozen" or not isinstance(layers, int):
        return
    trainable = {n: p for n, p in upstream.model.named_parameters() if p.requires_grad}
    if not trainable:
        return
    was_training = upstream.model.training
    upstream.model.eval()  # no dropout / masking: only which parameters are reached matters
    try:
        waves = torch.randn(1, sample_rate, generator=torch.Generator().manual_seed(0))  # leaves the global RNG be
        hidden, _ = upstream(waves, torch.tensor([sample_rate]))
        chosen = hidden[layers]
        if chosen.requires_grad:  # else nothing trainable feeds it (e.g. Whisper's input embeddings)
            chosen.float().sum().backward()
        unreached = [n for n, p in trainable.items() if p.grad is None]
    finally:
        for p in trainable.values():
            p.grad = None
        upstream.model.train(was_training)
    if unreached:
        reached = [n for n in trainable if n not in set(unreached)]
        raise ConfigError(
            f"encoder.layers={layers} with encoder.finetune={finetune}: {len(unreached)} trainable backbone "
            f"tensor(s) ({_modules(unreached)}) come after hidden state {layers} and would never receive a "
            f"gradient; {('only ' + _modules(reached)) if reached else 'nothing in the backbone'} would train. "
            "Choose a later layer "
            "(encoder.layers=last or weighted), or encoder.finetune=frozen")


def _modules(names: Sequence[str], shown: int = 4) -> str:
    """Parameter names shortened to their modules ('encoder.layers.1.attention.k_proj.weight' ->
    'encoder.layers.1'), first few, for an error message."""
    modules: List[str] = []
    for name in names:
        parts = name.split(".")
        cut = next((i + 2 for i, p in enumerate(parts) if p == "layers" and i + 1 < len(parts)), len(parts) - 1)
        module = ".".join(parts[:cut])
        if module not in modules:
            modules.append(module)
    return ", ".join(modules[:shown]) + (f" and {len(modules) - shown} more" if len(modules) > shown else "")
