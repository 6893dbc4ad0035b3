"""cv.workers: folds and arms in parallel processes give exactly the serial run's files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from ctxemo.config import load_config
from ctxemo.errors import ConfigError
from ctxemo.studies.ablation import run_ablation
from ctxemo.training.workers import resolve_workers, run_jobs

ARMS = ["ablation.arms.isolated=[context.kind=identity]", "ablation.arms.contextual=[context.kind=transformer]",
        "ablation.reference=isolated", "ablation.baselines=[linear_probe]", "train.epochs=3"]


def _files(run_dir):
    """Every result file of a run, by relative path (config/run records carry times and paths: left out)."""
    keep = ("metrics.json", "predictions.csv", "summary.json", "summary.csv", "history.json", "model.safetensors")
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.name in keep}


def test_parallel_ablation_equals_serial(features_config, tmp_path):
    runs = {}
    for workers in (1, 2):
        cfg = load_config([features_config], [*ARMS, f"cv.workers={workers}", f"out_dir={tmp_path / 'out'}"])
        run_ablation(cfg, tmp_path / f"w{workers}", progress=False, log=lambda *a: None)
        runs[workers] = _files(tmp_path / f"w{workers}")
    # 3 arms x 3 folds, each with metrics and predictions, plus the summaries.
    assert sum(name.endswith("predictions.csv") for name in runs[1]) == 9
    assert runs[1].keys() == runs[2].keys()
    for name in runs[1]:
        assert runs[1][name] == runs[2][name], name


def test_parallel_jobs_start_with_the_costliest_arm(features_config, tmp_path, monkeypatch):
    """With workers the contextual arm's folds are handed out first (a long fold started last leaves the
    other workers idle); the serial loop keeps the arms' order, so a killed ablation keeps whole arms."""
    import ctxemo.studies.cv as cv

    handed_out = {}

    def recording(jobs, *, workers, on_done=None):
        handed_out[workers] = [job.args[0].cfg.context.kind for job in jobs]
        return run_jobs(jobs, workers=1, on_done=on_done)  # run here: the order is what is tested

    monkeypatch.setattr(cv, "run_jobs", recording)
    for workers in (1, 2):
        cfg = load_config([features_config], [*ARMS, "train.epochs=1", f"cv.workers={workers}"])
        run_ablation(cfg, tmp_path / f"w{workers}", progress=False, log=lambda *a: None)
    contextual = handed_out[2].count("transformer")
    assert contextual == 3 and handed_out[2][:contextual] == ["transformer"] * contextual
    assert handed_out[1][0] == "identity" and handed_out[1] != handed_out[2]


def test_jobs_run_in_one_thread_processes_and_keep_their_order():
    out = run_jobs([lambda i=i: (i, os.getpid(), torch.get_num_threads()) for i in range(4)], workers=2)
    assert [i for i, _, _ in out] == [0, 1, 2, 3]
    assert os.getpid() not in {pid for _, pid, _ in out}
    assert {threads for _, _, threads in out} == {1}


def test_each_result_is_handed_over_as_its_job_finishes():
    """on_done runs while slower jobs are still running (an arm's summary is written when its folds end)."""
    seen_while_running = []

    def on_done(i, result):
        seen_while_running.append((i, (Path(marker).exists())))

    marker = Path(tempfile.mkdtemp()) / "slow-job-finished"
    jobs = [lambda: time.sleep(3) or marker.touch() or "slow", lambda: "quick"]
    assert run_jobs(jobs, workers=2, on_done=on_done) == ["slow", "quick"]
    assert seen_while_running == [(1, False), (0, True)]


def test_a_failing_job_raises_its_error_here():
    def fails():
        raise ValueError("fold 1: bad rows")

    with pytest.raises(ValueError, match="fold 1: bad rows"):
        run_jobs([lambda: 0, fails, lambda: 2], workers=2)


def test_workers_setting():
    assert resolve_workers(0) == len(os.sched_getaffinity(0))  # 0 = one per available core
    assert resolve_workers(3) == 3
    with pytest.raises(ConfigError, match="cv.workers"):
        load_config(overrides=["cv.workers=-1"])


WORKER_SCRIPT = """
import os, sys, time
from ctxemo.training.workers import run_jobs
folder = sys.argv[1]

def job():
    open(os.path.join(folder, str(os.getpid())), "w").close()
    time.sleep(120)

run_jobs([job, job], workers=2)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:"))
    except FileNotFoundError:
        return False
    return "Z" not in state.split()[1]  # a zombie has stopped; only its exit status waits to be read


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc (Linux)")
def test_workers_stop_when_the_parent_is_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(tmp_path)], env={**os.environ})
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.iterdir())) < 2:
            assert time.time() < deadline and proc.poll() is None, "workers never started"
            time.sleep(0.2)
        pids = [int(p.name) for p in tmp_path.iterdir()]
        assert all(_alive(pid) for pid in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while any(_alive(pid) for pid in pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids)
    finally:
        proc.kill()
