"""Interrupted runs: `embed`, `cv`, `ablate`, `train`, `predict` and `predict --live` are SIGKILLed part-way, then run again; the result must equal
an uninterrupted run, and nothing half-written may be left where a reader would take it as complete.

Each killed run is a real subprocess. It stops at a chosen point (after the n-th atomic rename of a file
named like a pattern, or just before it, while the temp file is written but not yet renamed) and waits to
be killed there, so the kill lands at the same place on every machine, however loaded. (`predict` appends
and fsyncs its outputs call by call instead of renaming: its kill point is the n-th fsync.) The rerun happens
in-process (cheaper), through `ctxemo.cli.main` exactly as a user would type it.
"""
import csv
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import feature_corpus
from safetensors.numpy import load_file

import ctxemo.embedding.cache as embed
from ctxemo.cli import main
from ctxemo.data.synthetic import CorpusSpec, generate_corpus
from ctxemo.models.segment_encoder import SegmentEncoder

SHARD_ROWS = 8  # small shards so the tiny embed corpus spans several

# The child process: `ctxemo ARGS...` with one pause point. argv: when n pattern marker shard_rows ARGS...
DRIVER = textwrap.dedent('''
    import fnmatch, functools, os, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    when, n, pattern = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    marker, shard_rows = Path(sys.argv[4]), int(sys.argv[5])
    if sys.argv[6] == "embed":  # (importing the encoder stack costs seconds; cv on features never needs it)
        import ctxemo.embedding.cache
        ctxemo.embedding.cache.embed_manifest = functools.partial(ctxemo.embedding.cache.embed_manifest, shard_rows=shard_rows)
    real_replace, seen = os.replace, [0]

    def pause():
        marker.write_text(str(os.getpid()))
        time.sleep(600)  # the test SIGKILLs us here

    def replace(src, dst, *args, **kwargs):
        hit = fnmatch.fnmatch(Path(dst).name, pattern)
        seen[0] += hit
        if hit and seen[0] == n and when == "before":
            pause()  # the temp file is complete, the rename has not happened
        out = real_replace(src, dst, *args, **kwargs)
        if hit and seen[0] == n and when == "after":
            pause()
        return out

    os.replace = replace
    real_fsync = os.fsync

    def fsync(fd):  # pattern "fsync": the n-th fsync (predict flushes its appended outputs call by call)
        hit = pattern == "fsync"
        seen[0] += hit
        if hit and seen[0] == n and when == "before":
            pause()
        real_fsync(fd)
        if hit and seen[0] == n and when == "after":
            pause()

    os.fsync = fsync
    from ctxemo.cli import main
    sys.exit(main(sys.argv[6:]))
''')


class Paused:
    """`ctxemo ARGS` in a subprocess that pauses at a chosen point; `.kill()` SIGKILLs it there.

    Started first, so the uninterrupted reference run can go on in-process while the child imports torch.
    """

    def __init__(self, tmp_path, args, *, when: str, n: int, pattern: str):
        driver, self.marker = tmp_path / "driver.py", tmp_path / f"paused-{pattern}-{n}"
        driver.write_text(DRIVER)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, str(driver), when, str(n), pattern, str(self.marker),
                                      str(SHARD_ROWS), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env, text=True)

    def kill(self) -> None:
        proc, deadline = self.proc, time.monotonic() + 300
        try:
            while not self.marker.exists():
                if proc.poll() is not None:
                    pytest.fail(f"ctxemo ended (rc {proc.returncode}) before the kill point:\n{proc.stderr.read()}")
                if time.monotonic() > deadline:
                    pytest.fail("the kill point was never reached")
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL


@pytest.fixture
def start_paused(tmp_path):
    """Start `Paused` children; any still alive when the test ends (e.g. it failed early) is killed."""
    children = []

    def start(args, **kwargs):
        children.append(Paused(tmp_path, args, **kwargs))
        return children[-1]

    yield start
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


