"""Read one segment of audio: soundfile for decoding (any rate, any channel count), torchaudio
for resampling. Every failure names the file, because hotline corpora are messy."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from ctxemo.errors import AudioError


def resample(wave: np.ndarray, *, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed sinc).

    Args:
        wave: float32 [t] mono samples.
    Returns:
        float32 [t * target_sr / orig_sr].
    """
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), orig_sr, target_sr)
    return out.numpy()


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """Header of an audio file (rate, channels, frames), with an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        return sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError variants
        raise AudioError(f"cannot read audio file {path}: {exc}") from None


def read_audio(
    path: str | Path,
    *,
    start_sec: Optional[float] = None,
    end_sec: Optional[float] = None,
    channel: int = -1,
    target_sr: int = 16000,
) -> np.ndarray:
    """Read a (part of a) recording as mono float32 at `target_sr`.

    Args:
        path: wav/flac/ogg file.
        start_sec, end_sec: crop inside the file (None = from the start / to the end).
        channel: -1 mixes all channels down (mean); k >= 0 picks channel k (e.g. the caller's side of
            a two-channel call recording).
        target_sr: output sample rate.
    Returns:
        float32 [t] samples in [-1, 1].
    Raises:
        AudioError: missing/unreadable file, bad crop, missing channel, empty audio, NaN/Inf samples.
    """
    path = Path(path)
    info = audio_info(path)
    sr = int(info.samplerate)
    if info.frames <= 0:  # a valid header with no data: say so, rather than blame the crop
        raise AudioError(f"{path}: no samples (empty audio file)")
    first = 0 if start_sec is None or np.isnan(start_sec) else int(round(start_sec * sr))
    last = info.frames if end_sec is None or np.isnan(end_sec) else int(round(end_sec * sr))
    if first < 0 or last <= first or first >= info.frames:
        raise AudioError(
            f"{path}: crop start={start_sec} end={end_sec} s is empty or outside the file "
            f"({info.frames / sr:.3f} s long)"
        )
    try:
        data, _ = sf.read(str(path), start=first, stop=min(last, info.frames), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"cannot decode audio file {path}: {exc}") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no samples (empty or truncated file)")
    if channel >= data.shape[1]:
        raise AudioError(f"{path}: channel {channel} requested but the file has {data.shape[1]} channel(s)")
    wave = data.mean(axis=1) if channel < 0 else data[:, channel]
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: contains NaN or Inf samples")
    return resample(wave, orig_sr=sr, target_sr=target_sr)
