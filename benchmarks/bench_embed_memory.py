"""Peak memory of `ctxemo embed` at 1x and 4x corpus size: it should not grow with the corpus.

For each size a synthetic corpus is written (`ctxemo synth`), then `ctxemo embed` runs in its own
child process with a tiny random-init encoder; the figure is that child's peak resident set size
(`resource.getrusage(RUSAGE_CHILDREN)` of a fresh process whose only child it is). Embeddings go to disk in shards of 256 rows as they finish, so only
one shard plus the model should ever be in memory.

    python benchmarks/bench_embed_memory.py                   # 24 and 96 calls (1x and 4x)
    python benchmarks/bench_embed_memory.py --calls 6 24      # a smoke run
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

CONFIG = "name: embedmem\nencoder:\n  family: wav2vec2\n"


CTXEMO = [sys.executable, "-m", "ctxemo.cli"]


def embed_peak(root: str) -> Dict[str, float]:
    """Run `ctxemo embed` as this (fresh) process's only child; return its peak RSS and wall time.
    RUSAGE_CHILDREN is the maximum over waited-for children, so nothing else may run from here."""
    root_path = Path(root)
    start = time.perf_counter()
    subprocess.run([*CTXEMO, "embed", str(root_path / "embed.yaml"),
                    f"data.manifest={root_path / 'corpus' / 'manifest.csv'}", "train.device=cpu",
                    "--out", str(root_path / "run"), "--quiet"], check=True, capture_output=True)
    return {"seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def measure(calls: int, root: Path) -> Dict[str, Any]:
    subprocess.run([*CTXEMO, "synth", "--out", str(root / "corpus"), "--calls", str(calls), "--quiet"],
                   check=True, capture_output=True)
    (root / "embed.yaml").write_text(CONFIG, encoding="utf-8")
    with mp.get_context("spawn").Pool(1) as pool:  # a fresh measuring process per size
        result = pool.apply(embed_peak, (str(root),))
    rows = sum(1 for _ in open(root / "corpus" / "manifest.csv", encoding="utf-8")) - 1
    audio_mb = sum(p.stat().st_size for p in (root / "corpus" / "audio").rglob("*.wav")) / 2**20
    return {"calls": calls, "segments": rows, "audio_mb": audio_mb, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", nargs="+", type=int, default=[24, 96], help="corpus sizes in calls (1x first)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    results = []
    for calls in args.calls:
        with tempfile.TemporaryDirectory(prefix="bench_embed_mem_") as tmp:
            results.append(measure(calls, Path(tmp)))
    base = results[0]
    print(f"\n{'calls':>5} {'segments':>8} {'audio MB':>8} | {'embed s':>7} {'peak RSS MB':>11} {'vs first':>8}")
    for r in results:
        print(f"{r['calls']:>5} {r['segments']:>8} {r['audio_mb']:>8.0f} | {r['seconds']:>7.1f} "
              f"{r['peak_rss_mb']:>11.0f} {r['peak_rss_mb'] - base['peak_rss_mb']:>+8.0f}")
    print(f"load average at end {os.getloadavg()[0]:.1f}. peak RSS: the embed child's maximum resident set size")


if __name__ == "__main__":
    main()
