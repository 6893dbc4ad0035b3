"""Signal synthesis for the synthetic hotline corpus: one turn's voice, and whole-call recordings.

A turn is a pulse train on a Mandarin-like tonal f0 contour, mixed with aspiration noise by
`voicing`, shaped per syllable by vowel formants, gated by a syllable-rate envelope, coloured by a
phone line or headset and set to a target loudness: each cue the sampler in `synthetic.py` sets
(pitch, pitch movement, loudness, rate, breathiness, brightness) is audible. ~150x real time.
"""
from __future__ import annotations

import csv
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
from scipy import signal

from ctxemo.errors import AudioError, ManifestError

TURNS_COLUMNS = ("call_id", "segment_index", "role", "start", "end", "audio", "caller_id", "negative", "labels")

# Rough Mandarin-ish vowel formants (F1, F2, F3) in Hz for an average adult voice.
_VOWELS = np.array([
    [750.0, 1250.0, 2600.0],  # a
    [300.0, 2300.0, 3000.0],  # i
    [330.0, 800.0, 2400.0],   # u
    [480.0, 1900.0, 2600.0],  # e
    [500.0, 900.0, 2500.0],   # o
    [300.0, 1800.0, 2200.0],  # ü
    [600.0, 1300.0, 2500.0],  # schwa-ish
])
_FORMANT_BW_HZ = np.array([90.0, 110.0, 170.0])


@dataclass(frozen=True)
class VoiceParams:
    """The acoustic parameters of one segment, in physical units (what the synthesiser obeys)."""

    f0_hz: float  # mean pitch
    pitch_var_st: float  # size of tonal / intonation movement, semitones
    level_dbfs: float  # RMS level of the voiced parts, dB re full scale
    rate_syl: float  # syllables per second
    voicing: float  # harmonic share of the excitation, 0..1 (low = breathy)
    brightness: float  # spectral tilt: + brighter (flatter source spectrum), - darker
    formant_scale: float  # vocal-tract size (1 = average; >1 shorter tract, higher formants)


@dataclass(frozen=True)
class ChannelParams:
    """A telephone line or headset: band edges and a first-order tilt."""

    low_hz: float
    high_hz: float
    tilt: float  # coefficient of 1 - tilt*z^-1 (positive = brighter line)
    noise_dbfs: float  # background noise floor


def _resonator(freq_hz: float, bw_hz: float, sample_rate: int) -> np.ndarray:
    """Denominator of a two-pole resonance."""
    r = np.exp(-np.pi * bw_hz / sample_rate)
    return np.array([1.0, -2.0 * r * np.cos(2.0 * np.pi * freq_hz / sample_rate), r * r])


