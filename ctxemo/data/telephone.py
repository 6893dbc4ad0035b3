"""Telephone bands: how wide an audio's spectrum is, and the telephone channel simulated for training.

A model trained on wideband speech reads a telephone-band turn (8 kHz, 300-3400 Hz) as a different
voice: issue 16 measured calm turns 100% negative through it, without a word. Bundles therefore
record the training audio's band edge (`upper_band_edge_hz`) and inputs are compared with it; and
`data.telephone_share` embeds a share of training segments through `simulate_telephone`, so one
model can serve both.
"""
from __future__ import annotations

import zlib
from typing import Optional, Sequence

import numpy as np
from scipy import signal

TELEPHONE_RATE = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
EDGE_DB = 40.0  # the band edge: highest frequency within this of the telephone band's median power
MISMATCH_RATIO = 1.25  # band edges further apart than this factor (either way) are a mismatch


BAND_MIN_SAMPLES = 512  # one Welch window: the shortest segment whose band edge can be measured


def upper_band_edge_hz(waves: Sequence[np.ndarray], sample_rate: int) -> Optional[float]:
    """Highest frequency whose power (Welch, over all `waves` together) lies within EDGE_DB of the median
    power over the telephone band (300-3400 Hz); None without audio. The reference is the band every
    line passes, so speech's own high-frequency roll-off (-30 dB at 3 kHz is common) does not read as a
    band limit; EDGE_DB sits between that roll-off and a channel filter's stop band. Telephone audio
    gives ~4-5 kHz (its filters' slopes), wideband 16-kHz audio 6-8 kHz. Resampling does not move it:
    an 8-kHz call read at 16 kHz still ends near 4 kHz."""
    # Segments shorter than one Welch window are left out: every spectrum must share its bins.
    waves = [np.asarray(w, dtype=np.float64) for w in waves if len(w) >= BAND_MIN_SAMPLES]
    if not waves:
        return None
    power, total = None, 0
    for w in waves:
        f, p = signal.welch(w, fs=sample_rate, nperseg=BAND_MIN_SAMPLES)
        power, total = (p * len(w) if power is None else power + p * len(w)), total + len(w)
    # Smoothed over 5 bins (~150 Hz; zero-padded at the ends, which only lowers them): one notch or
    # harmonic does not decide it.
    db = 10.0 * np.log10(np.convolve(power / total, np.ones(5) / 5, mode="same") + 1e-30)
    in_band = (f >= TELEPHONE_BAND_HZ[0]) & (f <= TELEPHONE_BAND_HZ[1])
    above = np.flatnonzero(db >= np.median(db[in_band]) - EDGE_DB)
    return float(f[above[-1]])


def band_mismatch(trained_edge_hz: Optional[float], input_edge_hz: Optional[float]) -> bool:
    if not trained_edge_hz or not input_edge_hz:
        return False
    ratio = input_edge_hz / trained_edge_hz
    return ratio < 1.0 / MISMATCH_RATIO or ratio > MISMATCH_RATIO


def simulate_telephone(wave: np.ndarray, sample_rate: int, *, codec: bool = True) -> np.ndarray:
    """The wave as a telephone line passes it, at the same rate: 300-3400 Hz band-pass, 8 kHz sampling,
    and with `codec` 8-bit mu-law quantisation (G.711's noise). float32 [t] -> float32 [t]."""
    x = np.asarray(wave, dtype=np.float64)
    sos = signal.butter(4, TELEPHONE_BAND_HZ, btype="bandpass", fs=sample_rate, output="sos")
    x = signal.resample_poly(signal.sosfilt(sos, x), TELEPHONE_RATE, sample_rate)
    if codec:
        mu = 255.0
        y = np.sign(x) * np.log1p(mu * np.minimum(np.abs(x), 1.0)) / np.log1p(mu)
        y = np.round(y * 127.0) / 127.0
        x = np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu
    x = signal.resample_poly(x, sample_rate, TELEPHONE_RATE)[: len(wave)]
    return np.pad(x, (0, len(wave) - len(x))).astype(np.float32)


def is_telephone_row(key: str, share: float) -> bool:
    """Whether the row named `key` (path + crop) is embedded through the telephone channel: a fixed
    draw per row, so a rerun, the cache and the bundle's encoder check all see the same audio."""
    return share > 0 and (zlib.crc32(key.encode("utf-8")) % 10_000) < share * 10_000
