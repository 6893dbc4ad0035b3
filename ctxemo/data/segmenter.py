"""Cut a whole-call recording into speech segments (turns), per channel, with crosstalk-proof ownership.

Method, on the frame measures of `call_frames` (10-ms hop, read block by block):
1. Activity per channel: energy against the channel's own noise floor (a low quantile of its frame
   energies), two thresholds (`start_db` / `stop_db`): dips between syllables do not end it, short
   noise does not start it.
2. Crosstalk. On real lines each channel hears the other. A channel active `crosstalk_db` below
   another active channel's level (0.1-s smoothed) only hears that one there.
3. Ownership with hysteresis. A channel keeps a turn through its own pauses (up to
   `speaker_min_silence_sec`); another channel takes over only after speaking `min_turn_sec` on its
   own, and then from the start of that speech, also where it began over the earlier speaker's last
   words (up to `barge_in_sec` of them). Shorter bursts inside a turn (leak edges, clicks) can neither
   split it nor become turns; that is what broke turns into pieces under crosstalk before.
4. Per channel, pauses no other channel owns are bridged (`min_silence_sec` on mono); segments longer
   than `max_segment_sec` are split at their quietest pause.
5. `segmenter.vad: silero` (default): a candidate is kept only where silero-vad's speech probability
   (0.1-s mean) reaches `speech_prob` somewhere inside it; line noise, clicks and tones are dropped.
   `energy`: every candidate is kept. Shorter than `min_segment_sec`, a segment is reported, not
   scored; each is widened by `pad_sec`, never into a neighbour.
Why this split of work: silero separates speech from noise but cannot tell a leak from a voice (it is
level-blind), and its 32-ms decisions drop whole syllables of some voices (on the project's synthetic
voice, 20-50% of a turn's frames; benchmarks/README.md "Segmentation"), which would cut turns; the
energy thresholds give boundaries to a frame and relative levels. Both run without a download
(silero's model ships in its wheel), as a private hotline machine needs.

Legend: k = channels, t = samples, f = frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ctxemo.config import SegmenterConfig
from ctxemo.data.call_frames import (
    CallFrames,
    frame_power_db,
    frames_of_array,
    frames_of_file,
)
from ctxemo.data.vad import resolve_vad

__all__ = ["SegmenterConfig", "SpeechSegment", "Segmentation", "segment_recording", "segment_file",
           "segment_frames", "frame_energy_db", "runs", "hysteresis", "close_gaps", "assign_owners"]


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
    not_speech: int = 0  # candidates silero-vad did not hear as speech (dropped)


# ----------------------------------------------------------------------------- frame-level pieces

def frame_energy_db(wave: np.ndarray, *, sample_rate: int, frame_sec: float, hop_sec: float) -> np.ndarray:
    """Mean power per frame in dBFS of a mono array (what `call_frames` computes block by block).

    Args:
        wave: float [t] samples in [-1, 1].
    Returns:
        float64 [f] with f = 1 + (t - frame) // hop (at least 1 frame for non-empty audio).
    """
    frame = max(1, int(round(frame_sec * sample_rate)))
    hop = max(1, int(round(hop_sec * sample_rate)))
    x = np.asarray(wave, dtype=np.float64)[None]
    if x.shape[1] < frame:
        x = np.pad(x, ((0, 0), (0, frame - x.shape[1])))
    return frame_power_db(x, frame, hop, 1 + (x.shape[1] - frame) // hop)[0]


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


# ----------------------------------------------------------------------------- ownership

OWNER_CHUNK = 4096  # frames whose flags become Python lists at once in `assign_owners`

def assign_owners(active: np.ndarray, level_db: np.ndarray, *, crosstalk_db: float, min_turn: int,
                  max_gap: int, barge_in: int = 0) -> np.ndarray:
    """Which channel owns each frame (-1: nobody speaks).

    Args:
        active: bool [k, f] speech activity per channel (crosstalk included).
        level_db: float [k, f] smoothed frame energy, dBFS.
        crosstalk_db: an active channel this far below another active one only hears that one.
        min_turn: frames another channel must speak on its own before it takes over a turn.
        max_gap: frames of the owner's silence after which its turn is over (the next speaker starts at once).
        barge_in: at a turn change, frames of the owner's last speech that the new speaker's turn may take
            where it spoke over them (0: the new turn starts after the owner's last frame).
    Returns:
        int [f].
    """
    k, n = active.shape
    louder = np.where(active, level_db, -np.inf)
    loudest = louder.max(axis=0)
    eligible = active & (loudest[None] - level_db <= crosstalk_db)  # not a leak of a louder channel
    owner = np.full(n, -1, dtype=np.int64)
    if k == 1:
        owner[eligible[0]] = 0
        return owner
    # A state machine over frames. The owner keeps its turn through its own pauses (up to max_gap). Another
    # channel becomes the contender while it speaks on its own (pauses up to min_turn frames allowed), also
    # over the owner's speech (overlapping turn changes); once it has spoken min_turn frames and the owner
    # is quiet, the turn is its own from its first frame, but from no earlier than `barge_in` frames before
    # the owner's last (a long double-talk does not wipe out the owner's turn).
    # Plain lists, ~10x faster per frame than numpy indexing (an hour-long call has 360k frames), made a
    # chunk at a time: lists of the whole call would cost ~70 MB there.
    current, last_spoke, contender, since, count, quiet = -1, -1, -1, 0, 0, 0
    for f in range(n):
        if f % OWNER_CHUNK == 0:
            speaking_at = eligible[:, f:f + OWNER_CHUNK].T.tolist()
            level_at = level_db[:, f:f + OWNER_CHUNK].T.tolist()
        speaking, levels = speaking_at[f % OWNER_CHUNK], level_at[f % OWNER_CHUNK]
        others = [c for c in range(k) if speaking[c] and c != current]
        if others:
            best = max(others, key=levels.__getitem__)
            if best != contender:
                contender, since, count = best, f, 0
            count, quiet = count + 1, 0
        elif contender >= 0:
            quiet += 1
            if quiet > min_turn:
                contender = -1
        if current >= 0 and speaking[current]:
            owner[f], last_spoke = current, f
            continue
        if current >= 0 and f - last_spoke > max_gap:
            current = -1  # the turn is over
        if contender < 0 or not speaking[contender]:
            continue
        if current < 0:  # nobody's turn: the new speaker starts at once
            current, owner[f], last_spoke, contender = contender, contender, f, -1
        elif count >= min_turn:  # spoke long enough on its own: its turn
            owner[max(since, last_spoke + 1 - barge_in):f + 1] = contender
            current, last_spoke, contender = contender, f, -1
    return owner


# ----------------------------------------------------------------------------- whole recordings

def segment_recording(audio: np.ndarray, *, sample_rate: int,
                      config: SegmenterConfig = SegmenterConfig()) -> Segmentation:
    """Speech segments of an in-memory (mono or multi-channel) recording.

    Args:
        audio: float [t] (mono) or [k, t] (one row per channel), samples in [-1, 1], all finite.
        sample_rate: Hz.
        config: `segmenter.*` settings.
    Returns:
        Segmentation: segments (time order, each owned by one channel), too-short detections, duration.
        No speech at all gives empty lists (the caller decides what a silent recording means).

    Example:
        >>> sr = 16000; t = np.arange(3 * sr) / sr
        >>> wave = 1e-4 * np.random.default_rng(0).standard_normal(3 * sr)
        >>> wave[sr:2 * sr] += 0.3 * np.sin(2 * np.pi * 200 * t[sr:2 * sr])
        >>> cfg = SegmenterConfig(vad="energy")
        >>> [(round(s.start_sec, 2), round(s.end_sec, 2)) for s in segment_recording(wave, sample_rate=sr, config=cfg).segments]
        [(0.9, 2.1)]
    """
    vad, _ = resolve_vad(config.vad)
    return segment_frames(frames_of_array(audio, sample_rate=sample_rate, cfg=config, vad=vad), config)


def segment_file(path: Path, config: SegmenterConfig = SegmenterConfig()) -> Segmentation:
    """Speech segments of a recording on disk, read in blocks (memory flat in call length).

    Raises:
        AudioError: unreadable, empty or NaN samples, naming the file.
    """
    vad, _ = resolve_vad(config.vad)
    return segment_frames(frames_of_file(Path(path), cfg=config, vad=vad), config)


def channel_activity(energy_db: np.ndarray, floors: np.ndarray, cfg: SegmenterConfig) -> np.ndarray:
    """bool [k, f]: step 1 of the method (energy against each channel's floor, with hysteresis)."""
    active = np.zeros(energy_db.shape, dtype=bool)
    for c in range(energy_db.shape[0]):
        start = max(floors[c] + cfg.start_db, cfg.min_speech_dbfs)
        stop = max(floors[c] + cfg.stop_db, cfg.min_speech_dbfs - (cfg.start_db - cfg.stop_db))
        active[c] = hysteresis(energy_db[c], start=start, stop=stop)
    return active


def is_speech(frames: CallFrames, region: Tuple[int, int, int], cfg: SegmenterConfig) -> bool:
    """Step 5: does silero hear speech somewhere in frames [a, b) of channel c (always, for the energy VAD)."""
    if frames.speech_prob is None:
        return True
    a, b, c = region
    prob = _moving_average(frames.speech_prob[c], int(round(0.1 / cfg.hop_sec)))
    return bool(prob[a:b].max() >= cfg.speech_prob)


def segment_frames(frames: CallFrames, cfg: SegmenterConfig) -> Segmentation:
    """Speech segments from a recording's frame measures (steps 1-4 of the module docstring)."""
    energy, hop = frames.energy_db, cfg.hop_sec
    k = frames.n_channels
    floors = np.quantile(energy, cfg.floor_quantile, axis=1)  # [k]
    active = channel_activity(energy, floors, cfg)

    # 2-3. Crosstalk and ownership.
    level = np.stack([_moving_average(row, int(round(0.1 / hop))) for row in energy])
    max_gap = int(round((cfg.speaker_min_silence_sec if k > 1 else cfg.min_silence_sec) / hop))
    owner = assign_owners(active, level, crosstalk_db=cfg.crosstalk_db,
                          min_turn=max(1, int(round(cfg.min_turn_sec / hop))), max_gap=max_gap,
                          barge_in=int(round(cfg.barge_in_sec / hop)))

    # 4-5. Per channel, bridge pauses no other channel speaks in; split long regions at their quietest pause;
    # keep what silero hears as speech.
    max_len = max(1, int(round(cfg.max_segment_sec / hop)))
    min_len = max(1, int(round(cfg.min_segment_sec / hop)))
    regions: List[Tuple[int, int, int]] = []
    for c in range(k):
        mine = close_gaps(owner == c, max_gap, blocked=(owner >= 0) & (owner != c))
        smoothed = _moving_average(energy[c], int(round(0.2 / hop)))
        for a, b in runs(mine):
            regions += [(p, q, c) for p, q in _split_long(a, b, smoothed, max_len=max_len, min_len=min_len)]
    speech = sorted(r for r in regions if is_speech(frames, r, cfg))
    not_speech, regions = len(regions) - len(speech), speech

    # Frames -> seconds, widened by pad_sec but never past the midpoint to a neighbour.
    half_frame = cfg.frame_sec / 2.0
    duration = frames.duration_sec
    bounds = [(a * hop + half_frame - hop / 2.0, (b - 1) * hop + half_frame + hop / 2.0) for a, b, _ in regions]
    segments, too_short = [], []
    for i, ((a, b, c), (s, e)) in enumerate(zip(regions, bounds)):
        left = 0.0 if i == 0 else (bounds[i - 1][1] + s) / 2.0
        right = duration if i == len(regions) - 1 else (e + bounds[i + 1][0]) / 2.0
        seg = SpeechSegment(start_sec=max(left, s - cfg.pad_sec, 0.0), end_sec=min(right, e + cfg.pad_sec, duration),
                            channel=int(c), speech_sec=e - s)
        (segments if seg.speech_sec >= cfg.min_segment_sec - 1e-9 else too_short).append(seg)
    return Segmentation(segments=segments, too_short=too_short, duration_sec=duration,
                        floors_dbfs=[float(f) for f in floors], not_speech=not_speech)