def assert_nothing_torn(folder):
    """Every file a reader might open parses; temp files are dot-prefixed `.name.*.tmp`."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for path in files:
        name = path.name
        if name.endswith(".tmp"):
            assert name.startswith("."), f"temp file without a dot prefix: {path}"
            continue
        assert "tmp" not in name.lower(), f"stray temp-like file: {path}"
        if name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
        elif name.endswith(".npy"):
            np.load(path, allow_pickle=False)
        elif name.endswith(".csv"):
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
            assert rows and all(len(r) == len(rows[0]) for r in rows), f"ragged CSV {path}"
        elif name.endswith(".pt"):
            torch.load(path, map_location="cpu", weights_only=True)
        elif name.endswith(".safetensors"):
            load_file(str(path))
        elif name.endswith(".yaml"):
            yaml.safe_load(path.read_text(encoding="utf-8"))
    for fold in folder.rglob("fold*"):
        if (fold / "metrics.json").is_file():  # the marker of a finished fold: everything else is there
            assert {"model.safetensors", "predictions.csv", "history.json"} <= {p.name for p in fold.iterdir()}


def per_fold(summary):
    return {name: value["folds"] for name, value in summary.items()}


# ----------------------------------------------------------------------------- embed

@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(embed, "embed_manifest", functools.partial(embed.embed_manifest, shard_rows=SHARD_ROWS))


def test_embed_killed_mid_shard_resumes_to_the_same_embeddings(tmp_path, small_shards, monkeypatch, start_paused):
    spec = CorpusSpec(n_calls=6, seed=3, calls_per_caller=1, min_turns=4, max_turns=6, caller_turn_sec=(0.3, 0.6),
                      operator_turn_sec=(0.3, 0.5))
    manifest = generate_corpus(tmp_path / "corpus", spec=spec)
    cfg = tmp_path / "embed.yaml"
    cfg.write_text(f"name: e\nout_dir: {tmp_path / 'runs'}\nseed: 0\ndata:\n  manifest: {manifest}\n"
                   "encoder:\n  family: wav2vec2\n  source: null\n", encoding="utf-8")
    n_rows = sum(1 for _ in open(manifest, encoding="utf-8")) - 1
    assert n_rows > 2 * SHARD_ROWS

    args = ["embed", str(cfg), "--out", str(tmp_path / "killed"), "--quiet"]
    # Killed while the third shard's temp file is written but not yet renamed.
    child = start_paused(args, when="before", n=3, pattern="shard-*.npy")
    assert main(["embed", str(cfg), "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    child.kill()
    cache = tmp_path / "killed" / "cache"
    assert len(list(cache.rglob("partial/shard-*.npy"))) == 2
    assert len(list(cache.rglob("partial/.shard-*.tmp"))) == 1
    assert not list(cache.rglob("embeddings.npy"))
    assert_nothing_torn(tmp_path / "killed")

    encoded = {"rows": 0}
    forward = SegmentEncoder.forward

    def counting(self, waves, wave_lens):
        encoded["rows"] += len(wave_lens)
        return forward(self, waves, wave_lens)

    monkeypatch.setattr(SegmentEncoder, "forward", counting)
    assert main(args) == 0
    assert encoded["rows"] == n_rows - 2 * SHARD_ROWS  # the two finished shards were kept, not recomputed

    resumed = np.load(next(cache.rglob("embeddings.npy")))
    whole = np.load(next((tmp_path / "whole" / "cache").rglob("embeddings.npy")))
    assert resumed.shape == (n_rows, 32)
    np.testing.assert_array_equal(resumed, whole)
    assert not list(cache.rglob("partial/shard-*.npy"))  # cleaned up once complete
    assert not list(cache.rglob(".*.tmp"))  # and the killed call's temp file with them
    assert_nothing_torn(tmp_path / "killed")


# ----------------------------------------------------------------------------- cv and ablate

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A precomputed-features corpus (no audio): 6 callers x 2 calls x 6 turns."""
    return feature_corpus(tmp_path_factory.mktemp("interrupt") / "corpus", n_callers=6, calls_per_caller=2, turns=6)


# One model per fold (cv.inner_folds=0): the kill points below count that model's checkpoint writes.
CV = ["train.epochs=2", "train.patience=5", "cv.folds=3", "cv.inner_folds=0"]
ARMS = ["ablation.arms={a: [context.kind=identity], b: [context.kind=transformer]}", "ablation.reference=a",
        "cv.folds=2", "cv.inner_folds=0", "ablation.baselines=[]"]


