"""How much throughput the machine's cores give side by side: the same CPU-bound one-thread job run 4 times
serially, then on 2 forked workers (ctxemo.training.workers.run_jobs, as cv.workers runs folds).

A ratio near 2 means two real cores; near 1 means the vCPUs share one core's throughput (then parallel folds
cannot speed up CV however they are scheduled). Usage: python benchmarks/bench_cores.py [--jobs 4] [--steps 300]
"""
from __future__ import annotations

import argparse
import os
import time
from functools import partial

import torch

from ctxemo.training.workers import available_cores, run_jobs


def one_thread_job(steps: int) -> float:
    torch.set_num_threads(1)
    began, a = time.perf_counter(), torch.randn(400, 400)
    for _ in range(steps):
        a = torch.tanh(a @ a * 0.01)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    jobs = [partial(one_thread_job, args.steps) for _ in range(args.jobs)]
    wall = {}
    for workers in (1, 2):
        began = time.perf_counter()
        per_job = run_jobs(jobs, workers=workers)
        wall[workers] = time.perf_counter() - began
        print(f"workers {workers}: {wall[workers]:.2f} s wall, per job {min(per_job):.2f}-{max(per_job):.2f} s")
    print(f"available cores {available_cores()}, load average {os.getloadavg()[0]:.1f}; "
          f"serial / 2 workers = {wall[1] / wall[2]:.2f}x (2.0 = two full cores)")


if __name__ == "__main__":
    main()
