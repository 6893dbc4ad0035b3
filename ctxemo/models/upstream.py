"""Speech backbones as s3prl-style upstreams: (waves [b, t], wave_lens [b]) -> every hidden layer
[b, t', d] + frame_lens [b]. One class for the wav2vec2 family (wav2vec2, HuBERT, WavLM, data2vec-audio)
and one for the Whisper encoder. Both make a padded batch equal each segment encoded alone.

Legend: b = segments, t = samples or frames, m = mel bins, d = features, l = hidden layers.
"""
from __future__ import annotations

import threading
from typing import Any, List, Optional, Tuple

import torch
from einops import rearrange
from torch import Tensor, nn
from transformers.masking_utils import create_bidirectional_mask

from ctxemo.errors import ConfigError
from ctxemo.models.backbones import EXPECTED_SAMPLE_RATE
from ctxemo.models.frontend import (
    WHISPER_HOP,
    WhisperLogMel,
    lengths_to_mask,
    normalize_waves,
)

_THREAD = threading.local()


class PerThread:
    """An attribute that holds one value per thread: the lengths a forward pass sets for its own duration.
    On CPU the embedding loop runs several passes on one encoder at once (ctxemo.embedding.encode), and
    one pass must not read another's lengths. Kept outside the instance so modules still deep-copy."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self
        return getattr(_THREAD, "values", {}).get((id(obj), self.name))

    def __set__(self, obj: Any, value: Any) -> None:
        values = _THREAD.__dict__.setdefault("values", {})
        if value is None:
            values.pop((id(obj), self.name), None)
        else:
            values[(id(obj), self.name)] = value


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm over time whose statistics skip padded frames.

    The base wav2vec2/HuBERT/WavLM models normalise the first conv layer's output over the whole
    time axis, so zero padding shifts every frame (why transformers says not to pass attention_mask to
    them). With the valid lengths set in `frame_lens` the statistics come from the segment alone, and
    a padded batch equals encoding each segment by itself. Same parameters and state-dict keys as
    nn.GroupNorm, so checkpoints load unchanged; without `frame_lens` it is plain GroupNorm.
    """

    frame_lens = PerThread()  # Optional[Tensor], set by SSLUpstream.forward

    def forward(self, x: Tensor) -> Tensor:  # x: [b, c, t]
        if self.frame_lens is None:
            return super().forward(x)
        # One native group_norm per segment on its valid frames: bit-identical to encoding it alone, and
        # no [b, c, t]-sized temporaries (this is the largest activation of the whole model).
        # Without autograd (embedding) the result overwrites the conv output it came from: one copy of
        # this tensor fewer at the memory peak (the conv does not keep its output for a backward pass).
        out = x if torch.is_inference_mode_enabled() else torch.zeros_like(x)
        for i, n in enumerate(self.frame_lens.tolist()):
            out[i, :, n:] = 0
            out[i: i + 1, :, :n] = nn.functional.group_norm(x[i: i + 1, :, :n], self.num_groups, self.weight,
                                                            self.bias, self.eps)
        return out


class Upstream(nn.Module):
    """Common contract. Attributes: family, model (the HF module LoRA is injected into), hidden_size,
    num_hidden_states (layers + 1 for the input embeddings), max_chunk_samples (longest input one pass
    accepts), min_samples (shortest input that yields a frame), cnn_prefixes (parameter-name prefixes
    inside `model` of the CNN front-end) and fixed_prefixes (those that never train: the CNN and any
    fixed positional table)."""

    cnn_prefixes: Tuple[str, ...] = ()
    fixed_prefixes: Tuple[str, ...] = ()
    family: str
    model: nn.Module
    hidden_size: int
    num_hidden_states: int
    max_chunk_samples: int
    min_samples: int

    def forward(self, waves: Tensor, wave_lens: Tensor) -> Tuple[List[Tensor], Tensor]:
        """Args:
            waves: float [b, t] zero-padded; wave_lens: long [b], each <= max_chunk_samples.
        Returns:
            hidden: num_hidden_states tensors [b, t', d]; index 0 = input embeddings, -1 = the model's
                final output (after any final layer norm); frames past frame_lens hold garbage.
            frame_lens: long [b].
        """
        raise NotImplementedError


