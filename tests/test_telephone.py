"""Telephone bands: the band-edge measure, the simulated telephone channel, what bundles record about
their training audio, and the warnings predict and LiveSession give on a mismatch."""
import importlib.util
import types

import numpy as np
import pytest
import soundfile as sf
from bundle_helpers import random_bundle, small_corpus, tiny_config

from ctxemo.config import SegmenterConfig, load_config
from ctxemo.data.audio import resample
from ctxemo.data.manifest import load_manifest
from ctxemo.data.synthetic_voice import write_call_recordings
from ctxemo.data.telephone import (
    is_telephone_row,
    simulate_telephone,
    upper_band_edge_hz,
)
from ctxemo.embedding.corpus import load_corpus
from ctxemo.inference.bundle import load_bundle
from ctxemo.inference.live import LiveSession
from ctxemo.inference.predict import predict_inputs
from ctxemo.studies.train_bundle import training_band
from ctxemo.taxonomy import Taxonomy

SR = 16000


def wideband(seconds=2.0, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def test_band_edge_tells_wideband_from_telephone():
    wave = wideband()
    assert upper_band_edge_hz([wave], SR) > 7000
    assert 3000 < upper_band_edge_hz([simulate_telephone(wave, SR, codec=False)], SR) < 5000
    # An 8-kHz recording read at 16 kHz keeps its 4-kHz edge: resampling adds no band.
    up = resample(resample(wave, orig_sr=SR, target_sr=8000), orig_sr=8000, target_sr=SR)
    assert upper_band_edge_hz([up], SR) <= 5100
    assert upper_band_edge_hz([], SR) is None


def test_simulated_telephone_keeps_length_and_codec_adds_noise():
    wave = wideband(1.0)
    plain, coded = simulate_telephone(wave, SR, codec=False), simulate_telephone(wave, SR)
    assert plain.shape == coded.shape == wave.shape and plain.dtype == np.float32
    noise = np.sqrt(np.mean((coded - plain) ** 2)) / np.sqrt(np.mean(plain ** 2))
    assert 0.003 < noise < 0.1  # 8-bit mu-law: ~ -35 dB quantisation noise


def test_telephone_rows_are_a_fixed_share():
    keys = [f"a/{i}.wav|None|None" for i in range(4000)]
    assert not any(is_telephone_row(k, 0.0) for k in keys)
    drawn = [is_telephone_row(k, 0.3) for k in keys]
    assert drawn == [is_telephone_row(k, 0.3) for k in keys] and 0.27 < np.mean(drawn) < 0.33


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tele")
    manifest = small_corpus(root / "corpus", n_calls=2, seed=2)
    turns = write_call_recordings(manifest, root / "calls", seed=2)
    cfg = tiny_config(root, "context.causal=true", "context.window=3")
    return {"root": root, "manifest": manifest, "turns": turns, "cfg": cfg,
            "bundle_dir": random_bundle(root / "bundle", cfg)}


def test_training_band_is_measured_as_embedded(setup):
    """The synthetic callers (16 kHz, line noise up to 8 kHz) against the same rows with every row
    through the simulated telephone channel the recorded edge drops to the telephone's."""
    taxonomy = Taxonomy.from_config(setup["cfg"].taxonomy)
    data = types.SimpleNamespace(manifest=load_manifest(setup["manifest"], taxonomy))
    band = training_band(setup["cfg"], data, rows_max=8)
    assert band["sample_rate_hz"] == SR and band["telephone_share"] == 0.0
    setup["cfg"].data.telephone_share = 1.0
    try:
        tele = training_band(setup["cfg"], data, rows_max=8)
    finally:
        setup["cfg"].data.telephone_share = 0.0
    assert tele["upper_band_edge_hz"] <= 5000 < 7000 <= band["upper_band_edge_hz"]


def wideband_bundle(setup, **audio):
    bundle = load_bundle(setup["bundle_dir"])
    bundle.meta.setdefault("train", {})["audio"] = {"sample_rate_hz": SR, "upper_band_edge_hz": 7500.0,
                                                    "telephone_share": 0.0, **audio}
    return bundle


def test_check_band_warns_on_telephone_input_only(setup):
    bundle, wave = wideband_bundle(setup), wideband()
    assert bundle.check_band([wave], sample_rate=SR, where="x") is None
    message = bundle.check_band([simulate_telephone(wave, SR)], sample_rate=SR, where="call x")
    assert message.startswith("call x: audio band ends at ") and "7.5 kHz" in message and "data.telephone_share" in message
    assert wideband_bundle(setup, telephone_share=0.5).check_band(
        [simulate_telephone(wave, SR)], sample_rate=SR, where="x") is None
    assert load_bundle(setup["bundle_dir"]).check_band([wave], sample_rate=SR, where="x") is None  # nothing recorded


def test_predict_and_live_warn_on_a_telephone_call(setup, tmp_path):
    wav = sorted((setup["root"] / "calls").glob("*.wav"))[0]
    audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    tele = np.stack([simulate_telephone(ch, sr) for ch in audio.T], axis=1)
    sf.write(tmp_path / "tele.wav", tele, sr)
    bundle, lines = wideband_bundle(setup), []
    predict_inputs(bundle, [tmp_path / "tele.wav"], tmp_path / "out", segmenter=SegmenterConfig(vad="energy"),
                   log=lines.append)
    assert sum("call tele: audio band ends at" in line for line in lines) == 1, lines
    lines.clear()
    predict_inputs(bundle, [wav], tmp_path / "wide", segmenter=SegmenterConfig(vad="energy"), log=lines.append)
    assert not any("audio band" in line for line in lines)
    session = LiveSession(bundle, call_id="t")
    session.push(simulate_telephone(wideband(), SR)[:300], sample_rate=SR, role="caller")  # too short to measure
    assert session.band_warning is None
    with pytest.warns(UserWarning, match="call t: audio band ends at"):  # the next caller turn is measured
        session.push(simulate_telephone(wideband(), SR), sample_rate=SR, role="caller")
    assert session.band_warning


@pytest.mark.skipif(importlib.util.find_spec("opensmile") is None, reason="opensmile is not installed")
def test_opensmile_cache_keeps_telephone_features_apart(setup, tmp_path):
    """data.telephone_share changes every telephone row's functionals while the files stay the same: the
    openSMILE cache must not hand a telephone_share run the wideband rows (it did: its fingerprint left
    the share out, so the share silently did nothing once a wideband run had filled the cache)."""
    def functionals(share):
        cfg = load_config(overrides=[f"out_dir={tmp_path}", f"data.manifest={setup['manifest']}",
                                     "encoder.family=opensmile", f"data.telephone_share={share}"])
        return load_corpus(cfg, progress=False).feats

    wide, tele = functionals(0.0), functionals(1.0)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert not np.isclose(wide, tele).all(axis=1).any()  # every row through the line differs
    np.testing.assert_array_equal(functionals(0.0), wide)  # and each share still reuses its own cache
