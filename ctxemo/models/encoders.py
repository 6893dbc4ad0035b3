"""SegmentEncoder: one vector per speech segment. Upstream (HF backbone, all hidden layers + frame
lengths) -> layer choice or learnable weighted layer sum -> mask-aware pooling, with segments longer
than the backbone's window encoded in chunks and pooled across them.

Legend: b = segments, n = chunks, t = samples or frames, l = hidden layers, d = features.

What trains in each `finetune` mode (`trainable_parameters()`):
    frozen: layer weights + pooling (the backbone stays in eval mode: no dropout, no SpecAugment)
    lora:   LoRA matrices + layer weights + pooling
    full:   the whole backbone except its CNN front-end (and Whisper's fixed positions) + layer weights + pooling
The CNN front-end never trains. An "adapter" (`save_adapter`) is exactly the trainable set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional, Tuple, Union

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from ctxemo.io import atomic_path
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ctxemo.config import EncoderConfig, LoraConfig
from ctxemo.errors import BundleError, ConfigError
from ctxemo.models.backbones import FAMILIES, build_backbone, lora_targets, tiny_model_config
from ctxemo.models.frontend import lengths_to_mask
from ctxemo.models.pooling import build_pooling
from ctxemo.models.upstream import Upstream, build_upstream

__all__ = ["SegmentEncoder", "as_encoder_config", "parse_layers", "split_into_chunks", "merge_chunks",
           "tiny_model_config"]

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


def parse_layers(layers: Union[str, int]) -> Union[str, int]:
    """'weighted' | 'last' | an int (strings of digits, e.g. from a YAML override, become ints)."""
    if layers in ("weighted", "last"):
        return layers
    try:
        return int(layers)
    except (TypeError, ValueError):
        raise ConfigError(f"encoder.layers={layers!r}: use 'weighted', 'last' or an integer index") from None


# ----------------------------------------------------------------------------- chunking

@dataclass
class ChunkPlan:
    """Segments cut into pieces that fit the backbone. owner[i] = segment of chunk i (in order)."""

    waves: Tensor  # float [n, t]
    wave_lens: Tensor  # long [n]
    owner: Tensor  # long [n]
    n_segments: int

    @property
    def is_identity(self) -> bool:
        return self.waves.shape[0] == self.n_segments


def split_into_chunks(waves: Tensor, wave_lens: Tensor, *, max_samples: int) -> ChunkPlan:
    """Cut each segment longer than `max_samples` into equal chunks (ceil(len / max) of them), so no
    chunk is a sliver too short for the CNN.

    Args:
        waves: float [b, t] zero-padded; wave_lens: long [b].
    """
    if int(wave_lens.max()) <= max_samples:
        # One chunk each; a batch width rounded up past the chunk size (pad_waves' `multiple`) holds
        # only padding there, and Whisper has no positions for it: cut it.
        return ChunkPlan(waves[:, :max_samples], wave_lens, torch.arange(len(wave_lens)), len(wave_lens))
    pieces, owners = [], []
    for i, length in enumerate(wave_lens.tolist()):
        n = -(-length // max_samples)
        size = -(-length // n)
        for start in range(0, length, size):
            pieces.append(waves[i, start: min(start + size, length)])
            owners.append(i)
    lens = torch.tensor([p.shape[0] for p in pieces], dtype=torch.long, device=wave_lens.device)
    return ChunkPlan(pad_sequence(pieces, batch_first=True), lens, torch.tensor(owners), len(wave_lens))


def merge_chunks(frames: Tensor, frame_lens: Tensor, plan: ChunkPlan) -> Tuple[Tensor, Tensor]:
    """Concatenate each segment's chunks' valid frames back into one sequence.

    Args:
        frames: [n, t, d] per chunk; frame_lens: long [n].
    Returns:
        frames [b, t_total, d] and frame_mask bool [b, t_total].
    """
    if plan.is_identity:
        return frames, lengths_to_mask(frame_lens, frames.shape[1])
    per_segment: List[List[Tensor]] = [[] for _ in range(plan.n_segments)]
    for i, (owner, length) in enumerate(zip(plan.owner.tolist(), frame_lens.tolist())):
        per_segment[owner].append(frames[i, :length])
    merged = [torch.cat(parts) for parts in per_segment]
    lens = torch.tensor([m.shape[0] for m in merged], device=frames.device)
    return pad_sequence(merged, batch_first=True), lengths_to_mask(lens)


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
        >>> enc = SegmentEncoder.from_config(EncoderConfig(family="wav2vec2"), sample_rate=16000)
        >>> enc(torch.randn(2, 8000), torch.tensor([8000, 4000])).shape  # doctest: +SKIP
        torch.Size([2, 32])
    """

    def __init__(self, *, upstream: Upstream, layers: Union[str, int] = "weighted", pooling: str = "mean",
                 finetune: str = "frozen", lora: Optional[LoraConfig] = None, gradient_checkpointing: bool = False):
        super().__init__()
        if finetune not in ("frozen", "lora", "full"):
            raise ConfigError(f"encoder.finetune={finetune!r}: use frozen, lora or full")
        self.upstream = upstream
        self.family = upstream.family
        self.layers = parse_layers(layers)
        self.finetune = finetune
        self.pooling_kind = pooling
        self.lora = lora if finetune == "lora" else None
        n_states = upstream.num_hidden_states
        if isinstance(self.layers, int) and not -n_states <= self.layers < n_states:
            raise ConfigError(f"encoder.layers={self.layers}: this backbone has {n_states} hidden states "
                              f"(0 = input embeddings .. {n_states - 1} = last)")
        # Zeros -> uniform softmax weights: the start is the plain layer average (as in s3prl).
        self.layer_weights = nn.Parameter(torch.zeros(n_states)) if self.layers == "weighted" else None
        self.pooling = build_pooling(pooling, d=upstream.hidden_size)
        self.output_dim = self.pooling.output_dim(upstream.hidden_size)
        if self.lora is not None:
            self._inject_lora(self.lora)
        self._set_trainable()
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
        return merge_chunks(self._mix_layers(hidden), frame_lens, plan)

    def _pad_short(self, waves: Tensor, wave_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """Zero-extend segments shorter than the CNN's receptive field so they yield one frame."""
        waves = waves * lengths_to_mask(wave_lens, waves.shape[1])  # padding must be zeros
        need = self.upstream.min_samples
        if int(wave_lens.min()) >= need:
            return waves, wave_lens
        if waves.shape[1] < need:
            waves = nn.functional.pad(waves, (0, need - waves.shape[1]))
        return waves, wave_lens.clamp(min=need)

    def _mix_layers(self, hidden: List[Tensor]) -> Tensor:
        if self.layers == "last":
            return hidden[-1]
        if isinstance(self.layers, int):
            return hidden[self.layers]
        weights = torch.softmax(self.layer_weights, dim=0)
        # A running sum, not torch.stack: no [l, b, t, d] copy of all layers.
        mixed = weights[0] * hidden[0]
        for weight, state in zip(weights[1:], hidden[1:]):
            mixed = mixed + weight * state
        return mixed

    # ------------------------------------------------------------------ training set-up

    def _inject_lora(self, lora: LoraConfig) -> None:
        from peft import LoraConfig as PeftLoraConfig, inject_adapter_in_model

        targets = lora_targets(self.family, lora.target_modules)
        peft_cfg = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                  target_modules=targets, bias="none")
        try:
            inject_adapter_in_model(peft_cfg, self.upstream.model)
        except ValueError as exc:  # peft: no module matched the targets
            raise ConfigError(f"encoder.lora.target_modules {targets}: {exc}") from None
        frozen = self.upstream.fixed_prefixes
        in_cnn = [n for n, _ in self.upstream.model.named_parameters() if "lora_" in n and n.startswith(frozen)]
        if in_cnn:
            raise ConfigError(f"encoder.lora.target_modules {targets} reach the CNN front-end ({in_cnn[:3]}), "
                              "which stays frozen; target transformer modules only")

    def _set_trainable(self) -> None:
        model = self.upstream.model
        fixed = self.upstream.fixed_prefixes
        for name, param in model.named_parameters():
            if self.finetune == "full":
                param.requires_grad_(not name.startswith(fixed))
            elif self.finetune == "lora":
                param.requires_grad_("lora_" in name and not name.startswith(fixed))
            else:
                param.requires_grad_(False)
        for param in self.pooling.parameters():
            param.requires_grad_(True)
        if self.layer_weights is not None:
            self.layer_weights.requires_grad_(True)

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
        device = next(self.parameters()).device
        if device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

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