class SSLUpstream(Upstream):
    """wav2vec2 / HuBERT / WavLM / data2vec-audio: raw waveform in, attention mask honoured."""

    cnn_prefixes = ("feature_extractor.",)
    fixed_prefixes = ("feature_extractor.",)
    _frame_lens = PerThread()  # Optional[Tensor], set for the duration of forward

    def __init__(self, *, family: str, model: nn.Module, normalize_waveform: bool, max_chunk_samples: int):
        super().__init__()
        self.family = family
        self.model = model
        self.normalize_waveform = normalize_waveform
        self.hidden_size = model.config.hidden_size
        self.num_hidden_states = model.config.num_hidden_layers + 1
        self.max_chunk_samples = max_chunk_samples
        self.min_samples = self._receptive_field()
        # Frozen in every mode. This also stops transformers from marking the waveform as requiring grad
        # in training (its trick for checkpointing a trainable CNN), which would keep CNN activations.
        model.feature_extractor._freeze_parameters()  # (HubertModel lacks the public freeze_feature_encoder)
        self.group_norm: Optional[MaskedGroupNorm] = None
        first = model.feature_extractor.conv_layers[0]
        if isinstance(getattr(first, "layer_norm", None), nn.GroupNorm):
            old = first.layer_norm
            new = MaskedGroupNorm(old.num_groups, old.num_channels, eps=old.eps, affine=old.affine)
            new.load_state_dict(old.state_dict())
            first.layer_norm = new
            self.group_norm = new
        # data2vec-audio's positional embedding is a stack of convs with LayerNorm + GELU between them:
        # a padded frame leaves layer 1 non-zero and leaks into layer 2's window at the segment's end,
        # where encoding alone would see zero padding. Re-zero padded frames after each layer.
        pos_conv = getattr(model.encoder, "pos_conv_embed", None)
        for layer in getattr(pos_conv, "layers", []):
            layer.register_forward_hook(self._zero_padded_frames)

    def _zero_padded_frames(self, module: nn.Module, args: Any, output: Tensor) -> Optional[Tensor]:
        if self._frame_lens is None:
            return None
        return output * rearrange(lengths_to_mask(self._frame_lens, output.shape[-1]), "b t -> b 1 t").to(output.dtype)

    def _receptive_field(self) -> int:
        needed = 1
        for kernel, stride in reversed(list(zip(self.model.config.conv_kernel, self.model.config.conv_stride))):
            needed = (needed - 1) * stride + kernel
        return needed

    def frame_lens(self, wave_lens: Tensor) -> Tensor:
        return self.model._get_feat_extract_output_lengths(wave_lens).long()

    def forward(self, waves: Tensor, wave_lens: Tensor) -> Tuple[List[Tensor], Tensor]:
        if self.normalize_waveform:
            waves = normalize_waves(waves, wave_lens)
        else:
            waves = waves * lengths_to_mask(wave_lens, waves.shape[1])
        attention_mask = lengths_to_mask(wave_lens, waves.shape[1]).long()
        frame_lens = self.frame_lens(wave_lens)
        # Lengths for the padding fixes above, set only for the duration of this call.
        self._frame_lens = frame_lens
        if self.group_norm is not None:
            conv = self.model.feature_extractor.conv_layers[0].conv
            self.group_norm.frame_lens = torch.div(wave_lens - conv.kernel_size[0], conv.stride[0],
                                                   rounding_mode="floor") + 1
        try:
            out = self.model(waves, attention_mask=attention_mask, output_hidden_states=True)
        finally:
            self._frame_lens = None
            if self.group_norm is not None:
                self.group_norm.frame_lens = None
        hidden = list(out.hidden_states)
        hidden[-1] = out.last_hidden_state  # stable-layer-norm models apply a final norm after the last layer
        return hidden, frame_lens


