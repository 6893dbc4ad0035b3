"""Shared fixtures: tiny synthetic calls with skewed labels, tiny configs, small audio files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ctxemo.config import DEFAULT_LABELS, load_config
from ctxemo.taxonomy import Taxonomy

# Two cores are shared by everything; more threads only adds contention for these tiny models.
torch.set_num_threads(1)  # (tests need no per-file thread fixtures)


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("CTXEMO_RUN_SLOW") == "1"
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set CTXEMO_RUN_SLOW=1"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "hub" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a model hub (never in CI)"))


def dies_on_call(real, n: int):
    """`real`, except that its n-th call raises KeyboardInterrupt: a stand-in for SIGKILL at a fixed point
    (e.g. between two checkpoints, when `real` is the per-epoch validation)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    return wrapper


@pytest.fixture
def taxonomy() -> Taxonomy:
    return Taxonomy(labels=tuple(DEFAULT_LABELS))


def write_wav(path: Path, seconds: float = 0.5, sr: int = 16000, channels: int = 1, freq: float = 220.0) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    data = np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr)
    return path


@pytest.fixture
def wav_factory(tmp_path):
    def make(name: str = "a.wav", **kwargs) -> Path:
        return write_wav(tmp_path / name, **kwargs)
    return make


def feature_corpus(folder: Path, *, n_callers: int = 10, calls_per_caller: int = 2, turns: int = 8, dim: int = 6,
                   seed: int = 0, operator: bool = True) -> Path:
    """A manifest (JSONL, no audio) + features .npy where the label persists along a call and
    each caller has an offset: small, fast and learnable. Returns a config YAML path."""
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    labels = list(DEFAULT_LABELS)
    probs = np.array([0.05, 0.35, 0.05, 0.04, 0.1, 0.15, 0.05, 0.01, 0.03, 0.12, 0.05])
    for caller in range(n_callers):
        offset = rng.normal(0, 1.0, dim)
        for k in range(calls_per_caller):
            call = f"c{caller:02d}_{k}"
            state = rng.random() < 0.5
            label = rng.choice(labels, p=probs / probs.sum())
            for i in range(turns):
                if rng.random() < 0.15:
                    state = not state
                role = "operator" if (operator and i % 2) else "caller"
                negative = int(state and role == "caller")
                rows.append({"call_id": call, "segment_index": i, "caller_id": f"p{caller:02d}", "role": role,
                             "labels": [label] if negative else []})
                cue = np.zeros(dim)
                cue[0] = 1.0 * negative
                cue[1 + labels.index(label) % (dim - 1)] += 0.8 * negative
                feats.append(offset + cue + rng.normal(0, 0.5, dim))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    np.save(folder / "feats.npy", np.asarray(feats, dtype=np.float32))
    cfg = folder / "config.yaml"
    cfg.write_text(
        f"name: test\nout_dir: {folder / 'runs'}\n"
        f"data:\n  manifest: {folder / 'manifest.jsonl'}\n  features: {folder / 'feats.npy'}\n"
        "context:\n  d_model: 16\n  depth: 1\n  heads: 2\n"
        "train:\n  epochs: 3\n  patience: 3\n  batch_calls: 4\n  device: cpu\n"
        # Folds in this process (cv.workers 1): several tests spy on training from here; the parallel
        # path is compared with this one in tests/test_workers.py.
        "cv:\n  folds: 3\n  workers: 1\n", encoding="utf-8")
    return cfg


@pytest.fixture
def features_config(tmp_path) -> Path:
    return feature_corpus(tmp_path / "corpus")


@pytest.fixture
def load_test_config():
    def make(path, *overrides):
        return load_config([path], list(overrides))
    return make
