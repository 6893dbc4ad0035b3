"""How far silero-vad's speech probability rises on sounds that are not speech (what `segmenter.speech_prob`
must stay above for silero to drop them): tones, dual tones, noise bursts, clicks, hum and beeps on a
-80 dBFS noise floor, at 16 and 8 kHz. Prints, per sound, the highest 0.1-s mean probability, the measure
the segmenter compares with `segmenter.speech_prob` (data/segmenter.py `is_speech`).

    python benchmarks/bench_silero_nonspeech.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxemo.config import SegmenterConfig  # noqa: E402
from ctxemo.data.call_frames import frames_of_array  # noqa: E402
from ctxemo.data.segmenter import _moving_average  # noqa: E402

SECONDS, SOUND = 4.0, (1.0, 3.0)  # a 4-s recording with the sound from 1 to 3 s


def peak_speech_prob(wave: np.ndarray, sample_rate: int) -> float:
    cfg = SegmenterConfig()
    prob = frames_of_array(wave, sample_rate=sample_rate, cfg=cfg, vad="silero").speech_prob[0]
    return float(_moving_average(prob, int(round(0.1 / cfg.hop_sec))).max())


def sounds(sample_rate: int, rng: np.random.Generator) -> dict:
    """name -> the sound itself, float [t] over SOUND."""
    t = np.arange(int((SOUND[1] - SOUND[0]) * sample_rate)) / sample_rate
    sine = lambda f: np.sin(2 * np.pi * f * t)  # noqa: E731
    out = {f"tone {f} Hz @{amp}": amp * sine(f) for f in (100, 200, 300, 440, 1000, 2000, 3000) for amp in (0.03, 0.3)}
    out.update({f"dual tone {a}+{b} Hz": 0.1 * (sine(a) + sine(b)) for a, b in ((697, 1209), (941, 1477), (440, 480), (350, 440))})
    lowpass = signal.butter(2, 500, fs=sample_rate)
    for amp in (0.01, 0.1):
        out[f"white noise @{amp}"] = amp * rng.standard_normal(len(t))
        out[f"noise < 500 Hz @{amp}"] = 5 * amp * signal.lfilter(*lowpass, rng.standard_normal(len(t)))
    clicks = np.zeros(len(t))
    for start in range(0, len(t) - 40, sample_rate // 7):
        clicks[start:start + 40] = 0.5 * rng.standard_normal(40)
    out["clicks 7/s"] = clicks
    out["hum 50 Hz square @0.05"] = 0.05 * np.sign(sine(50))
    beeps = np.zeros(len(t))
    for k in range(8):
        s = k * sample_rate // 4
        beeps[s:s + sample_rate // 8] = 0.2 * sine(440 + 100 * k)[s:s + sample_rate // 8]
    out["beeps 440-1140 Hz"] = beeps
    return out


def main() -> int:
    rng = np.random.default_rng(0)
    print("| sound | 16 kHz | 8 kHz |\n|---|---|---|")
    peaks = {}
    for sample_rate in (16000, 8000):
        for name, sound in sounds(sample_rate, rng).items():
            wave = 1e-4 * rng.standard_normal(int(SECONDS * sample_rate))
            a = int(SOUND[0] * sample_rate)
            wave[a:a + len(sound)] += sound
            peaks.setdefault(name, []).append(peak_speech_prob(wave, sample_rate))
    for name, (wide, narrow) in peaks.items():
        print(f"| {name} | {wide:.2f} | {narrow:.2f} |")
    threshold = SegmenterConfig().speech_prob
    passing = sorted(name for name, p in peaks.items() if max(p) >= threshold)
    print(f"reach speech_prob {threshold} (kept as speech): {', '.join(passing) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
