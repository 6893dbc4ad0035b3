"""Data-parallel CV: two CPU ranks under torchrun give the one-process result, and rank 0 alone writes.

Why the results can agree closely: every rank draws the same global batches (same seed), trains on its
share of each, and weighs its loss by its share of the batch's rows, so DDP's averaged gradient is the
one-process gradient of the whole batch. With dropout off, what is left is float summation order.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import torch

from ctxemo.config import load_config
from ctxemo.data.datasets import build_call_items, collate
from ctxemo.data.features import load_features
from ctxemo.data.manifest import load_manifest
from ctxemo.models.call_model import build_call_model
from ctxemo.studies.cv import run_cv
from ctxemo.taxonomy import Taxonomy
from ctxemo.training import distributed
from ctxemo.training.objective import build_objective

# Dropout off: ranks draw their own dropout masks, which no one-process run can reproduce.
# One model per fold (cv.inner_folds=0): the histories compare epoch by epoch.
OVERRIDES = ["cv.folds=2", "cv.inner_folds=0", "train.epochs=3", "train.patience=10", "context.dropout=0.0", "head.dropout=0.0"]
# Measured gap between 1 and 2 ranks is ~1e-7 (float32 summation order); these bounds leave room for
# other BLAS builds while still catching any real difference (a wrong loss weight moves p by >1e-3).
PROB_ATOL = 1e-5
METRIC_ATOL = 1e-4


def _predictions(run_dir) -> dict:
    out = {}
    for fold_dir in sorted(run_dir.glob("fold[0-9]*")):
        with open(fold_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                out[row["call_id"], row["segment_index"]] = [float(v) for k, v in row.items() if k.startswith("p_")]
    return out


def test_two_ranks_match_one_process(features_config, tmp_path):
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    single = run_cv(load_config([features_config], OVERRIDES), one_dir, progress=False)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "ctxemo.cli", "cv", str(features_config), *OVERRIDES, "--out", str(two_dir), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    double = json.loads((two_dir / "summary.json").read_text(encoding="utf-8"))
    for name, stats in single.items():
        # JSON holds null for an undefined fold metric; as floats both sides read NaN
        ours, theirs = (np.asarray(s["folds"], dtype=float) for s in (stats, double[name]))
        assert np.allclose(ours, theirs, atol=METRIC_ATOL, equal_nan=True), name
    p1, p2 = _predictions(one_dir), _predictions(two_dir)
    assert p1.keys() == p2.keys() and p1
    assert max(abs(a - b) for row in p1 for a, b in zip(p1[row], p2[row])) <= PROB_ATOL
    for fold in ("fold0", "fold1"):
        h1 = json.loads((one_dir / fold / "history.json").read_text(encoding="utf-8"))
        h2 = json.loads((two_dir / fold / "history.json").read_text(encoding="utf-8"))
        assert [h["epoch"] for h in h1] == [h["epoch"] for h in h2]
        assert np.allclose([h["train_loss"] for h in h1], [h["train_loss"] for h in h2], rtol=1e-5)
    # Rank 0 alone wrote and printed: no stray temp files from a second writer, no leftover checkpoints.
    assert not list(two_dir.rglob("*.tmp")) and not list(two_dir.rglob("checkpoint.pt"))
    assert proc.stdout.count("results in") == 1, proc.stdout[-2000:]


def test_rank_shares_of_a_batch_add_up_to_the_batch_gradient(features_config, monkeypatch):
    """The loss weighting alone, without processes: sum over ranks of (share gradient / world) equals the
    gradient of the whole batch, even when shares hold different numbers of rows (or none)."""
    cfg = load_config([features_config], ["context.dropout=0.0", "head.dropout=0.0"])
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    manifest = load_manifest(cfg.data.manifest, taxonomy, require_audio=False)
    feats = load_features(cfg.data.features, len(manifest))
    items = build_call_items(manifest, feats)
    for it in items[:2]:  # uneven shares: drop some scored rows from two calls
        it.scored = it.scored.copy()
        it.scored[: len(it.scored) // 2] = False
    objective, bias = build_objective(cfg, train_items=items, taxonomy=taxonomy)
    torch.manual_seed(0)
    model = build_call_model(cfg, d_in=feats.shape[1], taxonomy=taxonomy, fine_bias=bias)

    def grads(calls, obj):
        model.zero_grad()
        batch = collate([items[i] for i in calls])
        obj(model(batch.inputs), batch).backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]

    calls = [0, 3, 1]
    full = grads(calls, objective)
    world = 4  # more ranks than calls: rank 3 holds none
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    total = [torch.zeros_like(g) for g in full]
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        mine, obj = distributed.shard_batch(calls, items, objective)
        total = [t + g / world for t, g in zip(total, grads(mine, obj))]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full, total))


def test_two_ranks_match_one_process_end_to_end(tmp_path):
    """End-to-end mode (LoRA encoder + context on windows) under torchrun: the same hooks shard windows."""
    from ctxemo.cli import main

    assert main(["synth", "--out", str(tmp_path / "corpus"), "--calls", "6", "--quiet"]) == 0
    config = tmp_path / "e2e.yaml"
    config.write_text("name: e2e\nencoder:\n  family: wav2vec2\n", encoding="utf-8")
    overrides = [f"data.manifest={tmp_path / 'corpus' / 'manifest.csv'}", "train.mode=end_to_end",
                 "encoder.finetune=lora", "encoder.layers=last", "encoder.lora.dropout=0.0",
                 "train.window_segments=4", "train.batch_calls=2", "context.d_model=16", "context.heads=2",
                 "context.depth=1", "train.device=cpu", "cv.only_folds=[0]", *OVERRIDES]
    single = run_cv(load_config([config], overrides), tmp_path / "one", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "ctxemo.cli", "cv", str(config), *overrides, "--out", str(tmp_path / "two"), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "summary.json").read_text(encoding="utf-8"))
    for name, stats in single.items():
        # JSON holds null for an undefined fold metric; as floats both sides read NaN
        ours, theirs = (np.asarray(s["folds"], dtype=float) for s in (stats, double[name]))
        assert np.allclose(ours, theirs, atol=METRIC_ATOL, equal_nan=True), name
    p1, p2 = _predictions(tmp_path / "one"), _predictions(tmp_path / "two")
    assert p1.keys() == p2.keys() and p1
    assert max(abs(a - b) for row in p1 for a, b in zip(p1[row], p2[row])) <= PROB_ATOL