def _syllables(n: int, rate_syl: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """[k, 2] int start/end samples of syllable nuclei, roughly `rate_syl` per second."""
    mean_gap = sample_rate / rate_syl
    bounds = []
    pos = rng.uniform(0.02, 0.12) * sample_rate
    while pos < n - 0.05 * sample_rate:
        length = mean_gap * rng.uniform(0.55, 0.85)
        bounds.append((int(pos), int(min(pos + length, n - 1))))
        pos += mean_gap * rng.gamma(12.0, 1.0 / 12.0)
    if not bounds:
        bounds.append((0, n - 1))
    return np.asarray(bounds, dtype=np.int64)


def synthesize_segment(
    voice: VoiceParams, channel: ChannelParams, *, n_samples: int, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One speech turn as float32 [n_samples] in [-1, 1].

    Args:
        voice: the segment's acoustic parameters.
        channel: the line it is heard through.
        n_samples: output length (the turn's duration times `sample_rate`).
        sample_rate: Hz.
        rng: the only source of randomness (syllable timing, tones, vowels, noise).
    Returns:
        float32 [n_samples].
    """
    n = int(n_samples)
    syl = _syllables(n, voice.rate_syl, sample_rate, rng)

    # f0 contour in semitones around the mean: declination plus one Mandarin-like tone per syllable
    # (level, rising, dipping, falling), all scaled by the speaker's pitch movement.
    semitones = np.linspace(0.6, -0.6, n) * voice.pitch_var_st
    envelope = np.zeros(n)
    burst = np.zeros(n)
    for s, e in syl:
        u = np.linspace(0.0, 1.0, e - s)
        tone = rng.integers(4)
        shape = (np.full_like(u, 0.8), -0.8 + 1.6 * u, -0.3 - 1.0 * np.sin(np.pi * u), 1.0 - 2.0 * u)[tone]
        semitones[s:e] += voice.pitch_var_st * (shape + rng.normal(0.0, 0.3))
        envelope[s:e] = np.sin(np.pi * u) ** 0.6 * rng.uniform(0.6, 1.0)
        if rng.random() < 0.5:  # an unvoiced consonant (noise burst) just before the vowel
            b = int(rng.uniform(0.02, 0.05) * sample_rate)
            b0 = max(0, s - b)
            burst[b0:s] = np.hanning(s - b0 + 2)[1:-1] * 0.5 if s > b0 else 0.0
    # Slow pitch wander (sd ~0.17 semitone, ~1%) so the voice is never perfectly periodic.
    jitter = signal.lfilter([0.02], [1.0, -0.98], rng.normal(0.0, 1.0, n)) * 1.7
    f0 = voice.f0_hz * 2.0 ** ((semitones + jitter) / 12.0)
    f0 = np.clip(f0, 50.0, 0.45 * sample_rate)

    # Glottal source: one pulse per period, softened by a two-pole lowpass whose pole sets the tilt.
    phase = np.cumsum(f0 / sample_rate)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    pole = float(np.clip(0.86 - 0.07 * voice.brightness, 0.55, 0.97))
    glottal = signal.lfilter([1.0 - pole], [1.0, -pole], pulses)
    glottal = signal.lfilter([1.0 - pole], [1.0, -pole], glottal)
    glottal = np.diff(glottal, prepend=0.0)  # radiation at the lips
    noise = rng.normal(0.0, 1.0, n)
    glottal /= np.sqrt(np.mean(glottal ** 2)) + 1e-12
    v = float(np.clip(voice.voicing, 0.0, 1.0))
    excitation = (np.sqrt(v) * glottal + np.sqrt(1.0 - v) * noise * 0.7) * envelope + noise * burst * 0.4

    # Vowel formants per syllable (filter state carried across syllables).
    out = np.zeros(n)
    zi = np.zeros(2 * len(_FORMANT_BW_HZ))  # state of the cascade of two-pole resonators
    edges = np.concatenate([[0], syl[1:, 0], [n]]) if len(syl) > 1 else np.array([0, n])
    for k in range(len(edges) - 1):
        formants = _VOWELS[rng.integers(len(_VOWELS))] * voice.formant_scale
        formants = np.minimum(formants, 0.45 * sample_rate)
        den = np.array([1.0])
        for f, bw in zip(formants, _FORMANT_BW_HZ):
            den = np.convolve(den, _resonator(float(f), float(bw), sample_rate))
        gain = np.abs(np.polyval(den[::-1], 1.0))  # unity gain at DC keeps vowels comparable
        a, b = edges[k], edges[k + 1]
        out[a:b], zi = signal.lfilter([gain], den, excitation[a:b], zi=zi)

    out = apply_channel(out, channel, sample_rate=sample_rate)
    active = envelope > 0.3
    rms = np.sqrt(np.mean(out[active] ** 2)) if active.any() else np.sqrt(np.mean(out ** 2))
    out *= 10.0 ** (voice.level_dbfs / 20.0) / (rms + 1e-12)
    out += rng.normal(0.0, 10.0 ** (channel.noise_dbfs / 20.0), n)
    return np.clip(out, -0.999, 0.999).astype(np.float32)


def channel_sos(channel: ChannelParams, sample_rate: int) -> Tuple[np.ndarray, np.ndarray]:
    """Second-order sections of the channel's band-pass and its tilt filter (b, a)."""
    high = min(channel.high_hz, 0.45 * sample_rate)
    sos = signal.butter(2, [channel.low_hz, high], btype="bandpass", fs=sample_rate, output="sos")
    return sos, np.array([1.0, -channel.tilt])


def apply_channel(wave: np.ndarray, channel: ChannelParams, *, sample_rate: int) -> np.ndarray:
    sos, tilt = channel_sos(channel, sample_rate)
    return signal.lfilter(tilt, [1.0], signal.sosfilt(sos, wave))


def write_csv_atomic(path: Path, columns: Sequence[str], rows: List[Dict[str, object]]) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_call_recordings(
    manifest_path: str | Path,
    out_dir: str | Path,
    *,
    call_ids: Optional[Sequence[str]] = None,
    stereo: bool = True,
    gap_sec: Tuple[float, float] = (0.3, 1.0),
    crosstalk_db: float = -40.0,
    overlap_share: float = 0.0,
    overlap_sec: Tuple[float, float] = (0.2, 0.5),
    noise_dbfs: Optional[float] = None,
    seed: int = 0,
) -> Path:
    """Join each call's turns into one whole-call recording, with the true turn boundaries.

    Turns follow each other with a silent gap (uniform in `gap_sec`) and a lead-in/out of one gap.
    Stereo puts the caller on channel 0 and the operator on channel 1; the idle channel hears the
    other only as faint crosstalk. Each channel keeps its own line noise between turns (at the floor
    measured in that speaker's turns), so turn edges are not given away by a noise step. Mono
    sums the two channels. Writes `<call_id>.wav` (16-bit) per call and `turns.csv` (call_id,
    segment_index, role, start, end in seconds, plus audio, caller_id, negative, labels, so it is
    itself a whole-call manifest), written last.

    Args:
        manifest_path: a manifest from `generate_corpus` (per-turn wavs, in call order).
        out_dir: folder for the recordings and turns.csv.
        call_ids: calls to join (default: all).
        stereo: two channels (caller, operator) or one.
        gap_sec: range of silence between turns.
        crosstalk_db: level of one speaker on the other's channel.
        overlap_share: share of turn changes (caller <-> operator) where the next speaker starts before
            the other has finished, by `overlap_sec` (at most half the earlier turn); the turns then overlap.
        noise_dbfs: line noise added to both channels over the whole call (None: only the turns' own).
        seed: gaps and noise (a call's recording depends on `seed` and its call_id only).
    Returns:
        Path of turns.csv.
    """
    manifest_path = Path(manifest_path)
    with open(manifest_path, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    by_call: Dict[str, List[Dict[str, str]]] = {}
    for row in table:
        by_call.setdefault(row["call_id"], []).append(row)
    wanted = list(by_call) if call_ids is None else list(call_ids)
    missing = [c for c in wanted if c not in by_call]
    if missing:
        raise ManifestError(f"{manifest_path}: no call(s) {missing} in column 'call_id'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    turns_path = out / "turns.csv"
    turns_path.unlink(missing_ok=True)
    cross = 10.0 ** (crosstalk_db / 20.0)
    turns: List[Dict[str, object]] = []
    for call_id in wanted:
        rng = np.random.default_rng([seed, zlib.crc32(call_id.encode("utf-8"))])
        rows = sorted(by_call[call_id], key=lambda r: int(r["segment_index"]))
        waves, sample_rate = [], None
        for row in rows:
            wave, sr = sf.read(manifest_path.parent / row["audio"], dtype="float32", always_2d=True)
            if sample_rate is not None and sr != sample_rate:
                raise AudioError(f"{manifest_path.parent / row['audio']}: {sr} Hz, but earlier turns of "
                                 f"{call_id} are {sample_rate} Hz")
            sample_rate = sr
            waves.append(wave.mean(axis=1))
        assert sample_rate is not None
        gaps = [int(round(rng.uniform(*gap_sec) * sample_rate)) for _ in range(len(waves) + 1)]
        starts, pos = [], gaps[0]
        for i, (row, wave) in enumerate(zip(rows, waves)):
            if overlap_share > 0 and i and row["role"] != rows[i - 1]["role"] and rng.random() < overlap_share:
                pos -= gaps[i] + min(int(rng.uniform(*overlap_sec) * sample_rate), len(waves[i - 1]) // 2)
            starts.append(pos)
            pos += len(wave) + gaps[i + 1]
        total = pos
        floors = [_noise_floor([w for w, r in zip(waves, rows) if _channel_of(r) == ch], sample_rate) for ch in (0, 1)]
        audio = np.stack([rng.normal(0.0, floor, total) for floor in floors], axis=1)
        speech = np.zeros_like(audio)  # each speaker's own channel; the line noise stays where it is
        for row, wave, pos in zip(rows, waves, starts):
            own = _channel_of(row)
            speech[pos:pos + len(wave), own] += wave  # the turn carries its own line noise
            audio[pos:pos + len(wave), own] = 0.0
            turns.append({
                "call_id": call_id, "segment_index": int(row["segment_index"]), "role": row["role"],
                "start": f"{pos / sample_rate:.6f}", "end": f"{(pos + len(wave)) / sample_rate:.6f}",
                "audio": f"{call_id}.wav", "caller_id": row.get("caller_id", ""),
                "negative": row.get("negative", ""), "labels": row.get("labels", ""),
            })
        audio += speech + cross * speech[:, ::-1]
        if noise_dbfs is not None:
            audio += rng.normal(0.0, 10.0 ** (noise_dbfs / 20.0), audio.shape)
        if not stereo:
            audio = audio.sum(axis=1)
        sf.write(out / f"{call_id}.wav", np.clip(audio, -0.999, 0.999).astype(np.float32), sample_rate,
                 subtype="PCM_16")
    write_csv_atomic(turns_path, TURNS_COLUMNS, turns)
    return turns_path


def _channel_of(row: Dict[str, str]) -> int:
    return 0 if row["role"] == "caller" else 1


def _noise_floor(waves: List[np.ndarray], sample_rate: int) -> float:
    """RMS of the quietest 20-ms frames of these turns (their line noise); tiny when there are none."""
    hop = max(1, sample_rate // 50)
    frames = [np.sqrt(np.mean(w[: len(w) // hop * hop].reshape(-1, hop) ** 2, axis=1)) for w in waves if len(w) >= hop]
    if not frames:
        return 1e-5
    return float(np.median([np.quantile(f, 0.05) for f in frames]))
