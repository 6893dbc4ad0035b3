"""Independent jobs (a CV's folds, an ablation's arm-folds) on the machine's cores: `cv.workers` forked
processes, each on one torch thread.

Why processes of one thread: training a small context model on one thread already keeps a core busy
(training pins itself to one thread, training/loop.py), so the second core of a 2-core machine idled.
Each job seeds itself (training seeds from cfg.seed + fold), so a job gives the same result in any
worker, in any order, as in the serial loop (tests/test_workers.py compares the files bit for bit).

Forked, not spawned: the workers inherit the loaded corpus (copy-on-write) instead of unpickling it
per job, and start in milliseconds. Jobs are handed over as indices into a module-level list set just
before the fork, so nothing but the index and the job's (small) result crosses the process boundary.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, List, Optional, Sequence, TypeVar

import torch

from ctxemo.device import resolve_device
from ctxemo.training import distributed

T = TypeVar("T")
_JOBS: Sequence[Callable[[], object]] = ()  # what the forked workers run (set by run_jobs before forking)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def available_cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(requested: int, *, device: str = "cpu") -> int:
    """`cv.workers`: 0 = one per available core; always 1 on a GPU (forking after CUDA is initialised
    breaks it, and one model already fills the device) and under torchrun (the ranks share every fold)."""
    if resolve_device(device).type != "cpu" or distributed.world_size() > 1:
        return 1
    return requested or available_cores()


def _init_worker() -> None:
    torch.set_num_threads(1)  # one thread per worker: the workers are the parallelism
    try:  # die with the parent: a killed study must not leave orphans writing into its run folder
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: orphans finish their job and exit
        pass


def _run_job(index: int) -> object:
    return _JOBS[index]()


def run_jobs(jobs: Sequence[Callable[[], T]], *, workers: int,
             on_done: Optional[Callable[[int, T], None]] = None) -> List[T]:
    """Results of `jobs` (argument-free callables) in their order, run by up to `workers` processes.

    Args:
        workers: 1 runs them here, one after the other (no process is started).
        on_done: called in this process as each job finishes (index, result), in finishing order.
    The first job that fails cancels the ones not started and re-raises its error here; jobs already
    finished keep what they wrote.
    """
    global _JOBS
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for i, job in enumerate(jobs):
            results.append(job())
            if on_done is not None:
                on_done(i, results[-1])
        return results
    _JOBS = jobs
    out: List[Optional[T]] = [None] * len(jobs)
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("fork"),
                                 initializer=_init_worker) as pool:
            futures = {pool.submit(_run_job, i): i for i in range(len(jobs))}
            pending = set(futures)
            while pending:
                # FIRST_COMPLETED, not FIRST_EXCEPTION: the latter returns only once every job is done when
                # none fails, so on_done (progress lines, an arm's summary) would all come at the end.
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    out[futures[future]] = future.result()
                    if on_done is not None:
                        on_done(futures[future], future.result())
    finally:
        _JOBS = ()
    return out  # type: ignore[return-value]
