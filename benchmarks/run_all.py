"""Run every benchmark script under benchmarks/ at a small size and print their tables, one after another.

    python benchmarks/run_all.py                 # small sizes: a few minutes on 2 CPU cores
    python benchmarks/run_all.py --full          # each script's own defaults (the sizes in README.md)
    python benchmarks/run_all.py --only context  # scripts whose name contains "context"

A script not listed in SMALL runs with its own defaults; one in NEEDS_GPU runs at its small size on a machine
without CUDA, --full or not. Exit status: 1 if any script failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Arguments that make each known script finish in well under a few minutes on 2 CPU cores.
SMALL = {
    "bench_context.py": ["--scales", "0.1", "0.2", "--folds", "2"],
    "bench_embed.py": ["--count", "8", "--max-sec", "6"],
    "bench_segment.py": ["--calls", "2"],
    "bench_call_memory.py": ["--minutes", "1", "3", "--vad", "energy"],
    "bench_folds.py": ["--seeds", "2"],
    "bench_embed_memory.py": ["--calls", "4", "16"],
    "bench_live.py": ["--lengths", "50", "200", "--timed", "10"],
    "bench_gpu.py": ["--smoke"],  # its real run needs a CUDA device
    "bench_telephone.py": ["--smoke", "--shares", "0", "1", "--seeds", "0"],
}
# Scripts that measure a GPU: without one, --full runs their small (CPU smoke) size instead.
NEEDS_GPU = {"bench_gpu.py"}


def has_cuda() -> bool:
    import torch  # only when a GPU script is about to run: the others need no torch here

    return torch.cuda.is_available()


def script_args(script: Path, full: bool) -> list:
    """With --full its own defaults (a GPU script's only where CUDA is), else its SMALL arguments."""
    small = SMALL.get(script.name, [])
    if not full:
        return small
    return small if script.name in NEEDS_GPU and not has_cuda() else []


def scripts(only: str | None) -> list:
    found = sorted(p for p in HERE.glob("bench_*.py"))
    return [p for p in found if only is None or only in p.stem]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run each script with its own default sizes")
    parser.add_argument("--only", help="run only scripts whose name contains this")
    args = parser.parse_args()
    failed = []
    print(f"{len(scripts(args.only))} benchmark(s); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for script in scripts(args.only):
        extra = script_args(script, args.full)
        cmd = [sys.executable, str(script), *extra]
        print(f"\n=== {script.name} {' '.join(extra)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(cmd, cwd=HERE.parent, check=False).returncode  # output streams straight through
        print(f"=== {script.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - start:.0f} s",
              flush=True)
        if rc:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
