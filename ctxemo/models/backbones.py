"""Speech backbones by family: which HF classes, a tiny random-init config per family, and building
one from a hub id, a local save_pretrained folder, or a config alone (random init).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import transformers
from torch import nn

from ctxemo.config import ENCODER_FAMILIES
from ctxemo.errors import ConfigError

EXPECTED_SAMPLE_RATE = 16000  # every supported family was pre-trained on 16 kHz audio
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass(frozen=True)
class Family:
    """What differs between backbone families."""

    model_type: str  # config.json's model_type
    config_cls: type
    model_cls: type
    lora_targets: Tuple[str, ...]  # default LoRA target module names
    layerdrop_key: str
    # WavLM's attention calls F.multi_head_attention_forward with the raw q/k/v/out weights, so peft's
    # LoRA wrappers on those modules would silently do nothing; its default targets the feed-forward.
    lora_forbidden: Tuple[str, ...] = ()


def _families() -> Dict[str, Family]:
    t = transformers
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return {
        "wav2vec2": Family("wav2vec2", t.Wav2Vec2Config, t.Wav2Vec2Model, tuple(_ATTENTION), "layerdrop"),
        "hubert": Family("hubert", t.HubertConfig, t.HubertModel, tuple(_ATTENTION), "layerdrop"),
        "wavlm": Family("wavlm", t.WavLMConfig, t.WavLMModel, ("intermediate_dense", "output_dense"), "layerdrop",
                        lora_forbidden=tuple(_ATTENTION)),
        "data2vec-audio": Family("data2vec-audio", t.Data2VecAudioConfig, t.Data2VecAudioModel, tuple(_ATTENTION),
                                 "layerdrop"),
        "whisper": Family("whisper", t.WhisperConfig, WhisperEncoder, tuple(_ATTENTION), "encoder_layerdrop"),
    }


FAMILIES = _families()
# The config's closed set of families (ctxemo.config.ENCODER_FAMILIES) is this table's keys, in order.
if tuple(FAMILIES) != ENCODER_FAMILIES:  # pragma: no cover - a new family must be added in both places
    raise ImportError(f"models.backbones.FAMILIES {tuple(FAMILIES)} != config.ENCODER_FAMILIES {ENCODER_FAMILIES}")

_TINY_SSL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=[32, 32, 32], conv_kernel=[10, 4, 4], conv_stride=[5, 4, 4],  # 80-sample (5 ms) hop
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    layerdrop=0.0, mask_time_prob=0.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    feat_proj_dropout=0.0, vocab_size=16,
)


def tiny_model_config(family: str) -> Dict[str, Any]:
    """A tiny random-init config per family (hidden 32, 2 layers, 2 heads, 3-layer conv front-end).

    `encoder.model_config` is merged over this, so a base-size model needs its sizes spelled out.
    The wav2vec2, HuBERT and WavLM ones keep `feat_extract_norm="group"` (the base models' layout,
    which needs the masked GroupNorm below); data2vec-audio only has layer norm.
    """
    if family not in FAMILIES:
        raise ConfigError(f"encoder.family {family!r} is not one of: {', '.join(FAMILIES)}")
    if family == "whisper":
        return dict(
            d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=80,
            max_source_positions=64,  # 128 mel frames = 1.28 s per window
            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_target_positions=16,
            vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
            suppress_tokens=None, begin_suppress_tokens=None,
            encoder_layerdrop=0.0, decoder_layerdrop=0.0, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        )
    config = dict(_TINY_SSL)
    if family == "wavlm":
        config.update(num_buckets=32, max_bucket_distance=64)
    if family == "data2vec-audio":
        config.update(conv_pos_kernel_size=5, num_conv_pos_embeddings=2)
    return config


# ----------------------------------------------------------------------------- sources

def resolve_source(source: Optional[str]) -> Tuple[str, Optional[Any]]:
    """Classify `encoder.source`: ("random", None) | ("local", Path) | ("hub", id).

    A string that names an existing folder is local; one that looks like a path but does not exist is
    an error (naming the absolute path looked at); anything else is taken as a hub id.
    """
    if source is None or str(source).strip() == "":
        return "random", None
    path = Path(str(source)).expanduser()
    if path.exists():
        return "local", path.resolve()
    text = str(source)
    looks_like_path = text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1 or text.endswith("/")
    if looks_like_path:
        raise ConfigError(f"encoder.source: local model folder not found: {path.resolve()}")
    return "hub", text


def check_local_folder(path: Path) -> None:
    """Raise ConfigError unless `path` holds config.json and a weight file, naming what was looked for."""
    if not path.is_dir():
        raise ConfigError(f"encoder.source: {path} is not a folder (expected a save_pretrained folder)")
    if not (path / "config.json").is_file():
        raise ConfigError(f"encoder.source: no config.json in {path}")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"encoder.source: no weights in {path}; looked for {', '.join(WEIGHT_FILES)}")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (we check loading ourselves)."""
    log = transformers.utils.logging
    level = log.get_verbosity()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(level)
        log.enable_progress_bar()