class WhisperUpstream(Upstream):
    """Whisper encoder fed only the mel frames a segment needs.

    transformers' WhisperEncoder.forward insists on exactly 2 x max_source_positions mel frames (30 s),
    so we run its modules ourselves: conv1 -> conv2 -> the first t' positional embeddings -> layers
    with a padding mask -> final layer norm. With `pad_to_30s` every input is padded to the full
    window, nothing is masked, and the hidden states are the stock encoder's (the seed study's way);
    frame_lens still count only the frames of the segment's own audio, so pooling skips the silence.
    """

    cnn_prefixes = ("conv1.", "conv2.")
    fixed_prefixes = ("conv1.", "conv2.", "embed_positions.")  # Whisper's positions are fixed sinusoids

    def __init__(self, *, model: nn.Module, pad_to_30s: bool):
        super().__init__()
        self.family = "whisper"
        self.model = model
        self.pad_to_30s = pad_to_30s
        config = model.config
        self.mel = WhisperLogMel(n_mels=config.num_mel_bins)
        self.hidden_size = config.d_model
        self.num_hidden_states = config.encoder_layers + 1
        self.max_frames = config.max_source_positions * model.conv1.stride[0] * model.conv2.stride[0]
        self.max_chunk_samples = self.max_frames * WHISPER_HOP
        self.min_samples = WHISPER_HOP

    def forward(self, waves: Tensor, wave_lens: Tensor) -> Tuple[List[Tensor], Tensor]:
        enc = self.model
        mel, mel_lens = self.mel(waves, wave_lens, pad_to_samples=self.max_chunk_samples if self.pad_to_30s else None)
        mel = mel.to(enc.conv1.weight.dtype)
        # conv2 (stride 2, padding 1, kernel 3) maps T mel frames to ceil(T / 2) encoder frames.
        frame_lens = torch.div(mel_lens - 1, 2, rounding_mode="floor") + 1
        if self.pad_to_30s:
            x = nn.functional.gelu(enc.conv1(mel))
            x = nn.functional.gelu(enc.conv2(x))
            attention = None
        else:
            # Zero conv1's output past the end, so conv2 sees what its own zero padding would give alone.
            mel_mask = rearrange(lengths_to_mask(mel_lens, mel.shape[-1]), "b t -> b 1 t")
            x = nn.functional.gelu(enc.conv1(mel)) * mel_mask
            x = nn.functional.gelu(enc.conv2(x))
        x = rearrange(x, "b d t -> b t d")
        x = x + enc.embed_positions.weight[: x.shape[1]].to(x.dtype)
        x = nn.functional.dropout(x, p=enc.dropout, training=self.training)
        if not self.pad_to_30s:
            attention = create_bidirectional_mask(config=enc.config, inputs_embeds=x,
                                                  attention_mask=lengths_to_mask(frame_lens, x.shape[1]))
        hidden = [x]
        for layer in enc.layers:
            skip = self.training and enc.layerdrop > 0.0 and bool(torch.rand([]) < enc.layerdrop)
            if not skip:
                x = layer(x, attention)
            hidden.append(x)
        hidden[-1] = enc.layer_norm(x)
        return hidden, frame_lens


def build_upstream(*, family: str, backbone: nn.Module, normalize_waveform: bool, pad_to_30s: bool,
                   max_chunk_sec: float, sample_rate: int) -> Upstream:
    """Wrap a backbone from `build_backbone` in its upstream class.

    Args:
        normalize_waveform: wav2vec2 family only (Whisper's own front-end does not normalise).
        pad_to_30s: Whisper only.
        max_chunk_sec: longest input of one pass for the wav2vec2 family (Whisper's is its window).
    """
    if sample_rate != EXPECTED_SAMPLE_RATE:
        raise ConfigError(f"data.sample_rate={sample_rate}: the {family} encoder expects "
                          f"{EXPECTED_SAMPLE_RATE} Hz audio; set data.sample_rate={EXPECTED_SAMPLE_RATE}")
    if family == "whisper":
        return WhisperUpstream(model=backbone, pad_to_30s=pad_to_30s)
    return SSLUpstream(family=family, model=backbone, normalize_waveform=normalize_waveform,
                       max_chunk_samples=max(int(round(max_chunk_sec * sample_rate)), 1))
