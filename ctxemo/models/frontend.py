"""Batched waveform front-end in torch: padding with lengths, per-segment normalisation over valid
samples, and Whisper's log-mel computed on the unpadded length (no 30-s padding unless asked).

Legend: b = segments in a batch, t = samples (or frames), m = mel bins, f = STFT frequency bins.
Padded positions are always zero on output, so the batch looks exactly like each segment alone
followed by silence that later stages mask out.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchaudio.functional as AF
from einops import rearrange
from torch import Tensor, nn

WHISPER_N_FFT = 400  # 25 ms window at 16 kHz, fixed by Whisper's training
WHISPER_HOP = 160  # 10 ms hop: 100 mel frames per second
WHISPER_SAMPLE_RATE = 16000


def lengths_to_mask(lens: Tensor, max_len: Optional[int] = None) -> Tensor:
    """Bool mask, True where a position is inside its sequence.

    Args:
        lens: long [b] valid lengths.
        max_len: width of the mask (default: lens.max()).
    Returns:
        bool [b, t].

    Example:
        >>> lengths_to_mask(torch.tensor([1, 3])).tolist()
        [[True, False, False], [True, True, True]]
    """
    width = int(lens.max()) if max_len is None else int(max_len)
    positions = torch.arange(width, device=lens.device)
    return positions[None, :] < lens[:, None]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def pad_waves(waves: Sequence[Union[np.ndarray, Tensor]], *, min_samples: int = 1,
              multiple: int = 1) -> Tuple[Tensor, Tensor]:
    """Stack mono waveforms of different lengths into a zero-padded batch.

    Args:
        waves: b float arrays [t_i].
        min_samples: segments shorter than this are zero-padded up to it (and their length says so), so
            that a convolutional front-end always yields at least one frame.
        multiple: pad the batch width up to a multiple of this many samples. Encoders see few distinct
            shapes then: on CPU every new input shape made oneDNN and the allocator keep more memory
            (embedding 2,029 segments peaked at 1.5-1.7 GB with exact widths, 1.0 GB without that cache).
    Returns:
        waves: float32 [b, t] with zeros after each segment's end.
        wave_lens: long [b] valid samples per segment.
    """
    tensors = [torch.as_tensor(np.asarray(w, dtype=np.float32) if isinstance(w, np.ndarray) else w).float()
               for w in waves]
    lens = torch.tensor([max(int(w.shape[0]), min_samples) for w in tensors], dtype=torch.long)
    out = torch.zeros(len(tensors), round_up(int(lens.max()), multiple) if len(tensors) else 0)
    for i, w in enumerate(tensors):
        out[i, : w.shape[0]] = w
    return out, lens


def normalize_waves(waves: Tensor, wave_lens: Tensor, *, eps: float = 1e-7) -> Tensor:
    """Zero-mean, unit-variance per segment, statistics over valid samples only (wav2vec2 family).

    Matches transformers' ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`` (population variance,
    eps inside the square root); padding stays zero so a padded segment normalises as if alone.

    Args:
        waves: float [b, t] padded batch.
        wave_lens: long [b].
    Returns:
        float32 [b, t].
    """
    waves = waves.float()
    mask = lengths_to_mask(wave_lens, waves.shape[1]).float()
    count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (waves * mask).sum(dim=1, keepdim=True) / count
    var = (((waves - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
    return (waves - mean) / torch.sqrt(var + eps) * mask


def whisper_mel_filters(n_mels: int, *, sample_rate: int = WHISPER_SAMPLE_RATE, n_fft: int = WHISPER_N_FFT) -> Tensor:
    """Slaney-normalised Slaney-scale mel filterbank, as Whisper (and transformers) build it.

    Returns:
        float32 [f, m] with f = n_fft // 2 + 1.
    """
    return AF.melscale_fbanks(
        n_freqs=n_fft // 2 + 1, f_min=0.0, f_max=sample_rate / 2, n_mels=n_mels,
        sample_rate=sample_rate, norm="slaney", mel_scale="slaney",
    )


class WhisperLogMel(nn.Module):
    """Whisper's log-mel spectrogram for a padded batch, frame-exact against WhisperFeatureExtractor.

    transformers pads every clip to 30 s of zeros, frames it with a centred STFT (reflect padding),
    drops the last frame, then clamps each clip at (its max - 8) in log10 and maps x -> (x + 4) / 4.
    Here each segment keeps its own length: the left edge is reflect-padded like the centred STFT, the
    right edge sees zeros exactly as it would inside the 30-s zero padding, and the max is taken over
    the segment's own frames (the 30-s padding only adds frames at log10(1e-10) = -10, which never
    raise the max). Valid frames therefore equal transformers' first ``wave_len // hop`` frames up to
    float rounding (tested to 1e-4 absolute); the one exception is a clip whose loudest STFT frame is
    the final partial frame that both implementations drop from the output but transformers still
    uses for the max.

    Args:
        n_mels: 80 (Whisper up to large-v2) or 128 (large-v3); from the model config's num_mel_bins.
        sample_rate: must be 16 kHz for real Whisper weights.
    """

    def __init__(self, *, n_mels: int = 80, sample_rate: int = WHISPER_SAMPLE_RATE,
                 n_fft: int = WHISPER_N_FFT, hop_length: int = WHISPER_HOP):
        super().__init__()
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.hop_length = hop_length
        # Buffers so .to(device) moves them; not persistent: they are derived, not learned.
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel_filters", whisper_mel_filters(n_mels, sample_rate=sample_rate, n_fft=n_fft),
                             persistent=False)

    def num_frames(self, wave_lens: Tensor) -> Tensor:
        """Valid mel frames per segment (Whisper drops the STFT's last, partial frame)."""
        return torch.div(wave_lens, self.hop_length, rounding_mode="floor").clamp(min=1)

    def forward(self, waves: Tensor, wave_lens: Tensor, *, pad_to_samples: Optional[int] = None
                ) -> Tuple[Tensor, Tensor]:
        """Log-mel of each segment.

        Args:
            waves: float [b, t] zero-padded batch.
            wave_lens: long [b].
            pad_to_samples: pad the batch with zeros to this many samples first (the seed study's 30 s:
                ``n_frames * hop``); frames beyond a segment's end are then kept as real silence frames.
        Returns:
            mel: float32 [b, m, t_frames]; without `pad_to_samples`, frames past a segment's end are 0
                (so a convolution over them behaves like its own zero padding).
            mel_lens: long [b] frames covering each segment's audio.
        """
        # Spectra in float32 even under autocast: log10 of bf16 power would lose the quiet bins.
        with torch.autocast(device_type=waves.device.type, enabled=False):
            waves = waves.float() * lengths_to_mask(wave_lens, waves.shape[1])
            if pad_to_samples is not None and waves.shape[1] < pad_to_samples:
                waves = nn.functional.pad(waves, (0, pad_to_samples - waves.shape[1]))
            half = self.n_fft // 2
            # Centred framing by hand: reflect on the left (same as torch.stft(center=True)), zeros on the
            # right (what the segment sees inside transformers' 30-s zero padding).
            left = waves[:, 1: half + 1].flip(-1)
            if left.shape[1] < half:
                left = nn.functional.pad(left, (half - left.shape[1], 0))
            framed = torch.cat([left, waves, waves.new_zeros(waves.shape[0], half)], dim=1)
            spec = torch.stft(framed, self.n_fft, self.hop_length, window=self.window,
                              center=False, return_complex=True)
            n_out = max(waves.shape[1] // self.hop_length, 1)  # a sub-hop clip still gets one frame
            power = spec[..., :n_out].abs() ** 2  # [b, f, t]
            mel = torch.einsum("b f t, f m -> b m t", power, self.mel_filters)
            log_mel = torch.clamp(mel, min=1e-10).log10()

            mel_lens = self.num_frames(wave_lens)
            valid = lengths_to_mask(mel_lens, n_out)
            if pad_to_samples is not None:
                frame_mask = torch.ones_like(valid)
            else:
                frame_mask = valid
            peak = log_mel.masked_fill(~rearrange(valid, "b t -> b 1 t"), float("-inf")).amax(dim=(1, 2))
            log_mel = torch.maximum(log_mel, rearrange(peak, "b -> b 1 1") - 8.0)
            log_mel = (log_mel + 4.0) / 4.0
            log_mel = log_mel * rearrange(frame_mask, "b t -> b 1 t")
        return log_mel, mel_lens
