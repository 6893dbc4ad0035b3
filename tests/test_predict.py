"""`ctxemo predict` on synthetic whole-call recordings and manifests: segment rows match the true turns,
per-call summaries add up, live equals offline, and every bad input becomes an explicit skipped row
while the calls before (and after) it keep their outputs."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from bundle_helpers import random_bundle, small_corpus, tiny_config

import ctxemo.inference.predict as predict
from ctxemo.cli import main
from ctxemo.config import SegmenterConfig
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
    # The energy VAD: with silero, a tone burst is no speech at all (checked below).
    summary = predict_inputs(setup["bundle"], inputs, tmp_path / "out", segmenter=SegmenterConfig(vad="energy"))
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
    predict_inputs(setup["bundle"], [folder / "f_short.wav"], tmp_path / "silero")
    (row,) = read_csv(tmp_path / "silero" / "skipped.csv")
    assert "1 sound(s) that silero-vad did not hear as speech" in row["reason"]


def test_a_folder_names_every_file_it_does_not_read(setup, tmp_path, capsys):
    """A folder of recordings: .mp3 is read (libsndfile decodes it), an .m4a becomes a skipped row saying it
    cannot be decoded, any other file gets a console line; the CLI shows progress bars and exits 0."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(setup["wavs"][0], folder / "a_good.wav")
    audio, sr = sf.read(setup["wavs"][1])
    sf.write(folder / "b_compressed.mp3", audio, sr, format="MP3")
    (folder / "c_phone.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    (folder / "notes.txt").write_text("not audio")
    (folder / ".DS_Store").write_bytes(b"clutter")
    out = tmp_path / "out"
    assert main(["predict", str(setup["bundle"].path), str(folder), "--out", str(out), "--live"]) == 0
    err = capsys.readouterr().err
    assert sorted(c["call_id"] for c in read_csv(out / "calls.csv")) == ["a_good", "b_compressed"]
    skipped = read_csv(out / "skipped.csv")
    assert [r["call_id"] for r in skipped] == ["c_phone"] and "cannot be decoded" in skipped[0]["reason"]
    assert "ffmpeg" in skipped[0]["reason"] and "skipped" in err and "c_phone.m4a" in err
    assert "not read:" in err and "notes.txt: not a recording (.txt)" in err and ".DS_Store" not in err
    assert "calls:" in err and "2/2" in err  # the bar over calls (both known up front) ...
    assert "seg" in err  # ... and one over each call's segments in --live


def test_cli_exits_non_zero_when_no_call_was_scored(setup, tmp_path, capsys):
    sf.write(tmp_path / "silent.wav", np.zeros((2 * SR, 2), np.float32), SR)
    out = tmp_path / "out"
    assert main(["predict", str(setup["bundle"].path), str(tmp_path / "silent.wav"), "--out", str(out), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "scored 0 call(s), skipped 1 item(s)" in captured.out and "no call was scored" in captured.err
    assert "no speech found" in read_csv(out / "skipped.csv")[0]["reason"]
    # A rerun that keeps the calls of an earlier run is a success, though it scores nothing new.
    assert main(["predict", str(setup["bundle"].path), str(setup["wavs"][0]), "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 0
    assert main(["predict", str(setup["bundle"].path), str(setup["wavs"][0]), "--out", str(tmp_path / "o2"),
                 "--quiet"]) == 0


def test_predict_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    from ctxemo.cli import build_parser

    predict_parser = build_parser()._subparsers._group_actions[0].choices["predict"]
    for action in predict_parser._actions:
        assert action.help, f"predict option {action.dest} has no --help text"
    assert "--channels" in text and "exits 0" in text.lower()


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
    assert len(skipped) == 1 and "not found" in skipped[0]["reason"]
    got = read_csv(tmp_path / "out" / "segments.csv")
    assert len(got) == len(rows) - 1  # the 0.05-s row is scored (padded), as CV scores it
    assert [float(r["start"]) for r in got[:2]] == pytest.approx([float(r["start"]) for r in rows[:2]], abs=1e-3)
    assert {r["roles"] for r in read_csv(tmp_path / "out" / "calls.csv")} == {"manifest"}


def test_short_segment_is_scored_alike_by_cv_predict_and_live(setup, tmp_path):
    """One rule for short segments: a 0.05-s caller turn gets the same p_negative from the cache's embedding
    path (what embed/cv/train use), from `predict` on the manifest and from `predict --live`, and the
    segments after it too."""
    from ctxemo.embedding.encode import AudioSpec, EmbedSettings, encode_rows

    bundle = setup["bundle"]
    rows = [dict(r, audio=str(setup["turns"].parent / r["audio"]))
            for r in read_csv(setup["turns"]) if r["call_id"] == "call0000"]
    short = next(i for i, r in enumerate(rows) if r["role"] == "caller" and i > 0)
    rows[short]["end"] = f"{float(rows[short]['start']) + 0.05:.6f}"
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    roles = [r["role"] for r in rows]
    start, end = (np.array([float(r[k]) for r in rows]) for k in ("start", "end"))
    in_context = bundle.in_context(roles)
    feats = np.zeros((len(rows), bundle.d_in), np.float32)
    specs = [AudioSpec(path=Path(r["audio"]), start_sec=s, end_sec=e)
             for r, s, e in zip(rows, start, end)]
    feats[in_context] = encode_rows(EmbedSettings.from_config(bundle.cfg), bundle.encoder(),
                                    [specs[i] for i in np.flatnonzero(in_context)])
    cv_like = bundle.score_call(feats, roles=roles, start_sec=start, end_sec=end).p_negative
    for live in (False, True):
        out = tmp_path / f"out-live{live}"
        summary = predict_manifest(bundle, path, out, live=live)
        assert summary.skipped == [] and summary.calls == ["call0000"]
        got = np.array([float(r["p_negative"]) if r["p_negative"] else np.nan for r in read_csv(out / "segments.csv")])
        caller = np.array([r == "caller" for r in roles])
        np.testing.assert_allclose(got[caller], cv_like[caller], atol=2e-6)
        assert float(read_csv(out / "segments.csv")[short]["duration"]) == pytest.approx(0.05, abs=1e-3)


def test_mono_recording_and_channel_map(setup, tmp_path):
    mono = write_call_recordings(setup["manifest"], tmp_path / "mono", call_ids=["call0002"], stereo=False, seed=1)
    lines = []
    summary = predict_recordings(setup["bundle"], [mono.parent / "call0002.wav"], tmp_path / "m", log=lines.append)
    assert summary.calls == ["call0002"]
    got = read_csv(tmp_path / "m" / "segments.csv")
    assert {r["role"] for r in got} == {"caller"} and len(got) == len([t for t in read_csv(mono) if t])
    # Nothing tells caller from operator on one channel: the output and the console say so.
    assert read_csv(tmp_path / "m" / "calls.csv")[0]["roles"].startswith("unknown (mono")
    assert any("mono recording, roles unknown" in line for line in lines)
    lines.clear()
    predict_recordings(setup["bundle"], [mono.parent / "call0002.wav"], tmp_path / "m2", channels=["caller"],
                       log=lines.append)  # told: no warning
    assert read_csv(tmp_path / "m2" / "calls.csv")[0]["roles"] == "channels"
    assert not any("roles unknown" in line for line in lines)
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


def test_cli_segmenter_settings_and_skipped_role_channel(setup, tmp_path, capsys):
    """segmenter.* items on predict's command line set the segmenter; a bad one fails naming the key;
    a too-short burst's skipped row names its role and channel."""
    bundle, wav = str(setup["bundle"].path), str(setup["wavs"][0])
    # min_segment_sec within the turns' lengths (0.6-1.2 s): the shorter turns become skipped rows.
    assert main(["predict", bundle, wav, "segmenter.vad=energy", "segmenter.min_segment_sec=0.9",
                 "--out", str(tmp_path / "p"), "--quiet"]) == 0
    rows = read_csv(tmp_path / "p" / "skipped.csv")
    turns = [t for t in read_csv(setup["turns"]) if t["call_id"] == setup["wavs"][0].stem]
    assert rows and all("segment too short" in r["reason"] and "< 0.90 s" in r["reason"] for r in rows)
    for r in rows:
        (t,) = [t for t in turns if float(t["start"]) < float(r["end"]) and float(r["start"]) < float(t["end"])]
        assert (r["role"], r["channel"]) == (t["role"], "0" if t["role"] == "caller" else "1")
    capsys.readouterr()
    assert main(["predict", bundle, wav, "segmenter.vda=energy", "--out", str(tmp_path / "q")]) == 2
    assert "unknown config key 'segmenter.vda'" in capsys.readouterr().err
    assert main(["predict", bundle, wav, "segmenter.min_turn_sec=-1", "--out", str(tmp_path / "r")]) == 2
    assert "min_turn_sec" in capsys.readouterr().err


def test_recordings_are_read_in_blocks_and_segments_as_cut(setup, tmp_path, monkeypatch):
    """No read of a recording spans more than a block (segmentation) or a segment (embedding): memory
    does not grow with call length (benchmarks/bench_call_memory.py measures it). A missing silero-vad
    is said once, and the energy VAD cuts the call."""
    import soundfile

    import ctxemo.data.audio as audio
    import ctxemo.data.call_frames as call_frames
    import ctxemo.data.vad as vad

    reads, blocks = [], []
    real_read, real_blocks = audio.sf.read, call_frames.sf.blocks
    monkeypatch.setattr(audio.sf, "read", lambda *a, **k: reads.append(k["stop"] - k["start"]) or real_read(*a, **k))
    monkeypatch.setattr(call_frames.sf, "blocks", lambda *a, **k: blocks.append(k["blocksize"]) or real_blocks(*a, **k))
    monkeypatch.setattr(vad, "silero_available", lambda: False)
    wav, lines = setup["wavs"][0], []
    summary = predict_inputs(setup["bundle"], [wav], tmp_path / "out", segmenter=SegmenterConfig(block_sec=2.0),
                             log=lines.append)
    assert summary.calls == [wav.stem] and blocks == [2 * SR]
    assert soundfile.info(str(wav)).frames > 5 * max(reads) and max(reads) <= 2.0 * SR
    assert sum("pip install --no-deps silero-vad" in line for line in lines) == 1
