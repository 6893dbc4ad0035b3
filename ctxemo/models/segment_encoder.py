"""SegmentEncoder: one vector per speech segment. Upstream (HF backbone, all hidden layers + frame
lengths) -> layer choice or learnable weighted layer sum -> mask-aware pooling, with segments longer
than the backbone's window encoded in chunks and pooled across them.

Legend: b = segments, n = chunks, t = samples or frames, l = hidden layers, d = features.

The pieces live beside it: ctxemo.models.upstream (backbone -> hidden states), .featurizer (layer mixing),
.chunking (long segments), .pooling, .finetuning (LoRA and what trains in each `finetune` mode). This
module assembles them and saves / loads the trainable set as an "adapter" (`save_adapter`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional, Tuple, Union

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ctxemo.config import EncoderConfig, LoraConfig, parse_layers
from ctxemo.device import autocast
from ctxemo.errors import BundleError, ConfigError
from ctxemo.io import atomic_path
from ctxemo.models.backbones import (
    FAMILIES,
    build_backbone,
)
from ctxemo.models.chunking import merge_chunks, split_into_chunks
from ctxemo.models.featurizer import layer_weights, mix_layers
from ctxemo.models.finetuning import (
    FINETUNE_MODES,
    check_selected_layer_trains,
    inject_lora,
    set_backbone_trainable,
)
from ctxemo.models.frontend import lengths_to_mask
from ctxemo.models.pooling import build_pooling
from ctxemo.models.upstream import Upstream, build_upstream

__all__ = ["SegmentEncoder", "as_encoder_config"]

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "ctxemo-segment-adapter/1"


def as_encoder_config(enc_cfg: Union[EncoderConfig, DictConfig, Dict[str, Any]]) -> EncoderConfig:
    """Plain-Python EncoderConfig from a DictConfig node, a dict or an EncoderConfig."""
    if isinstance(enc_cfg, EncoderConfig):
        data = dataclasses.asdict(enc_cfg)
    elif isinstance(enc_cfg, DictConfig):
        data = OmegaConf.to_container(enc_cfg, resolve=True)
    else:
        data = dict(enc_cfg)
    data = dict(data)
    lora = data.get("lora") or {}
    data["lora"] = lora if isinstance(lora, LoraConfig) else LoraConfig(**dict(lora))
    data["lora"].target_modules = list(data["lora"].target_modules)
    data["model_config"] = dict(data.get("model_config") or {})
    try:
        return EncoderConfig(**data)
    except TypeError as exc:  # an unknown key in a plain dict
        raise ConfigError(f"encoder config: {exc}") from None


# ----------------------------------------------------------------------------- chunking


# ----------------------------------------------------------------------------- the encoder

class SegmentEncoder(nn.Module):
    """Speech segment -> embedding [output_dim].

    Args:
        upstream: from `ctxemo.models.upstream.build_upstream`.
        layers: "weighted" (softmax-weighted sum of all hidden states, uniform at start), "last", or an
            index into the hidden states (0 = input embeddings, -1 = last).
        pooling: "mean" or "attentive_stats" (output_dim doubles).
        finetune: "frozen" | "lora" | "full" (see the module docstring).
        lora: rank/alpha/dropout/target_modules for finetune="lora".
        gradient_checkpointing: recompute backbone activations in backward (training memory).

    Example:
        >>> from ctxemo.models.backbones import tiny_model_config
        >>> tiny = EncoderConfig(family="wav2vec2", model_config=tiny_model_config("wav2vec2"))
        >>> enc = SegmentEncoder.from_config(tiny, sample_rate=16000)
        >>> enc(torch.randn(2, 8000), torch.tensor([8000, 4000])).shape
        torch.Size([2, 32])
    """

    def __init__(self, *, upstream: Upstream, layers: Union[str, int] = "weighted", pooling: str = "mean",
                 finetune: str = "frozen", lora: Optional[LoraConfig] = None, gradient_checkpointing: bool = False):
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ConfigError(f"encoder.finetune={finetune!r}: use frozen, lora or full")
        self.upstream = upstream
        self.family = upstream.family
        self.layers = parse_layers(layers)
        self.finetune = finetune
        self.pooling_kind = pooling
        self.lora = lora if finetune == "lora" else None
        self.layer_weights = layer_weights(self.layers, upstream.num_hidden_states)
        self.pooling = build_pooling(pooling, d=upstream.hidden_size)
        self.output_dim = self.pooling.output_dim(upstream.hidden_size)
        if self.lora is not None:
            inject_lora(upstream, self.lora)
        set_backbone_trainable(upstream, finetune)
        check_selected_layer_trains(upstream, self.layers, finetune)
        for param in self.pooling.parameters():  # layer mixing and pooling always train
            param.requires_grad_(True)
        if self.layer_weights is not None:
            self.layer_weights.requires_grad_(True)
        if gradient_checkpointing:
            # Non-reentrant: works although the (frozen) inputs do not require grad.
            model = upstream.model
            if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @classmethod
    def from_config(cls, enc_cfg: Union[EncoderConfig, DictConfig, Dict[str, Any]], *, sample_rate: int
                    ) -> "SegmentEncoder":
        """Build from `cfg.encoder`. Random init (source=None) draws from torch's global RNG: seed first.

        Args:
            enc_cfg: EncoderConfig (dataclass, DictConfig node or dict).
            sample_rate: the audio's rate (cfg.data.sample_rate); must be 16000.
        Raises:
            ConfigError: see `build_backbone`; also bad layers/pooling/finetune/LoRA settings.
        """
        cfg = as_encoder_config(enc_cfg)
        layers = parse_layers(cfg.layers)
        if cfg.family not in FAMILIES:
            raise ConfigError(f"encoder.family {cfg.family!r} is not one of: {', '.join(FAMILIES)}")
        # Combining layers needs every layer to run: layerdrop would shift which state is which.
        overrides = {FAMILIES[cfg.family].layerdrop_key: 0.0} if layers != "last" else {}
        backbone = build_backbone(cfg.family, source=cfg.source, revision=cfg.revision, offline=cfg.offline,
                                  model_config=cfg.model_config, overrides=overrides)
        upstream = build_upstream(family=cfg.family, backbone=backbone, normalize_waveform=cfg.normalize_waveform,
                                  pad_to_30s=cfg.whisper_pad_to_30s, max_chunk_sec=cfg.max_chunk_sec,
                                  sample_rate=sample_rate)
        return cls(upstream=upstream, layers=layers, pooling=cfg.pooling, finetune=cfg.finetune, lora=cfg.lora,
                   gradient_checkpointing=cfg.gradient_checkpointing)

    # ------------------------------------------------------------------ forward

    def forward(self, waves: Tensor, wave_lens: Tensor) -> Tensor:
        """Args:
            waves: float [b, t] zero-padded batch at 16 kHz; wave_lens: long [b] valid samples.
        Returns:
            float32 [b, output_dim]; a segment's row does not depend on the rest of the batch.
        """
        frames, frame_mask = self.encode_frames(waves, wave_lens)
        return self.pooling(frames, frame_mask=frame_mask).float()

    def encode_frames(self, waves: Tensor, wave_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """Frame features after layer mixing, long segments re-assembled from their chunks.

        Returns:
            frames [b, t, d] and frame_mask bool [b, t] (True = valid).
        """
        waves, wave_lens = self._pad_short(waves, wave_lens.to(waves.device).long())
        plan = split_into_chunks(waves, wave_lens, max_samples=self.upstream.max_chunk_samples)
        hidden, frame_lens = self.upstream(plan.waves, plan.wave_lens)
        return merge_chunks(mix_layers(hidden, self.layers, self.layer_weights), frame_lens, plan)

    def _pad_short(self, waves: Tensor, wave_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """Zero-extend segments shorter than the CNN's receptive field so they yield one frame."""
        waves = waves * lengths_to_mask(wave_lens, waves.shape[1])  # padding must be zeros
        need = self.upstream.min_samples
        if int(wave_lens.min()) >= need:
            return waves, wave_lens
        if waves.shape[1] < need:
            waves = nn.functional.pad(waves, (0, need - waves.shape[1]))
        return waves, wave_lens.clamp(min=need)


    # ------------------------------------------------------------------ training set-up

    def train(self, mode: bool = True) -> "SegmentEncoder":
        """As nn.Module.train, but a frozen backbone stays in eval mode (it is a fixed feature extractor)."""
        super().train(mode)
        if self.finetune == "frozen":
            self.upstream.eval()
        return self

    def cnn_parameter_names(self) -> List[str]:
        """Names (as in self.named_parameters()) of the CNN front-end's parameters."""
        cnn = self.upstream.cnn_prefixes
        return [f"upstream.model.{n}" for n, _ in self.upstream.model.named_parameters() if n.startswith(cnn)]

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Parameters that training may change (optimizer-ready); see the module docstring."""
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> Dict[str, Tensor]:
        """name -> tensor for exactly the trainable parameters."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def autocast(self) -> ContextManager:
        """bf16 autocast when the encoder sits on a CUDA device; a no-op on CPU.

        Example:
            >>> with enc.autocast():  # doctest: +SKIP
            ...     emb = enc(waves, wave_lens)
        """
        return autocast(next(self.parameters()).device)

    # ------------------------------------------------------------------ adapters

    def _adapter_meta(self) -> Dict[str, Any]:
        return {
            "family": self.family, "finetune": self.finetune, "layers": self.layers, "pooling": self.pooling_kind,
            "hidden_size": self.upstream.hidden_size, "num_hidden_states": self.upstream.num_hidden_states,
            "lora": dataclasses.asdict(self.lora) if self.lora is not None else None,
        }

    def save_adapter(self, directory: Union[str, Path]) -> Path:
        """Write the trainable parameters (safetensors) + what they fit (JSON) to `directory`.

        In lora/frozen mode this is small (LoRA + layer weights + pooling); in full mode it holds the
        fine-tuned transformer. The base weights are not saved: load on a model built from the same config.
        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: t.cpu().contiguous() for n, t in self.trainable_state_dict().items()}
        with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:
            save_file(tensors, str(tmp))
        meta = {"format": ADAPTER_FORMAT, **self._adapter_meta(), "keys": sorted(tensors)}
        (directory / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2))
        return directory

    def load_adapter(self, directory: Union[str, Path]) -> None:
        """Load what `save_adapter` wrote into this encoder (built from the same encoder config).

        Raises:
            BundleError: missing files, another format, or an adapter for a different encoder set-up.
        """
        directory = Path(directory)
        weights, meta_path = directory / ADAPTER_WEIGHTS, directory / ADAPTER_CONFIG
        for path in (weights, meta_path):
            if not path.is_file():
                raise BundleError(f"encoder adapter: {path} not found")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != ADAPTER_FORMAT:
            raise BundleError(f"{meta_path}: format {meta.get('format')!r}, expected {ADAPTER_FORMAT!r}")
        for key, value in self._adapter_meta().items():
            if meta.get(key) != value:
                raise BundleError(f"{meta_path}: adapter was saved with {key}={meta.get(key)!r} but this encoder "
                                  f"has {key}={value!r}")
        tensors = load_file(str(weights))
        expected = self.trainable_state_dict()
        if set(tensors) != set(expected):
            missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
            raise BundleError(f"{weights}: parameters do not match this encoder (missing {missing[:3]}, "
                              f"unexpected {extra[:3]})")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                if params[name].shape != value.shape:
                    raise BundleError(f"{weights}: {name} has shape {tuple(value.shape)}, "
                                      f"expected {tuple(params[name].shape)}")
                params[name].copy_(value.to(params[name].device, params[name].dtype))
