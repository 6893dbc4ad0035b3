"""`ctxemo predict` on synthetic whole-call recordings and manifests: segment rows match the true turns,
per-call summaries add up, live equals offline, and every bad input becomes an explicit skipped row
while the calls before (and after) it keep their outputs."""
import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from bundle_helpers import random_bundle, small_corpus, tiny_config

import ctxemo.inference.predict as predict
from ctxemo.cli import main
from ctxemo.data.synthetic_voice import write_call_recordings
from ctxemo.inference.bundle import load_bundle
from ctxemo.inference.predict import (
    predict_inputs,
    predict_manifest,
    predict_recordings,
)

SR = 16000
TOLERANCE_SEC = 0.15  # segment boundaries vs true turn boundaries: 95% within this, all within 0.25 s


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """4 stereo whole-call recordings (+ turns.csv) and a causal bundle with a tiny random-init encoder."""
    root = tmp_path_factory.mktemp("predict")
    manifest = small_corpus(root / "corpus", n_calls=4, seed=1)
    turns = write_call_recordings(manifest, root / "calls", seed=1)
    cfg = tiny_config(root, "context.causal=true", "context.window=3")
    bundle = load_bundle(random_bundle(root / "bundle", cfg))
    wavs = sorted((root / "calls").glob("*.wav"))
    return {"root": root, "turns": turns, "bundle": bundle, "wavs": wavs, "manifest": manifest}


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def offline(setup):
    out = setup["root"] / "offline"
    summary = predict_recordings(setup["bundle"], setup["wavs"], out)
    return out, summary


def test_segments_match_true_turns(setup, offline):
    out, summary = offline
    assert len(summary.calls) == 4 and summary.skipped == [] and summary.errors == 0
    rows, truth = read_csv(out / "segments.csv"), read_csv(setup["turns"])
    errors = []
    for call_id in summary.calls:
        got = [r for r in rows if r["call_id"] == call_id]
        want = [t for t in truth if t["call_id"] == call_id]
        assert [r["role"] for r in got] == [t["role"] for t in want]
        assert [int(r["segment_index"]) for r in got] == list(range(len(want)))
        errors += [abs(float(r[k]) - float(t[k])) for r, t in zip(got, want) for k in ("start", "end")]
    assert np.quantile(errors, 0.95) <= TOLERANCE_SEC and max(errors) <= 0.25
    caller = [r for r in rows if r["role"] == "caller"]
    assert all(0 <= float(r["p_negative"]) <= 1 and r["pred_negative"] in ("0", "1") for r in caller)
    assert all(r["p_negative"] == "" and r["top_labels"] == "" for r in rows if r["role"] == "operator")
    jsonl = [json.loads(line) for line in (out / "segments.jsonl").read_text().splitlines()]
    assert len(jsonl) == len(rows) and isinstance(jsonl[0]["top_labels"], list)


def test_call_summary_adds_up(setup, offline):
    out, _ = offline
    segments, calls = read_csv(out / "segments.csv"), read_csv(out / "calls.csv")
    assert [c["call_id"] for c in calls] == [p.stem for p in setup["wavs"]]
    for call in calls:
        mine = [r for r in segments if r["call_id"] == call["call_id"] and r["role"] == "caller"]
        speech = sum(float(r["duration"]) for r in mine)
        negative = sum(float(r["duration"]) for r in mine if r["pred_negative"] == "1")
        assert float(call["negative_share"]) == pytest.approx(negative / speech, abs=1e-3)
        flags = "".join(r["pred_negative"] for r in mine)
        assert int(call["longest_negative_run_segments"]) == max(len(run) for run in flags.split("0"))
        peaks = call["peak_segments"].split(";")
        assert len(peaks) == min(3, len(mine))
        assert float(peaks[0].split(":")[1]) == pytest.approx(max(float(r["p_negative"]) for r in mine), abs=1e-3)
    first = json.loads((out / "calls.jsonl").read_text().splitlines()[0])
    assert first["peak_segments"][0].keys() == {"segment_index", "start", "p_negative"}


