"""Live scoring: pushing segments one by one equals offline causal scoring of the whole call, the kept
state is bounded by the window, bidirectional bundles are refused, and bad pushes fail clearly."""
from contextlib import nullcontext

import numpy as np
import pytest
from bundle_helpers import call_arrays, random_bundle, tiny_config

from ctxemo.data.audio import resample
from ctxemo.errors import AudioError, ConfigError
from ctxemo.inference.bundle import load_bundle
from ctxemo.inference.live import LiveSession

SR = 16000


@pytest.mark.parametrize("kind,use_operator,window", [("transformer", False, 4), ("transformer", True, 4),
                                                      ("transformer", True, 0), ("call_norm", True, 3)])
def test_live_equals_offline_causal_scoring(tmp_path, kind, use_operator, window):
    cfg = tiny_config(tmp_path, "data.features=x.npy", "context.causal=true", f"context.kind={kind}",
                      f"context.window={window}", f"data.use_operator_turns={str(use_operator).lower()}")
    bundle = load_bundle(random_bundle(tmp_path / "b", cfg, d_in=6))
    feats, roles, start, end = call_arrays(14, 6, seed=2)
    offline = bundle.score_call(feats, roles=roles, start_sec=start, end_sec=end)
    with pytest.warns(UserWarning, match="window=0") if window == 0 and kind == "transformer" else nullcontext():
        session = LiveSession(bundle, call_id="c1")
    for i in range(len(roles)):
        record = session.push_embedding(feats[i], role=roles[i], start_sec=start[i], end_sec=end[i])
        assert record["segment_index"] == i and record["role"] == roles[i]
        if roles[i] == "caller":
            assert abs(record["p_negative"] - offline.p_negative[i]) <= 1e-5
            got = [record[f"p_{name}"] for name in bundle.taxonomy.labels]
            np.testing.assert_allclose(got, offline.p_fine[i], atol=1e-5)
            assert record["pred_negative"] == int(offline.p_negative[i] >= bundle.thresholds.binary)
        else:
            assert record["p_negative"] is None
    expected_kept = min(window, 14) if window else sum(bundle.in_context(roles))
    assert len(session._tokens) == expected_kept  # bounded state: only the last `window` segments
    summary = session.summary()
    assert summary["n_caller_segments"] == roles.count("caller") and summary["call_id"] == "c1"


def test_bidirectional_bundle_is_refused_but_isolated_is_fine(tmp_path):
    bidirectional = random_bundle(tmp_path / "bi", tiny_config(tmp_path, "data.features=x.npy", "context.causal=false"),
                                  d_in=4)
    with pytest.raises(ConfigError, match="context.causal=false"):
        LiveSession(bidirectional)
    isolated = load_bundle(random_bundle(tmp_path / "iso", tiny_config(
        tmp_path, "data.features=x.npy", "context.causal=false", "context.kind=identity"), d_in=4))
    session = LiveSession(isolated)
    feats, roles, start, end = call_arrays(5, 4)
    offline = isolated.score_call(feats, roles=roles, start_sec=start, end_sec=end)
    got = [session.push_embedding(f, role=r, start_sec=s, end_sec=e)["p_negative"]
           for f, r, s, e in zip(feats, roles, start, end)]
    caller = np.array([r == "caller" for r in roles])
    np.testing.assert_allclose(np.array(got, dtype=float)[caller], offline.p_negative[caller], atol=1e-6)
    assert len(session._tokens) == 1


@pytest.fixture(scope="module")
def audio_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("live_audio")
    cfg = tiny_config(root, "context.causal=true", "context.window=3")
    return load_bundle(random_bundle(root / "b", cfg))


