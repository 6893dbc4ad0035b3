"""Cut a whole-call recording into speech segments: energy VAD with hysteresis, per channel.

Method: frame energy (20-ms frames, 10-ms hop) against each channel's own noise floor (a low quantile
of its frame energies). A segment starts where energy rises `start_db` above the floor and lasts while
it stays `stop_db` above it (hysteresis: dips between syllables do not end it, short noise does not
start it). On multi-channel calls, where several channels are active the one louder above its own
floor owns the frame (the other hears crosstalk or echo). A speaker's pauses shorter than
`min_silence_sec` (`speaker_min_silence_sec` when each channel carries one speaker) are bridged unless
another channel speaks in them; segments longer than `max_segment_sec` are split at their quietest
pause; shorter than `min_segment_sec` they are reported, not scored.
Why this method: no new dependency or model download on a private hotline machine, deterministic and
explainable thresholds, and on hotline recordings (one speaker per channel, or a clean mono line)
energy relative to each channel's own floor is enough; gain and line noise may differ freely between
calls and channels. It assumes at least `floor_quantile` of each channel is pause.

Legend: k = channels, t = samples, f = frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

_EPS_POWER = 1e-10  # -100 dBFS: the energy of digital silence


@dataclass(frozen=True)
class SegmenterConfig:
    """Knobs of `segment_recording` (seconds and dB); the defaults suit telephone speech."""

    frame_sec: float = 0.02
    hop_sec: float = 0.01
    floor_quantile: float = 0.05  # share of frames assumed to be pauses (noise floor estimate)
    start_db: float = 12.0  # a segment starts where energy rises this far above the channel's floor ...
    stop_db: float = 6.0  # ... and lasts while it stays this far above it
    min_speech_dbfs: float = -55.0  # never start below this level: digital silence + dither is not speech
    min_silence_sec: float = 0.3  # shorter pauses are bridged (pauses inside a turn) ...
    # ... or, on a channel that carries one speaker (two-channel calls), pauses up to this long: a turn
    # change shows up on the other channel there, so slow speech need not be cut into pieces.
    speaker_min_silence_sec: float = 0.5
    min_segment_sec: float = 0.3  # shorter segments are reported as too short, not scored
    max_segment_sec: float = 15.0  # longer ones are split at their quietest pause
    pad_sec: float = 0.1  # widen each segment by this much (never into a neighbour): onsets are soft

    def __post_init__(self) -> None:
        if not 0 < self.hop_sec <= self.frame_sec:
            raise ValueError(f"need 0 < hop_sec <= frame_sec, got {self.hop_sec}, {self.frame_sec}")
        if self.stop_db > self.start_db:
            raise ValueError(f"stop_db ({self.stop_db}) must not exceed start_db ({self.start_db})")
        if not 0 < self.min_segment_sec < self.max_segment_sec:
            raise ValueError(f"need 0 < min_segment_sec < max_segment_sec, got {self.min_segment_sec}, "
                             f"{self.max_segment_sec}")


@dataclass(frozen=True)
class SpeechSegment:
    """One detected segment: seconds from the start of the recording, and the channel that owns it."""

    start_sec: float
    end_sec: float
    channel: int
    speech_sec: float  # detected speech before padding (what min/max_segment_sec are checked on)

    @property
    def duration_sec(self) -> float:
        return self.end_sec - self.start_sec


@dataclass
class Segmentation:
    segments: List[SpeechSegment]  # in time order; each has speech_sec >= min_segment_sec
    too_short: List[SpeechSegment] = field(default_factory=list)  # detected but too short to score
    duration_sec: float = 0.0
    floors_dbfs: List[float] = field(default_factory=list)  # noise floor per channel


# ----------------------------------------------------------------------------- frame-level pieces

def frame_energy_db(wave: np.ndarray, *, sample_rate: int, frame_sec: float, hop_sec: float) -> np.ndarray:
    """Mean power per frame in dBFS, from a running sum of squares (O(t), no frame copies).

    Args:
        wave: float [t] samples in [-1, 1].
    Returns:
        float64 [f] with f = 1 + (t - frame) // hop (at least 1 frame for non-empty audio).
    """
    frame = max(1, int(round(frame_sec * sample_rate)))
    hop = max(1, int(round(hop_sec * sample_rate)))
    x = np.asarray(wave, dtype=np.float64)
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.arange(0, len(x) - frame + 1, hop)
    power = (csum[starts + frame] - csum[starts]) / frame
    return 10.0 * np.log10(np.maximum(power, 0.0) + _EPS_POWER)


def runs(mask: np.ndarray) -> List[Tuple[int, int]]:
    """[(first, end)] of each run of True in a bool [f] mask (end exclusive)."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def hysteresis(energy_db: np.ndarray, *, start: float, stop: float) -> np.ndarray:
    """bool [f]: frames in a run above `stop` that somewhere rises above `start` (two-threshold VAD)."""
    out = np.zeros(len(energy_db), dtype=bool)
    for a, b in runs(energy_db > stop):
        if energy_db[a:b].max() > start:
            out[a:b] = True
    return out


def close_gaps(mask: np.ndarray, max_gap: int, *, blocked: Optional[np.ndarray] = None) -> np.ndarray:
    """Fill runs of False no longer than `max_gap` frames that lie between two True runs, unless they
    hold a `blocked` frame (e.g. another speaker's turn)."""
    out = np.asarray(mask, dtype=bool).copy()
    for a, b in runs(~out):
        if a > 0 and b < len(out) and b - a <= max_gap and (blocked is None or not blocked[a:b].any()):
            out[a:b] = True
    return out


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    width = max(1, width)
    return np.convolve(x, np.ones(width) / width, mode="same")


