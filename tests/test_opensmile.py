"""encoder.family=opensmile: eGeMAPS / ComParE functionals through the embedding cache. They reproduce the
shipped EmoDB features, are reused while the audio is unchanged (recomputed per changed row), honour crops
and channels, and run through cv, train and predict like any embedding; bad configs are refused by key."""
import csv
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from bundle_helpers import small_corpus

from ctxemo.cli import main
from ctxemo.config import load_config
from ctxemo.data.audio import read_audio
from ctxemo.data.synthetic_voice import write_call_recordings
from ctxemo.embedding.corpus import load_corpus
from ctxemo.errors import ConfigError

REALSPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "realspeech"
needs_opensmile = pytest.mark.skipif(importlib.util.find_spec("opensmile") is None,
                                     reason='opensmile is not installed (pip install ".[opensmile]")')
TINY = ["encoder.family=opensmile", "context.d_model=16", "context.depth=1", "context.heads=2", "train.epochs=2",
        "train.patience=2", "train.batch_calls=4", "train.device=cpu"]


def opensmile_config(tmp_path, manifest, *overrides):
    return load_config(overrides=[f"out_dir={tmp_path / 'runs'}", f"data.manifest={manifest}", *TINY, *overrides])


def write_yaml(path: Path, manifest: Path, out_dir: Path) -> Path:
    path.write_text(f"name: osm\nout_dir: {out_dir}\ndata:\n  manifest: {manifest}\n"
                    "encoder:\n  family: opensmile\n  feature_set: egemaps\n"
                    "context:\n  d_model: 16\n  depth: 1\n  heads: 2\n"
                    "train:\n  epochs: 2\n  patience: 2\n  batch_calls: 4\n  device: cpu\n"
                    "cv:\n  folds: 2\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    """8 synthetic calls: one wav per turn (manifest.csv) and stereo whole-call recordings cut by
    start/end crops (turns.csv)."""
    root = tmp_path_factory.mktemp("osm")
    manifest = small_corpus(root / "corpus", n_calls=8, seed=1)
    turns = write_call_recordings(manifest, root / "calls", seed=1)
    return {"root": root, "manifest": manifest, "turns": turns}


# ----------------------------------------------------------------------------- reproduction

@needs_opensmile
def test_egemaps_reproduces_the_shipped_emodb_functionals(tmp_path):
    if not (REALSPEECH / "emodb-calls.csv").is_file():
        pytest.skip(f"the real-speech corpus is not there ({REALSPEECH}: expected ../shared next to the repo)")
    from ctxemo.embedding.opensmile_features import opensmile_manifest

    with open(REALSPEECH / "emodb-calls.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    expected = np.load(REALSPEECH / "emodb-calls.egemaps.npy")
    picks = np.linspace(0, len(rows) - 1, 10).astype(int)
    cfg = load_config(overrides=["encoder.family=opensmile"])
    got = opensmile_manifest(cfg, [(REALSPEECH / rows[i]["audio"], None, None) for i in picks],
                             cache_dir=tmp_path / "cache", progress=False)
    assert got.shape == (10, 88) and got.dtype == np.float32
    # Measured: max |difference| = 0.0 over all 535 rows (opensmile 2.6.0), i.e. bit-identical. The bound
    # leaves room for float32 rounding on another platform (values reach 2.9e5).
    diff = np.abs(got - expected[picks]) / np.maximum(1.0, np.abs(expected[picks]))
    assert float(diff.max()) <= 1e-5


# ----------------------------------------------------------------------------- the cache

@needs_opensmile
def test_cache_is_reused_and_a_changed_file_recomputes_only_its_row(tmp_path, monkeypatch):
    from ctxemo.embedding.opensmile_features import OpenSmileExtractor

    manifest = small_corpus(tmp_path / "corpus", n_calls=3, seed=2)
    cfg = opensmile_config(tmp_path, manifest)
    data = load_corpus(cfg, progress=False)
    first = data.feats
    assert first.shape == (len(data.manifest), 88) and np.isfinite(first).all()
    folders = list((tmp_path / "runs" / "cache").iterdir())
    assert [f.name.split("-")[0] for f in folders] == ["opensmile"]
    sidecar = json.loads((folders[0] / "embeddings.json").read_text())
    assert sidecar["encoder"]["feature_set"] == "egemaps" and sidecar["dim"] == 88

    real = OpenSmileExtractor.features
    seen = []

    def failing(self, wave, *, where="a segment"):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(OpenSmileExtractor, "features", failing)
    np.testing.assert_array_equal(load_corpus(cfg, progress=False).feats, first)

    # Rewrite one segment's file (new content, later mtime): only that row is computed again.
    row = 4
    path = data.manifest.audio_path(row)
    wave, sr = sf.read(path, dtype="float32")
    sf.write(path, 0.5 * wave[::-1], sr)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    def counting(self, wave, *, where="a segment"):
        seen.append(str(where))
        return real(self, wave, where=where)

    monkeypatch.setattr(OpenSmileExtractor, "features", counting)
    again = load_corpus(cfg, progress=False).feats
    assert seen == [str(path)]
    assert not np.allclose(again[row], first[row])
    np.testing.assert_array_equal(np.delete(again, row, 0), np.delete(first, row, 0))
    direct = OpenSmileExtractor("egemaps").features(read_audio(path))
    np.testing.assert_array_equal(again[row], direct)
    # Another feature set is another cache folder (ComParE: 6373 functionals); only a few rows, it is slower.
    compare = opensmile_config(tmp_path, manifest, "encoder.feature_set=compare")
    from ctxemo.embedding.opensmile_features import opensmile_manifest

    specs = [(data.manifest.audio_path(i), None, None) for i in range(2)]
    assert opensmile_manifest(compare, specs, cache_dir=tmp_path / "c", progress=False).shape == (2, 6373)


@needs_opensmile
def test_crops_and_channel_are_read_like_every_encoder_reads_them(calls, tmp_path):
    from ctxemo.embedding.opensmile_features import (
        OpenSmileExtractor,
        opensmile_manifest,
    )

    with open(calls["turns"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:3]
    path = calls["turns"].parent / rows[1]["audio"]
    start, end = float(rows[1]["start"]), float(rows[1]["end"])
    cfg = opensmile_config(tmp_path, calls["turns"], "data.channel=1", "data.sample_rate=8000")
    got = opensmile_manifest(cfg, [(path, start, end)], cache_dir=tmp_path / "cache", progress=False)[0]
    extractor = OpenSmileExtractor("egemaps", sample_rate=8000)
    expected = extractor.features(read_audio(path, start_sec=start, end_sec=end, channel=1, target_sr=8000))
    np.testing.assert_array_equal(got, expected)
    other = extractor.features(read_audio(path, start_sec=start, end_sec=end, channel=0, target_sr=8000))
    assert not np.allclose(got, other)
    # A segment shorter than openSMILE's longest frame is zero-padded, not a row of NaN.
    assert np.isfinite(extractor.features(np.zeros(100, np.float32))).all()


# ----------------------------------------------------------------------------- config

def test_unknown_feature_set_and_end_to_end_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="encoder.feature_set"):
        load_config(overrides=["encoder.family=opensmile", "encoder.feature_set=gemaps"])
    with pytest.raises(ConfigError, match="encoder.family"):
        load_config(overrides=["encoder.family=opensmile", "train.mode=end_to_end"])
    with pytest.raises(ConfigError, match="encoder.family"):
        load_config(overrides=["encoder.family=opensmil"])
    cfg = load_config(overrides=["encoder.family=opensmile", "encoder.feature_set=compare"])
    assert cfg.encoder.feature_set == "compare"
    assert load_config().encoder.feature_set == "egemaps"


def test_a_missing_opensmile_package_says_how_to_install_it(tmp_path, monkeypatch):
    from ctxemo.embedding.opensmile_features import opensmile_manifest

    monkeypatch.setitem(sys.modules, "opensmile", None)  # `import opensmile` now raises ImportError
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    with pytest.raises(ConfigError, match=r'pip install "\.\[opensmile\]"'):
        opensmile_manifest(load_config(overrides=["encoder.family=opensmile"]), [(wav, None, None)],
                           cache_dir=tmp_path / "cache", progress=False)


# ----------------------------------------------------------------------------- studies

@needs_opensmile
def test_cv_runs_end_to_end_on_opensmile_features(calls, tmp_path, capsys):
    config = write_yaml(tmp_path / "cv.yaml", calls["turns"], tmp_path / "runs")
    out = tmp_path / "cv"
    assert main(["cv", str(config), "--out", str(out), "--quiet"]) == 0
    assert all((out / f"fold{k}" / "metrics.json").is_file() for k in range(2))
    assert "binary_f1" in json.loads((out / "summary.json").read_text())
    cache = list((tmp_path / "runs" / "cache").glob("opensmile-*"))
    assert len(cache) == 1 and np.load(cache[0] / "embeddings.npy").shape[1] == 88


@needs_opensmile
def test_train_then_predict_computes_the_same_functionals(calls, tmp_path):
    from ctxemo.inference.bundle import load_bundle

    config = write_yaml(tmp_path / "train.yaml", calls["turns"], tmp_path / "runs")
    run = tmp_path / "train"
    assert main(["train", str(config), "--out", str(run), "--quiet"]) == 0
    bundle = load_bundle(run / "bundle")
    assert bundle.d_in == 88 and bundle.encoder_info["description"]["family"] == "opensmile"
    # predict's embedding of a segment is the cached row training used.
    data = load_corpus(load_config([config]), progress=False)
    row = int(np.flatnonzero(data.manifest.is_caller)[0])
    start, end = data.manifest.crop(row)
    wave = read_audio(data.manifest.audio_path(row), start_sec=start, end_sec=end)
    np.testing.assert_array_equal(bundle.embed([wave])[0], data.feats[row])
    assert main(["predict", str(run / "bundle"), str(calls["turns"]), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    with open(tmp_path / "p" / "segments.csv", newline="", encoding="utf-8") as handle:
        got = list(csv.DictReader(handle))
    callers = [r for r in got if r["role"] == "caller"]
    assert len(got) == len(data.manifest) and callers
    assert all(np.isfinite(float(r["p_negative"])) for r in callers)
