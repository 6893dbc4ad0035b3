"""benchmarks/bench_segment.py's turn sources: speech trimmed to its extent, real-speech calls from two
different speakers in the synthetic corpus's order, and a clean skip without the real-speech folder."""
import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 16000
_spec = importlib.util.spec_from_file_location("bench_segment", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_segment.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def tone(seconds: float, *, lead: float = 0.0, tail: float = 0.0) -> np.ndarray:
    """A 0.3-amplitude 200-Hz tone with `lead` / `tail` seconds of -80 dBFS noise around it."""
    rng = np.random.default_rng(0)
    n_lead, n_tone, n_tail = (int(round(x * SR)) for x in (lead, seconds, tail))
    wave = 1e-4 * rng.standard_normal(n_lead + n_tone + n_tail)
    wave[n_lead:n_lead + n_tone] += 0.3 * np.sin(2 * np.pi * 200 * np.arange(n_tone) / SR)
    return wave.astype(np.float32)


def test_speech_span_drops_the_quiet_lead_and_tail():
    span = bench.speech_span(tone(1.0, lead=0.5, tail=0.3), SR)
    assert len(span) / SR == pytest.approx(1.0, abs=0.03)
    assert np.abs(span[:160]).max() > 0.1  # starts in the tone, not in the noise


def write_synthetic_manifest(folder: Path, calls: int, turns: int) -> Path:
    rows = []
    for c in range(calls):
        for i in range(turns):
            rel = f"c{c}_{i}.wav"
            sf.write(folder / rel, tone(0.6), SR, subtype="PCM_16")
            rows.append({"call_id": f"call{c}", "segment_index": i, "audio": rel, "caller_id": f"caller{c}",
                         "role": "caller" if i % 2 else "operator", "duration_sec": "0.6", "negative": 0, "labels": ""})
    manifest = folder / "manifest.csv"
    bench.write_csv_atomic(manifest, list(rows[0]), rows)
    return manifest


def test_real_speech_calls_keep_the_rows_and_give_each_role_its_own_speaker(tmp_path):
    for speaker in ("03", "08", "09"):
        (tmp_path / "real" / "audio" / speaker).mkdir(parents=True)
        for k in range(2):
            sf.write(tmp_path / "real" / "audio" / speaker / f"{speaker}x{k}.wav", tone(0.4, lead=0.2, tail=0.2), SR)
    (tmp_path / "syn").mkdir()
    synthetic = write_synthetic_manifest(tmp_path / "syn", calls=3, turns=4)
    manifest = bench.real_speech_corpus(synthetic, tmp_path / "real", tmp_path / "out")
    rows, before = (list(csv.DictReader(open(m, newline=""))) for m in (manifest, synthetic))
    assert [(r["call_id"], r["segment_index"], r["role"]) for r in rows] == \
           [(r["call_id"], r["segment_index"], r["role"]) for r in before]
    for call in {r["call_id"] for r in rows}:
        by_role = {role: {r["caller_id"] for r in rows if r["call_id"] == call and r["role"] == role}
                   for role in ("caller", "operator")}
        assert len(by_role["caller"]) == len(by_role["operator"]) == 1 and by_role["caller"] != by_role["operator"]
    # A 0.6-s turn from 0.4-s clips: two clips joined by a pause, their silent edges trimmed.
    seconds = [sf.info(str(manifest.parent / r["audio"])).duration for r in rows]
    assert all(0.4 + 0.1 - 0.05 <= s <= 0.8 + 0.35 + 0.05 for s in seconds)


def test_without_the_real_speech_folder_the_source_is_skipped_with_a_reason(tmp_path, capsys):
    (tmp_path / "syn").mkdir()
    synthetic = write_synthetic_manifest(tmp_path / "syn", calls=1, turns=2)
    assert bench.real_speech_corpus(synthetic, tmp_path / "absent", tmp_path / "out") is None
    assert "real-speech source skipped" in capsys.readouterr().out