def test_push_audio_equals_offline_and_resamples(audio_bundle):
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(rng.uniform(0.5, 1.5) * SR))).astype(np.float32) for _ in range(6)]
    roles = ["caller", "operator", "caller", "caller", "operator", "caller"]
    start = np.cumsum([0.3 + len(w) / SR for w in waves]) - [len(w) / SR for w in waves]
    end = start + np.array([len(w) / SR for w in waves])
    feats = np.zeros((6, 32), np.float32)
    feats[[0, 2, 3, 5]] = audio_bundle.embed([waves[i] for i in (0, 2, 3, 5)])
    offline = audio_bundle.score_call(feats, roles=roles, start_sec=start, end_sec=end)
    session = LiveSession(audio_bundle)
    live = [session.push(w, sample_rate=SR, role=r, start_sec=s, end_sec=e)
            for w, r, s, e in zip(waves, roles, start, end)]
    for i, record in enumerate(live):
        if roles[i] == "caller":
            assert abs(record["p_negative"] - offline.p_negative[i]) <= 1e-5
            assert record["latency_ms"] > 0
    # 8 kHz audio is resampled to the bundle's rate before embedding.
    narrow = resample(waves[0], orig_sr=SR, target_sr=8000)
    a = LiveSession(audio_bundle).push(narrow, sample_rate=8000)
    b = LiveSession(audio_bundle).push(resample(narrow, orig_sr=8000, target_sr=SR), sample_rate=SR)
    assert a["p_negative"] == pytest.approx(b["p_negative"], abs=1e-6)
    assert a["duration"] == pytest.approx(len(narrow) / 8000, abs=1e-3) and a["start"] == 0.0


def test_segments_without_times_follow_each_other(audio_bundle):
    session = LiveSession(audio_bundle)
    wave = 0.1 * np.random.default_rng(1).standard_normal(SR).astype(np.float32)
    first = session.push(wave, sample_rate=SR)
    second = session.push(wave, sample_rate=SR, role="operator")
    assert (first["start"], first["end"], second["start"], second["end"]) == (0.0, 1.0, 1.0, 2.0)


@pytest.mark.parametrize("audio,message", [(np.zeros((100, 2), np.float32), "mono"),
                                           (np.zeros(0, np.float32), "empty"),
                                           (np.array([0.1, np.nan, 0.2] * 500, np.float32), "NaN")])
def test_bad_pushes_fail_clearly(audio_bundle, audio, message):
    session = LiveSession(audio_bundle)
    with pytest.raises(AudioError, match=message):
        session.push(audio, sample_rate=SR)
    with pytest.raises(ValueError, match="role"):
        session.push(np.zeros(1000, np.float32), sample_rate=SR, role="counsellor")
    assert session.records == []


def test_integer_pcm_is_scaled_by_its_range_or_refused(audio_bundle):
    """int16 PCM scores as the same float audio (it used to be cast unscaled); an int64 array is refused."""
    wave = (0.2 * np.sin(2 * np.pi * 180 * np.arange(SR) / SR)).astype(np.float32)
    as_float = LiveSession(audio_bundle).push(wave, sample_rate=SR)["p_negative"]
    pcm16 = np.round(wave * 32767).astype(np.int16)
    assert LiveSession(audio_bundle).push(pcm16, sample_rate=SR)["p_negative"] == pytest.approx(as_float, abs=1e-4)
    pcm32 = pcm16.astype(np.int32) << 16
    assert LiveSession(audio_bundle).push(pcm32, sample_rate=SR)["p_negative"] == pytest.approx(as_float, abs=1e-4)
    session = LiveSession(audio_bundle, call_id="c9")
    with pytest.raises(AudioError, match=r"c9: push\(\): samples of type int64 have no known PCM scale"):
        session.push(pcm16.astype(np.int64), sample_rate=SR)
    assert session.records == []


def test_a_turn_shorter_than_min_segment_is_padded_as_in_cv(audio_bundle):
    """Live scores a 0.025-s turn exactly as the embedding cache would embed it: zero-padded to
    data.min_segment_sec (the one rule of ctxemo.data.short_segments)."""
    from ctxemo.data.short_segments import min_segment_samples

    tiny = (0.1 * np.random.default_rng(3).standard_normal(int(0.025 * SR))).astype(np.float32)
    padded = np.pad(tiny, (0, min_segment_samples(audio_bundle.cfg.data.min_segment_sec, SR) - len(tiny)))
    a = LiveSession(audio_bundle).push(tiny, sample_rate=SR)
    b = LiveSession(audio_bundle).push_embedding(audio_bundle.embed([padded])[0], start_sec=0.0, end_sec=0.025)
    assert a["p_negative"] == pytest.approx(b["p_negative"], abs=1e-6) and a["duration"] == pytest.approx(0.025)
