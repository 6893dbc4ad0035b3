"""What trains in a segment encoder (encoder.finetune): LoRA injection through peft and the trainable set.

    frozen: layer weights + pooling (the backbone stays in eval mode: no dropout, no SpecAugment)
    lora:   LoRA matrices + layer weights + pooling
    full:   the whole backbone except its CNN front-end (and Whisper's fixed positions) + layer weights + pooling
The CNN front-end never trains.
"""
from __future__ import annotations

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
