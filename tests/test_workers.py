"""cv.workers: folds and arms in parallel processes give exactly the serial run's files."""
from __future__ import annotations

import os

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


def test_jobs_run_in_one_thread_processes_and_keep_their_order():
    out = run_jobs([lambda i=i: (i, os.getpid(), torch.get_num_threads()) for i in range(4)], workers=2)
    assert [i for i, _, _ in out] == [0, 1, 2, 3]
    assert os.getpid() not in {pid for _, pid, _ in out}
    assert {threads for _, _, threads in out} == {1}


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