def test_live_equals_offline_on_recordings(setup, offline):
    out, _ = offline
    live_out = setup["root"] / "live"
    predict_recordings(setup["bundle"], setup["wavs"], live_out, live=True)
    a, b = read_csv(out / "segments.csv"), read_csv(live_out / "segments.csv")
    assert [(r["call_id"], r["start"], r["role"]) for r in a] == [(r["call_id"], r["start"], r["role"]) for r in b]
    for x, y in zip(a, b):
        if x["role"] == "caller":
            assert abs(float(x["p_negative"]) - float(y["p_negative"])) <= 1e-5
            assert float(y["latency_ms"]) > 0


def test_bad_inputs_are_skipped_and_the_others_survive(setup, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(setup["wavs"][0], folder / "a_good.wav")
    (folder / "b_garbage.wav").write_bytes(b"RIFF not really a wave file" * 10)
    sf.write(folder / "c_empty.wav", np.zeros((0, 2), np.float32), SR)
    sf.write(folder / "d_silent.wav", np.zeros((2 * SR, 2), np.float32), SR)
    nan = 0.1 * np.random.default_rng(0).standard_normal((SR, 2))
    nan[100:200] = np.nan
    sf.write(folder / "e_nan.wav", nan, SR, subtype="FLOAT")
    burst = 1e-4 * np.random.default_rng(1).standard_normal(2 * SR)
    burst[SR:SR + 2400] += 0.3 * np.sin(np.arange(2400) / 10.0)  # 0.15 s: shorter than any segment
    sf.write(folder / "f_short.wav", burst, SR)
    (folder / "g_notes.txt").write_text("not audio")
    shutil.copy(setup["wavs"][1], folder / "h_good.wav")
    inputs = sorted(folder.iterdir())
    summary = predict_inputs(setup["bundle"], inputs, tmp_path / "out")
    assert summary.calls == ["a_good", "h_good"] and summary.errors == 0
    reasons = {row["call_id"]: row["reason"] for row in read_csv(tmp_path / "out" / "skipped.csv")}
    assert set(reasons) == {"b_garbage", "c_empty", "d_silent", "e_nan", "f_short", "g_notes"}
    assert "cannot read audio file" in reasons["b_garbage"]
    assert "empty recording" in reasons["c_empty"]
    assert "no speech found" in reasons["d_silent"]
    assert "NaN" in reasons["e_nan"]
    assert "shorter than 0.30 s" in reasons["f_short"]
    assert "unsupported input type" in reasons["g_notes"]
    assert {r["call_id"] for r in read_csv(tmp_path / "out" / "segments.csv")} == {"a_good", "h_good"}


def test_a_crash_halfway_loses_nothing_and_a_rerun_resumes(setup, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original = predict.score_prepared
    seen = []

    def failing(bundle, call, **kwargs):
        seen.append(call.call_id)
        if len(seen) == 2:
            raise RuntimeError("boom")
        if len(seen) == 4:
            raise KeyboardInterrupt  # a hard stop: nothing after this call runs
        return original(bundle, call, **kwargs)

    monkeypatch.setattr(predict, "score_prepared", failing)
    with pytest.raises(KeyboardInterrupt):
        predict_inputs(setup["bundle"], setup["wavs"], out)
    calls = [c["call_id"] for c in read_csv(out / "calls.csv")]
    first, second, third, fourth = (p.stem for p in setup["wavs"])
    assert calls == [first, third]  # written as they finished
    skipped = read_csv(out / "skipped.csv")
    assert skipped[0]["call_id"] == second and "unexpected error: RuntimeError: boom" in skipped[0]["reason"]
    assert {r["call_id"] for r in read_csv(out / "segments.csv")} == {first, third}

    monkeypatch.setattr(predict, "score_prepared", original)
    summary = predict_inputs(setup["bundle"], setup["wavs"], out)
    assert summary.resumed == sorted([first, third]) and summary.calls == [second, fourth]
    rows = read_csv(out / "segments.csv")
    assert len({(r["call_id"], r["segment_index"]) for r in rows}) == len(rows)  # no duplicates
    assert sorted(c["call_id"] for c in read_csv(out / "calls.csv")) == sorted(calls + [second, fourth])
    assert read_csv(out / "skipped.csv") == []  # the failed call was redone
    with pytest.raises(Exception, match="another bundle or options"):
        predict_inputs(setup["bundle"], setup["wavs"], out, live=True)


def test_manifest_input_with_bad_rows(setup, tmp_path):
    rows = read_csv(setup["turns"])
    rows = [dict(r, audio=str(setup["turns"].parent / r["audio"]))
            for r in rows if r["call_id"] in ("call0000", "call0001")]
    rows[2]["end"] = f"{float(rows[2]['start']) + 0.05:.6f}"  # too short
    victim = next(i for i, r in enumerate(rows) if r["call_id"] == "call0001" and r["role"] == "caller")
    rows[victim]["audio"] = str(tmp_path / "missing.wav")
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = predict_manifest(setup["bundle"], path, tmp_path / "out")
    assert summary.calls == ["call0000", "call0001"]
    skipped = read_csv(tmp_path / "out" / "skipped.csv")
    assert len(skipped) == 2 and "too short" in skipped[0]["reason"] and "not found" in skipped[1]["reason"]
    got = read_csv(tmp_path / "out" / "segments.csv")
    assert len(got) == len(rows) - 2
    assert [float(r["start"]) for r in got[:2]] == pytest.approx([float(r["start"]) for r in rows[:2]], abs=1e-3)


def test_mono_recording_and_channel_map(setup, tmp_path):
    mono = write_call_recordings(setup["manifest"], tmp_path / "mono", call_ids=["call0002"], stereo=False, seed=1)
    summary = predict_recordings(setup["bundle"], [mono.parent / "call0002.wav"], tmp_path / "m")
    assert summary.calls == ["call0002"]
    got = read_csv(tmp_path / "m" / "segments.csv")
    assert {r["role"] for r in got} == {"caller"} and len(got) == len([t for t in read_csv(mono) if t])
    swapped = predict_recordings(setup["bundle"], [setup["wavs"][2]], tmp_path / "s", channels=["operator", "caller"])
    assert swapped.calls == [setup["wavs"][2].stem]
    original = [r["role"] for r in read_csv(setup["turns"]) if r["call_id"] == setup["wavs"][2].stem]
    flipped = [r["role"] for r in read_csv(tmp_path / "s" / "segments.csv")]
    assert flipped == [{"caller": "operator", "operator": "caller"}[r] for r in original]
    predict_recordings(setup["bundle"], [setup["wavs"][2]], tmp_path / "i", channels=["caller", "ignore"])
    assert [r["role"] for r in read_csv(tmp_path / "i" / "segments.csv")] == [r for r in original if r == "caller"]


def test_cli_predict_with_plot_and_live_refusal(setup, tmp_path, capsys):
    bundle = str(setup["bundle"].path)
    assert main(["predict", bundle, str(setup["wavs"][0]), "--out", str(tmp_path / "p"), "--plot", "--quiet"]) == 0
    assert (tmp_path / "p" / "plots" / f"{setup['wavs'][0].stem}.png").stat().st_size > 1000
    assert "scored 1 call(s)" in capsys.readouterr().out
    assert main(["predict", bundle, str(setup["wavs"][0]), "--out", str(tmp_path / "q"), "--channels", "caller,x"]) == 2
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "segments.csv").write_text("someone else's file")
    assert main(["predict", bundle, str(setup["wavs"][0]), "--out", str(tmp_path / "stray"), "--quiet"]) == 2
    features_bundle = random_bundle(tmp_path / "fb", tiny_config(tmp_path, "data.features=x.npy"), d_in=4)
    assert main(["predict", str(features_bundle), str(setup["wavs"][0]), "--out", str(tmp_path / "f")]) == 2
    assert "precomputed features" in capsys.readouterr().err
    bi = random_bundle(tmp_path / "bi", tiny_config(tmp_path, "context.causal=false"))
    assert main(["predict", str(bi), str(setup["wavs"][0]), "--out", str(tmp_path / "r"), "--live", "--quiet"]) == 2
    assert "context.causal=false" in capsys.readouterr().err
