"""Peak memory of `predict` on one whole-call stereo recording, 5 min vs 60 min: it should not grow.

A 5-min stereo call is joined from synthetic calls (`write_call_recordings`, -30 dB crosstalk); the
60-min call is that one 12 times (written block by block). Each length is scored by `predict_inputs`
in a fresh child process (a tiny random-init wav2vec2 bundle, causal, window 8); the figure is that
child's peak resident set size (`resource.getrusage(RUSAGE_SELF)`), imports included. Recordings are
read in blocks of `segmenter.block_sec` and segments embedded as they are read, so only the frame
measures (~16 bytes per channel per 10 ms) grow with the call. Target (issue 16): 60 min <= 1.25x 5 min.

    python benchmarks/bench_call_memory.py                      # 5 and 60 min, silero VAD
    python benchmarks/bench_call_memory.py --minutes 1 5 --vad energy
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def score_once(bundle_dir: str, wav: str, out: str, vad: str, threads: int) -> Dict[str, Any]:
    """In a fresh process: score one recording; its own peak RSS and wall time."""
    import torch

    from ctxemo.config import SegmenterConfig
    from ctxemo.inference.predict import predict_inputs

    torch.set_num_threads(threads)
    start = time.perf_counter()
    summary = predict_inputs(bundle_dir, [wav], out, segmenter=SegmenterConfig(vad=vad))
    assert summary.calls and not summary.errors, summary.skipped
    n_segments = sum(1 for _ in open(Path(out) / "segments.csv", encoding="utf-8")) - 1
    return {"seconds": time.perf_counter() - start, "segments": n_segments,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def five_minute_call(root: Path, *, minutes: float = 5.0) -> Path:
    """One stereo call of about `minutes`, joined from synthetic calls."""
    from ctxemo.data.synthetic import CorpusSpec, generate_corpus
    from ctxemo.data.synthetic_voice import write_call_recordings

    spec = CorpusSpec(n_calls=12, seed=0, calls_per_caller=1, min_turns=20, max_turns=30)
    turns = write_call_recordings(generate_corpus(root / "corpus", spec=spec), root / "calls", crosstalk_db=-30.0)
    out, written = root / f"call_{minutes:g}min.wav", 0.0
    with sf.SoundFile(str(out), "w", samplerate=16000, channels=2, subtype="PCM_16") as sink:
        while written < minutes * 60:
            for wav in sorted(turns.parent.glob("*.wav")):
                audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
                sink.write(audio)
                written += len(audio) / sr
                if written >= minutes * 60:
                    break
    return out


def repeated(src: Path, times: int, out: Path) -> Path:
    with sf.SoundFile(str(out), "w", samplerate=sf.info(str(src)).samplerate, channels=2, subtype="PCM_16") as sink:
        for _ in range(times):
            for block in sf.blocks(str(src), blocksize=16000 * 60, dtype="float32", always_2d=True):
                sink.write(block)
    return out


def main() -> None:
    from bench_live import make_bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", nargs=2, type=int, default=[5, 60], help="short and long call (long = k x short)")
    parser.add_argument("--vad", choices=("silero", "energy"), default="silero")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    short, long = args.minutes
    if long % short:
        parser.error("the long call must be a whole number of short ones")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; VAD {args.vad}, {args.threads} thread(s)")
    with tempfile.TemporaryDirectory(prefix="bench_call_mem_") as tmp:
        root = Path(tmp)
        bundle = make_bundle(root, window=8, d_model=32, depth=1, encoder="tiny")
        base = five_minute_call(root, minutes=short)
        calls = {short: base, long: repeated(base, long // short, root / f"call_{long}min.wav")}
        results = {}
        for minutes, wav in calls.items():
            with mp.get_context("spawn").Pool(1) as pool:  # a fresh measuring process per length
                results[minutes] = pool.apply(score_once, (str(bundle.path), str(wav), str(root / f"out{minutes}"),
                                                           args.vad, args.threads))
            results[minutes]["file_mb"] = wav.stat().st_size / 2**20
    print(f"\n{'minutes':>7} {'file MB':>7} {'segments':>8} | {'predict s':>9} {'peak RSS MB':>11}")
    for minutes, r in results.items():
        print(f"{minutes:>7} {r['file_mb']:>7.0f} {r['segments']:>8} | {r['seconds']:>9.1f} {r['peak_rss_mb']:>11.0f}")
    ratio = results[long]["peak_rss_mb"] / results[short]["peak_rss_mb"]
    print(f"peak RSS {long} min / {short} min: {ratio:.3f}x (target <= 1.25x: {'met' if ratio <= 1.25 else 'MISSED'}); "
          f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
