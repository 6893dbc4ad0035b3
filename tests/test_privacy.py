"""Nothing leaves the machine, and nothing of the calls' content lands in logs or run folders.

`demo`, `cv` and `predict` run with network sockets disabled; a hub is contacted only when the config
names a hub id and encoder.offline is false. A transcript-like marker in a manifest column appears in no
output file and no log line; no audio file and no raw samples are copied into run folders.
"""
import json
import socket

import numpy as np
import pytest
import soundfile as sf
from conftest import feature_corpus

from ctxemo.cli import main
from ctxemo.data.synthetic import CorpusSpec, generate_corpus

MARKER = "TRANSCRIPT-MARKER-4f1c 我不想活了 (segment {i})"
MARKER_STEM = "TRANSCRIPT-MARKER-4f1c"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


class NetworkAttempt(BaseException):
    """Raised by the disabled sockets. A BaseException, so no library retry loop swallows it."""


@pytest.fixture
def no_network(monkeypatch):
    """Every way to open a connection raises NetworkAttempt; returns the list of attempts."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise NetworkAttempt(f"network access attempted: {args!r}")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                        (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)
    return attempts


def add_transcripts(manifest):
    """Add a `transcript` column holding the marker to a CSV or JSONL manifest."""
    if manifest.suffix == ".jsonl":
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
        for i, row in enumerate(rows):
            row["transcript"] = MARKER.format(i=i)
        manifest.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
        return
    import csv

    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "transcript"])
        writer.writeheader()
        writer.writerows({**row, "transcript": MARKER.format(i=i)} for i, row in enumerate(rows))


def sample_probes(corpus_dir, n=3):
    """Byte strings of raw samples (float32 and int16) from a few of the corpus's wav files."""
    probes = []
    for path in sorted(corpus_dir.rglob("*.wav"))[:n]:
        for dtype in ("float32", "int16"):
            wave, _ = sf.read(path, dtype=dtype)
            probes.append(wave[len(wave) // 2: len(wave) // 2 + 32].tobytes())
    return probes


def assert_private(folder, logs, *, exclude=(), probes=()):
    """No marker in any file of `folder` (outside `exclude`) or in the logs; no audio files; the only arrays
    are 2-D segment embeddings; no raw-sample byte string from `probes`."""
    assert MARKER_STEM not in logs
    assert "我不想活了" not in logs
    files = [p for p in folder.rglob("*") if p.is_file() and not any(e in p.parents for e in exclude)]
    assert files
    stem = MARKER_STEM.encode("utf-8")
    for path in files:
        data = path.read_bytes()
        assert stem not in data, f"transcript marker leaked into {path}"
        assert "我不想活了".encode("utf-8") not in data, f"transcript text leaked into {path}"
        assert path.suffix.lower() not in AUDIO_SUFFIXES, f"audio file in a run folder: {path}"
        for probe in probes:
            assert probe not in data, f"raw audio samples in {path}"
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            assert array.ndim == 2 and array.shape[1] <= 1024, f"{path}: {array.shape} is not a segment embedding"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """8 short synthetic calls, one caller each, with a transcript column."""
    root = tmp_path_factory.mktemp("privacy")
    spec = CorpusSpec(n_calls=8, seed=5, calls_per_caller=1, min_turns=4, max_turns=5, caller_turn_sec=(0.3, 0.6),
                      operator_turn_sec=(0.3, 0.5))
    manifest = generate_corpus(root / "corpus", spec=spec)
    add_transcripts(manifest)
    return manifest


def test_demo_runs_offline_and_keeps_transcripts_and_audio_out(tmp_path, small_corpus, no_network, capsys):
    """`ctxemo demo` on a prepared corpus (it reuses <out>/corpus when a manifest is there)."""
    import shutil

    out = tmp_path / "demo"
    shutil.copytree(small_corpus.parent, out / "corpus")
    rc = main(["demo", "cv.folds=2", "train.epochs=1", "--calls", "8", "--seed", "5", "--out", str(out), "--quiet"])
    logs = "".join(capsys.readouterr())
    assert rc == 0, logs
    assert no_network == []
    assert (out / "summary.json").is_file()
    assert_private(out, logs, exclude=[out / "corpus"], probes=sample_probes(out / "corpus"))


def test_cv_runs_offline_and_keeps_transcripts_out(tmp_path, no_network, capsys):
    cfg = feature_corpus(tmp_path / "corpus", n_callers=4, calls_per_caller=1, turns=4)
    add_transcripts(tmp_path / "corpus" / "manifest.jsonl")
    rc = main(["cv", str(cfg), "train.epochs=1", "cv.folds=2", "--out", str(tmp_path / "run"), "--quiet"])
    logs = "".join(capsys.readouterr())
    assert rc == 0, logs
    assert no_network == []
    assert_private(tmp_path / "run", logs)


def test_predict_runs_offline_and_keeps_transcripts_and_audio_out(tmp_path, small_corpus, no_network, capsys):
    pytest.importorskip("ctxemo.inference.predict")
    from test_bundle import random_bundle, tiny_config

    bundle = random_bundle(tmp_path / "bundle", tiny_config(tmp_path))
    out = tmp_path / "predictions"
    rc = main(["predict", str(bundle), str(small_corpus), "--out", str(out)])  # not quiet: logs are checked too
    logs = "".join(capsys.readouterr())
    assert rc == 0 and "scored 8 call(s), skipped 0" in logs, logs
    assert no_network == []
    assert_private(out, logs, probes=sample_probes(small_corpus.parent))


@pytest.mark.parametrize("command", ["embed", "cv", "train"])
def test_hub_id_with_offline_true_fails_without_any_connection(tmp_path, small_corpus, no_network, capsys, command):
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(f"out_dir: {tmp_path / 'runs'}\ndata:\n  manifest: {small_corpus}\n"
                   "encoder:\n  family: wav2vec2\n  source: ctxemo-test/no-such-model\n  offline: true\n",
                   encoding="utf-8")
    rc = main([command, str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and no_network == []
    assert f"ctxemo {command}: error: encoder.source 'ctxemo-test/no-such-model'" in err
    assert "encoder.offline=true forbids downloading" in err


def test_hub_is_contacted_only_with_a_hub_id_and_offline_false(tmp_path, small_corpus, no_network, capsys):
    """The same command with encoder.offline=false does try the network (so the guard above is real)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE is set in this environment: the hub client never connects")
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(f"out_dir: {tmp_path / 'runs'}\ndata:\n  manifest: {small_corpus}\n"
                   "encoder:\n  family: wav2vec2\n  source: ctxemo-test/no-such-model\n  offline: false\n",
                   encoding="utf-8")
    with pytest.raises(NetworkAttempt):
        main(["embed", str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    assert no_network