def build_backbone(family: str, *, source: Optional[str], revision: Optional[str], offline: bool,
                   model_config: Dict[str, Any], overrides: Dict[str, Any]) -> nn.Module:
    """The HF module for a family: pretrained (local folder or hub) or random init from a config.

    Args:
        family: a key of FAMILIES.
        source, revision, offline: `encoder.*` of the experiment config.
        model_config: HF config fields merged over `tiny_model_config(family)` (random init only).
        overrides: config fields forced in every case (e.g. layerdrop=0.0).
    Returns:
        Wav2Vec2Model / HubertModel / WavLMModel / Data2VecAudioModel, or WhisperEncoder.
    Raises:
        ConfigError: unknown family or config key, missing folder/weights, hub access while offline,
            a folder holding another family, weights that leave parameters uninitialised.
    """
    spec = FAMILIES.get(family)
    if spec is None:
        raise ConfigError(f"encoder.family {family!r} is not one of: {', '.join(FAMILIES)}")
    kind, where = resolve_source(source)
    if kind == "random":
        return _random_init(family, spec, {**model_config, **overrides})
    if kind == "hub" and offline:
        raise ConfigError(
            f"encoder.source {source!r} is not a local folder (looked at {Path(str(source)).resolve()}) and "
            "encoder.offline=true forbids downloading it from a hub; set encoder.offline=false to allow that, "
            "or point encoder.source at a folder saved with save_pretrained"
        )
    if kind == "local":
        check_local_folder(where)
        model_type = json.loads((where / "config.json").read_text()).get("model_type")
        if model_type != spec.model_type:
            raise ConfigError(f"encoder.source {where} holds a {model_type!r} model but encoder.family is {family!r}")
    kwargs: Dict[str, Any] = dict(output_loading_info=True, **overrides)
    if family == "whisper":
        # Checkpoints hold the whole seq2seq model; keep only the encoder's weights.
        kwargs["key_mapping"] = {r"^(model\.)?encoder\.": ""}
    if kind == "local":
        kwargs["local_files_only"] = True
    else:
        kwargs["revision"] = revision
    try:
        with _quiet_transformers():
            model, info = spec.model_cls.from_pretrained(str(where), **kwargs)
    except OSError as exc:  # missing files, failed download
        raise ConfigError(f"encoder.source {source!r}: cannot load weights: {exc}") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if "masked_spec_embed" not in k)
    if missing:
        raise ConfigError(f"encoder.source {where}: the weights leave {len(missing)} parameters uninitialised, "
                          f"e.g. {missing[:5]}; is it a {family} checkpoint?")
    _check_supported(model.config, family)
    return model


def _random_init(family: str, spec: Family, model_config: Dict[str, Any]) -> nn.Module:
    merged = {**tiny_model_config(family), **model_config}
    known = {f.name for f in dataclasses.fields(spec.config_cls)} if dataclasses.is_dataclass(spec.config_cls) else None
    if known is not None:
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ConfigError(f"encoder.model_config: unknown {spec.config_cls.__name__} keys {unknown}")
    try:
        config = spec.config_cls(**merged)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"encoder.model_config: invalid {spec.config_cls.__name__}: {exc}") from None
    _check_supported(config, family)
    return spec.model_cls(config)


def _check_supported(config: Any, family: str) -> None:
    if family != "whisper" and getattr(config, "add_adapter", False):
        raise ConfigError("encoder: configs with add_adapter=true (a downsampling adapter after the transformer) "
                          "are not supported; their last layer has a different frame rate")


def lora_targets(family: str, requested: Sequence[str]) -> List[str]:
    """LoRA target module names: `requested`, or the family's default when empty.

    Raises:
        ConfigError: a target that LoRA cannot act on in this family (WavLM attention projections).
    """
    spec = FAMILIES[family]
    targets = list(requested) or list(spec.lora_targets)
    bad = [t for t in targets if t in spec.lora_forbidden]
    if bad:
        raise ConfigError(
            f"encoder.lora.target_modules {bad}: {family}'s attention uses these weights directly "
            f"(F.multi_head_attention_forward), so LoRA on them would be silently ignored; "
            f"use e.g. {list(spec.lora_targets)}"
        )
    return targets