def test_cv_killed_while_writing_a_fold_marker_resumes_to_the_same_results(tmp_path, corpus, start_paused):
    args = ["cv", str(corpus), *CV, "--out", str(tmp_path / "killed"), "--quiet"]
    # Killed with fold 0 trained, scored and saved, its metrics.json (the "fold done" marker) in a temp
    # file not yet renamed: the fold counts as unfinished and must come out the same when redone.
    child = start_paused(args, when="before", n=1, pattern="metrics.json")
    assert main(["cv", str(corpus), *CV, "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    child.kill()
    killed = tmp_path / "killed"
    assert not (killed / "fold0" / "metrics.json").exists()
    assert list((killed / "fold0").glob(".metrics.json.*.tmp")) and (killed / "fold0" / "checkpoint.pt").is_file()
    assert not (killed / "summary.json").exists()
    assert_nothing_torn(killed)

    assert main(args) == 0
    resumed = json.loads((killed / "summary.json").read_text())
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    _assert_same_folds(per_fold(resumed), per_fold(whole))
    assert not list(killed.rglob("checkpoint.pt"))
    assert not list(killed.rglob(".*.tmp"))  # the killed attempt's half-written marker is gone
    assert_nothing_torn(killed)


def test_ablate_killed_mid_epoch_of_the_second_arm_resumes_to_the_same_results(tmp_path, corpus, start_paused):
    args = ["ablate", str(corpus), *CV[:2], *ARMS, "--out", str(tmp_path / "killed"), "--quiet"]
    # Arm a: 2 folds x 2 epochs = 4 checkpoints; killed right after the 5th (arm b, fold 0, epoch 0).
    child = start_paused(args, when="after", n=5, pattern="checkpoint.pt")
    assert main(["ablate", str(corpus), *CV[:2], *ARMS, "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    child.kill()
    killed = tmp_path / "killed"
    assert (killed / "a" / "summary.json").is_file() and (killed / "b" / "fold0" / "checkpoint.pt").is_file()
    assert not (killed / "b" / "fold0" / "metrics.json").exists() and not (killed / "summary.json").exists()
    assert_nothing_torn(killed)

    assert main(args) == 0
    resumed = json.loads((killed / "summary.json").read_text())["arms"]
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())["arms"]
    assert set(resumed) == set(whole) == {"a", "b"}
    for arm in whole:
        _assert_same_folds(per_fold(resumed[arm]), per_fold(whole[arm]))
    assert_nothing_torn(killed)


def _assert_same_folds(got, want):
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(np.array(got[name], dtype=float), np.array(want[name], dtype=float),
                                      err_msg=name)


# ----------------------------------------------------------------------------- train, predict, predict --live

# A causal bundle (so that it can score live) trained on the precomputed-features corpus: one model.
TRAIN = [*CV[:2], "cv.inner_folds=0", "context.causal=true", "context.window=3"]
BUNDLE_FILES = ("model.safetensors", "thresholds.json", "taxonomy.json", "config.yaml")


@pytest.fixture(scope="module")
def bundle(corpus, tmp_path_factory):
    """The uninterrupted `ctxemo train` run: its bundle scores the predict tests, its files are the reference."""
    run = tmp_path_factory.mktemp("bundle") / "whole"
    assert main(["train", str(corpus), *TRAIN, "--out", str(run), "--quiet"]) == 0
    return run


def test_train_killed_after_its_first_checkpoint_resumes_to_the_same_bundle(tmp_path, corpus, bundle, start_paused,
                                                                           capsys):
    args = ["train", str(corpus), *TRAIN, "--out", str(tmp_path / "killed"), "--quiet"]
    start_paused(args, when="after", n=1, pattern="checkpoint.pt").kill()  # epoch 1 of 2 done
    killed = tmp_path / "killed"
    assert (killed / "checkpoint.pt").is_file() and not (killed / "bundle").exists()
    assert_nothing_torn(killed)

    assert main(args) == 0
    assert "epoch(s) 1-1 of 2 kept from" in capsys.readouterr().out  # the resume says what it keeps
    for name in BUNDLE_FILES:
        assert (killed / "bundle" / name).read_bytes() == (bundle / "bundle" / name).read_bytes(), name
    assert (killed / "metrics.json").read_bytes() == (bundle / "metrics.json").read_bytes()
    assert not (killed / "checkpoint.pt").exists()
    assert_nothing_torn(killed)


def _outputs(folder, *, drop=("latency_ms",)):
    """Every predict output as parsed rows, without the columns that differ between runs (live timing)."""
    out = {}
    for name in ("segments.csv", "calls.csv", "skipped.csv"):
        with open(folder / name, newline="", encoding="utf-8") as handle:
            out[name] = [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]
    for name in ("segments.jsonl", "calls.jsonl"):
        rows = [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()]
        out[name] = [{k: v for k, v in row.items() if k not in drop} for row in rows]
    return out


@pytest.mark.parametrize("live", [False, True], ids=["offline", "live"])
def test_predict_killed_between_two_writes_of_a_call_resumes_to_the_same_outputs(tmp_path, corpus, bundle,
                                                                                 start_paused, live):
    manifest, feats = corpus.parent / "manifest.jsonl", corpus.parent / "feats.npy"
    args = ["predict", str(bundle / "bundle"), str(manifest), "--features", str(feats), "--quiet",
            *(["--live"] if live else [])]
    # fsyncs: 5 when the outputs are opened, then 5 + 5 per call (its rows; then calls.csv, the "call done"
    # row). The 20th: call 2's segment rows are on disk, its calls.csv row is not.
    child = start_paused([*args, "--out", str(tmp_path / "killed")], when="after", n=20, pattern="fsync")
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    child.kill()
    killed = tmp_path / "killed"
    state = _outputs(killed)
    assert len(state["calls.csv"]) == 1 and {r["call_id"] for r in state["segments.csv"]} == \
        {state["calls.csv"][0]["call_id"], _outputs(tmp_path / "whole")["calls.csv"][1]["call_id"]}
    assert_nothing_torn(killed)

    assert main([*args, "--out", str(killed)]) == 0
    resumed, whole = _outputs(killed), _outputs(tmp_path / "whole")
    assert len(whole["calls.csv"]) == 12
    assert resumed == whole  # row for row, value for value (bitwise: the same text)
    if not live:
        for name in ("segments.csv", "calls.csv", "segments.jsonl", "calls.jsonl"):
            assert (killed / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert_nothing_torn(killed)