def _split_long(a: int, b: int, energy: np.ndarray, *, max_len: int, min_len: int) -> List[Tuple[int, int]]:
    """Split frames [a, b) into pieces of at most `max_len`, each cut at the quietest frame (smoothed
    energy) that leaves both sides at least `min_len` long: two pieces when that suffices, else a first
    piece of max_len / 2 .. max_len and the rest split again."""
    if b - a <= max_len:
        return [(a, b)]
    lo = b - max_len if b - a <= 2 * max_len else a + max_len // 2
    lo, hi = max(lo, a + min_len), min(a + max_len, b - min_len)
    cut = (a + b) // 2 if hi <= lo else lo + int(np.argmin(energy[lo:hi]))
    return (_split_long(a, cut, energy, max_len=max_len, min_len=min_len)
            + _split_long(cut, b, energy, max_len=max_len, min_len=min_len))


# ----------------------------------------------------------------------------- whole recordings

def segment_recording(audio: np.ndarray, *, sample_rate: int,
                      config: SegmenterConfig = SegmenterConfig()) -> Segmentation:
    """Speech segments of a (mono or multi-channel) recording.

    Args:
        audio: float [t] (mono) or [k, t] (one row per channel), samples in [-1, 1], all finite.
        sample_rate: Hz.
        config: thresholds and lengths.
    Returns:
        Segmentation: segments (time order, each owned by one channel), too-short detections, duration.
        No speech at all gives empty lists (the caller decides what a silent recording means).

    Example:
        >>> sr = 16000; t = np.arange(3 * sr) / sr
        >>> wave = 1e-4 * np.random.default_rng(0).standard_normal(3 * sr)
        >>> wave[sr:2 * sr] += 0.3 * np.sin(2 * np.pi * 200 * t[sr:2 * sr])
        >>> [(round(s.start_sec, 2), round(s.end_sec, 2)) for s in segment_recording(wave, sample_rate=sr).segments]
        [(0.9, 2.1)]
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 1:
        audio = audio[None]
    k, t = audio.shape
    cfg = config
    hop = cfg.hop_sec
    energy = np.stack([frame_energy_db(ch, sample_rate=sample_rate, frame_sec=cfg.frame_sec, hop_sec=hop)
                       for ch in audio])  # [k, f]
    n_frames = energy.shape[1]
    floors = np.quantile(energy, cfg.floor_quantile, axis=1)  # [k]
    snr = energy - floors[:, None]

    # 1. Each channel on its own: two-threshold (hysteresis) activity against its own floor.
    active = np.zeros((k, n_frames), dtype=bool)
    for c in range(k):
        start = max(floors[c] + cfg.start_db, cfg.min_speech_dbfs)
        stop = max(floors[c] + cfg.stop_db, cfg.min_speech_dbfs - (cfg.start_db - cfg.stop_db))
        active[c] = hysteresis(energy[c], start=start, stop=stop)

    # 2. Who owns each frame: of the active channels, the one louder above its own floor (smoothed over
    # 0.1 s); the quieter one hears crosstalk or echo there.
    smoothed_snr = np.stack([_moving_average(row, int(round(0.1 / hop))) for row in snr])
    owner = np.where(active.any(axis=0), np.argmax(np.where(active, smoothed_snr, -np.inf), axis=0), -1)

    # 3. Per channel, bridge pauses no other channel speaks in; split long regions at their quietest pause.
    max_gap = int(round((cfg.speaker_min_silence_sec if k > 1 else cfg.min_silence_sec) / hop))
    max_len = max(1, int(round(cfg.max_segment_sec / hop)))
    min_len = max(1, int(round(cfg.min_segment_sec / hop)))
    regions: List[Tuple[int, int, int]] = []
    for c in range(k):
        mine = close_gaps(owner == c, max_gap, blocked=(owner >= 0) & (owner != c))
        smoothed = _moving_average(energy[c], int(round(0.2 / hop)))
        for a, b in runs(mine):
            regions += [(p, q, c) for p, q in _split_long(a, b, smoothed, max_len=max_len, min_len=min_len)]
    regions.sort()

    # 4. Frames -> seconds, widened by pad_sec but never past the midpoint to a neighbour.
    half_frame = cfg.frame_sec / 2.0
    duration = t / float(sample_rate)
    bounds = [(a * hop + half_frame - hop / 2.0, (b - 1) * hop + half_frame + hop / 2.0) for a, b, _ in regions]
    segments, too_short = [], []
    for i, ((a, b, c), (s, e)) in enumerate(zip(regions, bounds)):
        left = 0.0 if i == 0 else (bounds[i - 1][1] + s) / 2.0
        right = duration if i == len(regions) - 1 else (e + bounds[i + 1][0]) / 2.0
        seg = SpeechSegment(start_sec=max(left, s - cfg.pad_sec, 0.0), end_sec=min(right, e + cfg.pad_sec, duration),
                            channel=int(c), speech_sec=e - s)
        (segments if seg.speech_sec >= cfg.min_segment_sec - 1e-9 else too_short).append(seg)
    return Segmentation(segments=segments, too_short=too_short, duration_sec=duration,
                        floors_dbfs=[float(f) for f in floors])
