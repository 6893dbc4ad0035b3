"""A whole-call recording as per-channel frame measures on one grid: energy (dBFS) and, with the silero
VAD, speech probability. Files are read in blocks of `segmenter.block_sec`, so memory stays flat in
call length: what is kept is ~16 bytes per channel per 10-ms frame, never the samples.

Legend: k = channels, t = samples, f = frames (hop `hop_sec`, length `frame_sec`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

from ctxemo.config import SegmenterConfig
from ctxemo.data.audio import audio_info
from ctxemo.errors import AudioError

_EPS_POWER = 1e-10  # -100 dBFS: the energy of digital silence


@dataclass
class CallFrames:
    energy_db: np.ndarray  # float64 [k, f] mean power per frame, dBFS
    speech_prob: Optional[np.ndarray]  # float32 [k, f] silero probability at each frame's centre; None = energy VAD
    hop_sec: float
    frame_sec: float
    duration_sec: float
    sample_rate: int  # of the source

    @property
    def n_channels(self) -> int:
        return self.energy_db.shape[0]


class _EnergyStream:
    """Frame energies of samples pushed in blocks; equal to `frame_energy_db` over the whole recording."""

    def __init__(self, n_channels: int, *, sample_rate: int, frame_sec: float, hop_sec: float):
        self.frame = max(1, int(round(frame_sec * sample_rate)))
        self.hop = max(1, int(round(hop_sec * sample_rate)))
        self._carry = np.zeros((n_channels, 0))
        self._out: list = []
        self._emitted = 0

    def push(self, block: np.ndarray) -> None:
        buf = np.concatenate([self._carry, np.asarray(block, dtype=np.float64)], axis=1)
        if buf.shape[1] >= self.frame:
            n = 1 + (buf.shape[1] - self.frame) // self.hop
            self._out.append(frame_power_db(buf, self.frame, self.hop, n))
            self._emitted += n
            buf = buf[:, n * self.hop:]
        self._carry = buf

    def finish(self) -> np.ndarray:
        if not self._emitted:  # shorter than one frame: one zero-padded frame
            pad = np.zeros((self._carry.shape[0], self.frame))
            pad[:, : self._carry.shape[1]] = self._carry
            self._out.append(frame_power_db(pad, self.frame, self.hop, 1))
        return np.concatenate(self._out, axis=1)


def frame_power_db(x: np.ndarray, frame: int, hop: int, n: int) -> np.ndarray:
    csum = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x * x, axis=1)], axis=1)
    starts = np.arange(n) * hop
    power = (csum[:, starts + frame] - csum[:, starts]) / frame
    return 10.0 * np.log10(np.maximum(power, 0.0) + _EPS_POWER)


class _FrameBuilder:
    def __init__(self, n_channels: int, sample_rate: int, cfg: SegmenterConfig, vad: str):
        from ctxemo.data.vad import SileroStream

        self.sample_rate, self.cfg, self.n_samples = sample_rate, cfg, 0
        self.energy = _EnergyStream(n_channels, sample_rate=sample_rate, frame_sec=cfg.frame_sec, hop_sec=cfg.hop_sec)
        self.silero = SileroStream(n_channels, sample_rate) if vad == "silero" else None

    def push(self, block: np.ndarray) -> None:
        """block: float [k, t] in [-1, 1]."""
        self.n_samples += block.shape[1]
        self.energy.push(block)
        if self.silero is not None:
            self.silero.push(block)

    def finish(self) -> CallFrames:
        energy = self.energy.finish()
        prob = None
        if self.silero is not None:  # window probabilities -> each frame's centre
            windows = self.silero.finish()
            centres = np.arange(energy.shape[1]) * self.cfg.hop_sec + self.cfg.frame_sec / 2.0
            index = np.minimum((centres / self.silero.window_sec).astype(int), max(windows.shape[1] - 1, 0))
            prob = windows[:, index] if windows.shape[1] else np.zeros(energy.shape, dtype=np.float32)
        return CallFrames(energy_db=energy, speech_prob=prob, hop_sec=self.cfg.hop_sec, frame_sec=self.cfg.frame_sec,
                          duration_sec=self.n_samples / float(self.sample_rate), sample_rate=self.sample_rate)


def frames_of_array(audio: np.ndarray, *, sample_rate: int, cfg: SegmenterConfig, vad: str) -> CallFrames:
    """audio: float [t] or [k, t] in memory (tests, live use); `vad`: 'silero' or 'energy'."""
    audio = np.asarray(audio, dtype=np.float32)
    audio = audio[None] if audio.ndim == 1 else audio
    builder = _FrameBuilder(audio.shape[0], sample_rate, cfg, vad)
    step = max(1, int(cfg.block_sec * sample_rate))
    for a in range(0, audio.shape[1], step):
        builder.push(audio[:, a:a + step])
    return builder.finish()


def frames_of_file(path: Path, *, cfg: SegmenterConfig, vad: str) -> CallFrames:
    """Read `path` in blocks of `cfg.block_sec` (all channels, native rate).

    Raises:
        AudioError: unreadable file, no samples, NaN/Inf samples (naming the file and the time).
    """
    info = audio_info(path)
    if info.frames <= 0:
        raise AudioError(f"{path}: empty recording (0 samples)")
    sr = int(info.samplerate)
    builder = _FrameBuilder(int(info.channels), sr, cfg, vad)
    try:
        for block in sf.blocks(str(path), blocksize=max(1, int(cfg.block_sec * sr)), dtype="float32",
                               always_2d=True):
            if not np.isfinite(block).all():
                raise AudioError(f"{path}: contains NaN or Inf samples (near {builder.n_samples / sr:.1f} s)")
            builder.push(block.T)
    except AudioError:
        raise
    except Exception as exc:  # libsndfile errors come in several types
        raise AudioError(f"cannot decode audio file {path}: {exc}") from None
    if builder.n_samples == 0:
        raise AudioError(f"{path}: empty recording (0 samples)")
    return builder.finish()
