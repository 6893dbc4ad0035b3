"""Bad input, tried systematically on every entry point (`embed`, `cv`, `ablate`, `train`, `predict`): each
ends in a clear error naming the file, line or config key (exit 2, no traceback), or is handled as
documented. docs/robustness.md holds the table of what was tried and what happens.

Everything runs in-process through `ctxemo.cli.main`, with a tiny random-init wav2vec2 encoder.
"""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import feature_corpus

import ctxemo.models.segment_encoder as encoders
from ctxemo.cli import main

SR = 16000
MANIFEST_HEADER = "call_id,segment_index,audio,caller_id,role,negative,labels"
COMMANDS = ["embed", "cv", "ablate", "train"]


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `ctxemo ARGV`; a traceback anywhere fails the test."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors (exit 2, `ctxemo <cmd>: error: ...`)
        rc = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return rc, out, err


def fails(capsys, *argv) -> str:
    """The one-line error of a command that must fail cleanly (exit 2, `ctxemo <cmd>: error: ...`)."""
    rc, out, err = run(capsys, *argv)
    assert rc == 2, f"expected a clean failure, got rc={rc}\n{out}\n{err}"
    lines = [line for line in err.splitlines() if f"ctxemo {argv[0]}: error: " in line]
    assert lines, err
    return err


def tone(seconds=0.4, sr=SR, freq=220.0):
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ----------------------------------------------------------------------------- audio corpus

@pytest.fixture(scope="module")
def audio_root(tmp_path_factory):
    """Three good 0.4-s segments (a, b, c) that every test manifest shares."""
    root = tmp_path_factory.mktemp("robust")
    for name, freq in (("a", 220.0), ("b", 330.0), ("c", 440.0)):
        sf.write(root / f"{name}.wav", tone(freq=freq), SR)
    return root


def write_corpus(root: Path, name: str, rows, *, manifest_name="manifest.csv", text=None, extra_yaml=""):
    """A corpus folder with a manifest (rows of MANIFEST_HEADER, or raw `text`/bytes) and a config for it."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / manifest_name
    if text is None:
        text = "\n".join([MANIFEST_HEADER, *rows]) + "\n"
    if isinstance(text, bytes):
        manifest.write_bytes(text)
    else:
        manifest.write_text(text, encoding="utf-8")
    cfg = folder / "config.yaml"
    cfg.write_text(
        f"name: robust\nout_dir: {folder / 'runs'}\ndata:\n  manifest: {manifest}\n"
        "encoder:\n  family: wav2vec2\n  source: null\n"
        "context:\n  d_model: 16\n  depth: 1\n  heads: 2\n"
        "train:\n  epochs: 1\n  batch_calls: 4\n  device: cpu\ncv:\n  folds: 2\n"
        "ablation:\n  arms:\n    isolated: [context.kind=identity]\n    contextual: [context.kind=transformer]\n"
        + extra_yaml, encoding="utf-8")
    return cfg


def segment_rows(segment: str):
    """Two calls of two caller turns; the second turn of the first call is `segment`."""
    return ["c0,0,../a.wav,p0,caller,0,", f"c0,1,../{segment},p0,caller,1,sadness",
            "c1,0,../b.wav,p1,caller,0,", "c1,1,../c.wav,p1,caller,0,"]


def embeddings(folder: Path) -> np.ndarray:
    (path,) = list(folder.rglob("embeddings.npy"))
    return np.load(path)


def write_bad_audio(path: Path, kind: str) -> None:
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEgarbage" + bytes(range(256)))
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "header_only":  # a valid wav header with no samples
        sf.write(path, np.zeros(0, dtype=np.float32), SR)
    elif kind == "truncated_header":
        sf.write(path, tone(1.0), SR)
        path.write_bytes(path.read_bytes()[:30])
    elif kind in ("nan", "inf"):
        wave = tone()
        wave[100] = np.nan if kind == "nan" else np.inf
        sf.write(path, wave, SR, subtype="FLOAT")
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind, message", [
    ("corrupt", r"cannot read audio file .*corrupt\.wav"),
    ("zero_bytes", r"zero_bytes\.wav"),  # embed reads the header itself (see docs/robustness.md)
    ("header_only", r"header_only\.wav: no samples"),
    ("truncated_header", r"cannot read audio file .*truncated_header\.wav"),
    ("nan", r"nan\.wav: contains NaN or Inf samples"),
    ("inf", r"inf\.wav: contains NaN or Inf samples"),
])
def test_unreadable_audio_is_named(capsys, audio_root, kind, message):
    write_bad_audio(audio_root / f"{kind}.wav", kind)
    cfg = write_corpus(audio_root, f"bad-{kind}", segment_rows(f"{kind}.wav"))
    err = fails(capsys, "embed", cfg, "--out", cfg.parent / "run", "--quiet")
    assert re.search(message, err), err


@pytest.mark.parametrize("row, override, message", [
    ("c0,1,../b.wav,p0,caller,0,,5.0,6.0", [], r"b\.wav: crop start=5\.0 end=6\.0 s is empty or outside the file"),
    ("c0,1,../b.wav,p0,caller,0,,-1.0,0.2", [], r"b\.wav: crop start=-1\.0"),
    ("c0,1,../b.wav,p0,caller,0,,,", ["data.channel=3"], r"[ab]\.wav: channel 3 requested but the file has 1 channel"),
])
def test_bad_crop_or_channel_is_named(capsys, audio_root, row, override, message):
    text = "\n".join([MANIFEST_HEADER + ",start,end", "c0,0,../a.wav,p0,caller,0,,,", row]) + "\n"
    cfg = write_corpus(audio_root, "crop", [], text=text)
    err = fails(capsys, "embed", cfg, *override, "--out", cfg.parent / "run", "--overwrite", "--quiet")
    assert re.search(message, err), err


def test_other_rates_and_stereo_are_resampled_and_mixed_down(capsys, audio_root):
    """8 kHz and 44.1 kHz files are resampled to 16 kHz; a stereo file is mixed down to mono."""
    wave = tone()
    sf.write(audio_root / "ref.wav", wave, SR)
    sf.write(audio_root / "8k.wav", tone(sr=8000), 8000)
    sf.write(audio_root / "44k.wav", tone(sr=44100), 44100)
    sf.write(audio_root / "stereo.wav", np.stack([wave, wave], axis=1), SR)
    rows = [f"c0,{i},../{name},p0,caller,0," for i, name in enumerate(["ref.wav", "8k.wav", "44k.wav", "stereo.wav"])]
    cfg = write_corpus(audio_root, "rates", rows)
    rc, out, _ = run(capsys, "embed", cfg, "--out", cfg.parent / "run", "--quiet")
    assert rc == 0 and "4 segments" in out
    emb = embeddings(cfg.parent / "run")
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(emb[3], emb[0], atol=1e-5)  # identical channels mix down to the mono file
    scale = np.abs(emb[0]).mean()
    for row in (1, 2):  # the same tone at another rate lands next to the 16 kHz one
        assert np.abs(emb[row] - emb[0]).mean() < 0.05 * scale


@pytest.mark.parametrize("kind", ["silence", "truncated_data", "ten_samples"])
def test_silence_truncated_and_tiny_segments_are_embedded(capsys, audio_root, kind):
    """Digital silence embeds to a finite vector (the waveform normalisation is guarded against zero
    variance); a file cut inside its data is read as far as it goes; 10 samples are zero-padded up to
    data.min_segment_sec."""
    path = audio_root / f"{kind}.wav"
    if kind == "silence":
        sf.write(path, np.zeros(SR // 2, dtype=np.float32), SR)
    elif kind == "truncated_data":
        sf.write(path, tone(1.0), SR)
        path.write_bytes(path.read_bytes()[: 44 + SR // 2])  # header + about half of the samples
    else:
        sf.write(path, tone()[:10], SR)
    cfg = write_corpus(audio_root, f"ok-{kind}", segment_rows(path.name))
    rc, _, _ = run(capsys, "embed", cfg, "--out", cfg.parent / "run", "--quiet")
    assert rc == 0
    assert np.isfinite(embeddings(cfg.parent / "run")).all()


def test_ten_minute_segment_is_encoded_in_chunks(capsys, audio_root, monkeypatch):
    """A 10-minute turn (8 kHz, tone bursts and silence) goes through the encoder in chunks of
    encoder.max_chunk_sec, pooled into one vector. A smaller encoder keeps it cheap."""
    t = np.arange(600 * 8000) / 8000
    wave = np.where(t % 2 < 1, 0.3 * np.sin(2 * np.pi * 200 * t), 0.0).astype(np.float32)
    sf.write(audio_root / "long.wav", wave, 8000)
    cfg = write_corpus(audio_root, "long", ["c0,0,../long.wav,p0,caller,0,", "c0,1,../a.wav,p0,caller,0,"])
    chunks = []
    split = encoders.split_into_chunks

    def spy(waves, wave_lens, *, max_samples):
        plan = split(waves, wave_lens, max_samples=max_samples)
        chunks.append(int(plan.waves.shape[0]))
        return plan

    monkeypatch.setattr(encoders, "split_into_chunks", spy)
    small = "encoder.model_config={hidden_size: 16, intermediate_size: 16, conv_dim: [8, 8, 8], num_hidden_layers: 1}"
    rc, _, _ = run(capsys, "embed", cfg, "encoder.max_chunk_sec=2", small, "--out", cfg.parent / "run", "--quiet")
    assert rc == 0
    assert max(chunks) >= 300  # 600 s in chunks of at most 2 s
    emb = embeddings(cfg.parent / "run")
    assert emb.shape == (2, 16) and np.isfinite(emb).all()


# ----------------------------------------------------------------------------- manifests

def _drop_column(rows, column):
    header = MANIFEST_HEADER.split(",")
    keep = [i for i, name in enumerate(header) if name != column]
    return "\n".join(",".join(line.split(",")[i] for i in keep) for line in [MANIFEST_HEADER, *rows]) + "\n"


GOOD = segment_rows("a.wav")[:1] + segment_rows("a.wav")[2:]  # three rows, all audio present

MANIFEST_CASES = {
    # name: (manifest text or bytes, regex the error must match; the manifest path is checked too)
    "missing_column": (_drop_column(GOOD, "segment_index"), r"missing required column\(s\) \['segment_index'\]"),
    "duplicate_segment": ("\n".join([MANIFEST_HEADER, *GOOD, GOOD[0]]) + "\n",
                          r"line 5: duplicate \(call_id, segment_index\) = \('c0', 0\), first seen on line 2"),
    "unknown_label": ("\n".join([MANIFEST_HEADER, *GOOD, "c0,1,../a.wav,p0,caller,1,sadnes"]) + "\n",
                      r"line 5: column 'labels': unknown label 'sadnes'"),
    "label_on_non_negative_row": ("\n".join([MANIFEST_HEADER, *GOOD, "c0,1,../a.wav,p0,caller,0,despair"]) + "\n",
                                  r"line 5: negative=0 but the row carries negative label\(s\) \['despair'\]"),
    "missing_audio_file": ("\n".join([MANIFEST_HEADER, *GOOD, "c0,1,../nowhere.wav,p0,caller,0,"]) + "\n",
                           r"line 5: column 'audio': file not found: .*nowhere\.wav"),
    "non_utf8": (("\n".join([MANIFEST_HEADER, *GOOD, "通话,0,../a.wav,p9,caller,0,"]) + "\n").encode("gb18030"),
                 r"line 5: not UTF-8 text \(byte 0x[0-9a-f]{2}, byte \d+ of the line\); re-save the manifest as UTF-8"),
    "empty_file": (b"", r"empty manifest"),
    "header_only": (MANIFEST_HEADER + "\n", r"manifest has no rows"),
    "segment_index_not_integer": ("\n".join([MANIFEST_HEADER, *GOOD, "c0,one,../a.wav,p0,caller,0,"]) + "\n",
                                  r"line 5: column 'segment_index' must be an integer, got 'one'"),
    "segment_index_overflow": ("\n".join([MANIFEST_HEADER, *GOOD, "c0,99999999999999999999,../a.wav,p0,caller,0,"])
                               + "\n", r"line 5: column 'segment_index' must be an integer"),
    "unknown_role": ("\n".join([MANIFEST_HEADER, *GOOD, "c0,1,../a.wav,p0,therapist,0,"]) + "\n",
                     r"line 5: column 'role' must be one of"),
    "negative_not_0_1": ("\n".join([MANIFEST_HEADER, *GOOD, "c0,1,../a.wav,p0,caller,maybe,"]) + "\n",
                         r"line 5: column 'negative' must be 0/1"),
    "more_values_than_header": ("\n".join([MANIFEST_HEADER, *GOOD, "c0,1,../a.wav,p0,caller,0,,extra"]) + "\n",
                                r"line 5: more values than header columns"),
    "blank_line_then_error": ("\n".join([MANIFEST_HEADER, *GOOD, "", "c0,x,../a.wav,p0,caller,0,"]) + "\n",
                              r"line 6: column 'segment_index'"),  # physical line numbers, blank lines counted
    "call_with_two_callers": ("\n".join([MANIFEST_HEADER, *GOOD, "c0,1,../a.wav,p7,caller,0,"]) + "\n",
                              r"line 5: call 'c0' has caller_id 'p7' but line 2 gave 'p0'"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_bad_manifest_is_named(capsys, audio_root, command, case):
    text, message = MANIFEST_CASES[case]
    cfg = write_corpus(audio_root, f"manifest-{case}", [], text=text)
    err = fails(capsys, command, cfg, "--out", cfg.parent / f"run-{command}", "--overwrite", "--quiet")
    assert str(cfg.parent / "manifest.csv") in err
    assert re.search(message, err), err


def test_bad_jsonl_manifest_is_named(capsys, audio_root):
    rows = [json.dumps({"call_id": "c0", "segment_index": 0, "audio": "../a.wav"}), '{"call_id": "c0", "segm']
    cfg = write_corpus(audio_root, "jsonl", [], manifest_name="manifest.jsonl", text="\n".join(rows) + "\n")
    err = fails(capsys, "cv", cfg, "--out", cfg.parent / "run", "--quiet")
    assert re.search(r"manifest\.jsonl: line 2: not valid JSON", err), err


# ----------------------------------------------------------------------------- config keys

@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("override, message", [
    ("train.epoch=2", r"unknown config key 'train\.epoch'\. Valid keys here: .*epochs"),
    ("trian.epochs=2", r"unknown config key 'trian'\. Valid keys here: .*train"),
    ("context.kind=transfomer", r"'context\.kind' = 'transfomer' is not one of: identity, call_norm, transformer"),
    ("train.epochs=two", r"bad value for 'train\.epochs'"),
    ("train.epochs", r"override 'train\.epochs' is not of the form key=value"),
])
def test_bad_override_is_named(capsys, audio_root, command, override, message):
    cfg = write_corpus(audio_root, "overrides", GOOD)
    err = fails(capsys, command, cfg, override, "--out", cfg.parent / f"run-{command}", "--quiet")
    assert re.search(message, err), err


def test_misspelled_key_in_yaml_is_named(capsys, audio_root):
    cfg = write_corpus(audio_root, "yaml-typo", GOOD, extra_yaml="encoder_lr: 0.1\n")
    err = fails(capsys, "cv", cfg, "--out", cfg.parent / "run", "--quiet")
    assert str(cfg) in err and "unknown config key 'encoder_lr'" in err


def test_config_without_a_manifest_is_named(capsys, tmp_path):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("name: x\n", encoding="utf-8")
    err = fails(capsys, "cv", cfg, "--out", tmp_path / "run", "--quiet")
    assert "config key 'data.manifest' is not set" in err


def test_missing_config_file_is_named(capsys, tmp_path):
    err = fails(capsys, "cv", tmp_path / "nope.yaml", "--out", tmp_path / "run")
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in err


# ----------------------------------------------------------------------------- precomputed features

@pytest.mark.parametrize("kind, message", [
    ("missing", r"features file not found"),
    ("rows", r"feature rows but the manifest has"),
    ("nan", r"NaN or Inf in the features of 1 row\(s\); .*manifest\.jsonl: line 4 \(call 'c00_0', segment 3\)"),
    ("rank", r"features must be 2-D"),
    ("pickle", r"not a readable \.npy array"),
    ("text", r"not a readable \.npy array"),
])
def test_bad_features_file_is_named(capsys, tmp_path, kind, message):
    cfg = feature_corpus(tmp_path / "corpus", n_callers=4, calls_per_caller=1, turns=4)
    feats_path = tmp_path / "corpus" / "feats.npy"
    feats = np.load(feats_path)
    if kind == "missing":
        feats_path.unlink()
    elif kind == "rows":
        np.save(feats_path, feats[:-1])
    elif kind == "nan":
        feats[3, 1] = np.nan
        np.save(feats_path, feats)
    elif kind == "rank":
        np.save(feats_path, feats.reshape(-1))
    elif kind == "pickle":
        np.save(feats_path, np.array([{"a": 1}] * len(feats), dtype=object), allow_pickle=True)
    else:
        feats_path.write_text("not numbers", encoding="utf-8")
    err = fails(capsys, "cv", cfg, "--out", tmp_path / "run", "--quiet")
    assert "feats.npy" in err and re.search(message, err), err


# ----------------------------------------------------------------------------- handled edge cases

def test_single_segment_call_and_labels_without_positives_run_through(capsys, tmp_path):
    """A call with one segment is a call like any other; a label that never occurs, and folds in which
    some labels have no positive, leave those labels' AP/AUROC undefined (null; mean over the folds that have them)
    instead of crashing; the headline binary metrics stay finite."""
    cfg = feature_corpus(tmp_path / "corpus", n_callers=6, calls_per_caller=2, turns=6)
    manifest = tmp_path / "corpus" / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    feats = np.load(tmp_path / "corpus" / "feats.npy")
    keep = [i for i, r in enumerate(rows) if r["call_id"] != "c00_0" or r["segment_index"] == 0]
    rows = [rows[i] for i in keep]
    for r in rows:
        r["labels"] = [name for name in r["labels"] if name != "fear"]  # a label with no positive anywhere
    manifest.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    np.save(tmp_path / "corpus" / "feats.npy", feats[keep])
    assert sum(r["call_id"] == "c00_0" for r in rows) == 1

    rc, out, err = run(capsys, "cv", cfg, "train.epochs=1", "cv.folds=2", "--out", tmp_path / "run", "--quiet")
    assert rc == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["fine_per_label.fear.ap"]["folds"] == [None, None]  # undefined: JSON null, not NaN
    assert summary["fine_per_label.fear.support"]["folds"] == [0.0, 0.0]
    for name in ("binary_f1", "binary_seed_weighted_f1", "binary_auroc", "fine_weighted_f1", "fine_micro_f1"):
        assert np.isfinite(summary[name]["mean"]), name


# ----------------------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle around an untrained model with a tiny random-init wav2vec2 encoder (see test_bundle)."""
    pytest.importorskip("ctxemo.inference.predict")
    from test_bundle import random_bundle, tiny_config

    root = tmp_path_factory.mktemp("robust-bundle")
    return random_bundle(root / "bundle", tiny_config(root))


def read_skipped(out_dir: Path):
    import csv

    with open(out_dir / "skipped.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_predict_skips_bad_segments_naming_the_file_and_scores_the_rest(capsys, audio_root, bundle):
    """`predict` never stops for one bad input: each becomes a skipped.csv row with its reason; 8 kHz,
    44.1 kHz, stereo, silent and 10-sample segments of a manifest are scored (the short one zero-padded,
    as every other path pads it)."""
    for kind in ("corrupt", "zero_bytes", "header_only", "nan"):
        write_bad_audio(audio_root / f"p-{kind}.wav", kind)
    sf.write(audio_root / "p-8k.wav", tone(sr=8000), 8000)
    sf.write(audio_root / "p-44k.wav", tone(sr=44100), 44100)
    sf.write(audio_root / "p-stereo.wav", np.stack([tone(), tone(freq=300)], axis=1), SR)
    sf.write(audio_root / "p-silence.wav", np.zeros(SR // 2, dtype=np.float32), SR)
    sf.write(audio_root / "p-tiny.wav", tone()[:10], SR)
    names = ["a", "p-corrupt", "p-zero_bytes", "p-header_only", "p-nan", "p-missing", "p-8k", "p-44k", "p-stereo",
             "p-silence", "p-tiny"]
    cfg = write_corpus(audio_root, "predict", [f"c0,{i},../{n}.wav,p0,caller,0," for i, n in enumerate(names)])
    out = audio_root / "predictions"
    rc, stdout, _ = run(capsys, "predict", bundle, cfg.parent / "manifest.csv", "--out", out, "--quiet")
    assert rc == 0 and "scored 1 call(s), skipped 5 item(s)" in stdout
    reasons = {int(r["segment_index"]): r["reason"] for r in read_skipped(out)}
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    for index in (1, 2, 3, 4, 5):
        assert f"{names[index]}.wav" in reasons[index]
    assert "empty file (0 bytes)" in reasons[2] and "no samples" in reasons[3] and "NaN or Inf" in reasons[4]
    assert "audio file not found" in reasons[5]


def test_predict_names_a_bad_manifest_or_recording(capsys, audio_root, bundle):
    write_bad_audio(audio_root / "r-corrupt.wav", "corrupt")
    sf.write(audio_root / "r-silence.wav", np.zeros(SR, dtype=np.float32), SR)
    bad = write_corpus(audio_root, "predict-bad", [], text=MANIFEST_CASES["duplicate_segment"][0])
    out = audio_root / "predictions-bad"
    rc, stdout, stderr = run(capsys, "predict", bundle, bad.parent / "manifest.csv", audio_root / "r-corrupt.wav",
                        audio_root / "r-silence.wav", "--out", out, "--quiet")
    assert rc == 2 and "scored 0 call(s), skipped 3 item(s)" in stdout  # nothing scored: not a success
    assert "no call was scored" in stderr
    reasons = [r["reason"] for r in read_skipped(out)]
    assert re.search(r"manifest\.csv: line 5: duplicate", reasons[0])
    assert re.search(r"cannot read audio file .*r-corrupt\.wav", reasons[1])
    assert re.search(r"r-silence\.wav: no speech found", reasons[2])


def test_predict_missing_bundle_is_named(capsys, tmp_path, audio_root):
    pytest.importorskip("ctxemo.inference.predict")
    err = fails(capsys, "predict", tmp_path / "no-bundle", audio_root / "a.wav", "--out", tmp_path / "p")
    assert f"model bundle not found: {tmp_path / 'no-bundle'}" in err


# ----------------------------------------------------------------------------- unsafe files

class _Payload:
    """Unpickling this creates `path`: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_payload_in_a_checkpoint_is_refused(capsys, tmp_path):
    """cv resumes a fold from fold*/checkpoint.pt; a checkpoint carrying code is refused, not run."""
    cfg = feature_corpus(tmp_path / "corpus", n_callers=4, calls_per_caller=1, turns=4)
    evidence = tmp_path / "payload-ran"
    (tmp_path / "run" / "fold0").mkdir(parents=True)
    torch.save({"model": _Payload(evidence)}, tmp_path / "run" / "fold0" / "checkpoint.pt")
    err = fails(capsys, "cv", cfg, "train.epochs=1", "cv.folds=2", "cv.inner_folds=0", "--out", tmp_path / "run",
                "--quiet")
    assert f"cannot load checkpoint {tmp_path / 'run' / 'fold0' / 'checkpoint.pt'} safely" in err
    assert not evidence.exists()


def test_pickled_payload_in_a_bundle_is_refused(capsys, tmp_path, audio_root):
    pytest.importorskip("ctxemo.inference.bundle")
    import shutil

    from test_bundle import random_bundle, tiny_config

    from ctxemo.inference.bundle import META_FILE, WEIGHTS_FILE
    from ctxemo.io import file_sha256

    evidence = tmp_path / "payload-ran"
    original = random_bundle(tmp_path / "bundle", tiny_config(tmp_path))

    # 1. a pickle next to the weights
    extra = tmp_path / "extra"
    shutil.copytree(original, extra)
    torch.save({"w": _Payload(evidence)}, extra / "model.pt")
    err = fails(capsys, "predict", extra, audio_root / "a.wav", "--out", tmp_path / "p1")
    assert f"{extra / 'model.pt'}: bundles hold weights as safetensors only" in err

    # 2. the weights file itself replaced by a pickle, with its recorded sha256 updated to match
    swapped = tmp_path / "swapped"
    shutil.copytree(original, swapped)
    torch.save({"w": _Payload(evidence)}, swapped / WEIGHTS_FILE)
    meta = json.loads((swapped / META_FILE).read_text(encoding="utf-8"))
    meta["files"][WEIGHTS_FILE] = file_sha256(swapped / WEIGHTS_FILE)
    (swapped / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    err = fails(capsys, "predict", swapped, audio_root / "a.wav", "--out", tmp_path / "p2")
    assert f"{swapped / WEIGHTS_FILE}: not a safetensors file" in err
    assert not evidence.exists()
    assert not os.path.exists(tmp_path / "p1") or not list((tmp_path / "p1").iterdir())


# ----------------------------------------------------------------------------- synth and run folders

def test_synth_one_call_is_handled(capsys, tmp_path):
    rc, out, _ = run(capsys, "synth", "--out", tmp_path / "one", "--calls", "1", "--recordings", "1", "--quiet")
    assert rc == 0 and "wrote 1 whole-call recordings" in out


def test_synth_bad_argument_types_are_argparse_errors(capsys, tmp_path):
    err = fails(capsys, "synth", "--out", tmp_path / "s", "--calls", "many")
    assert "argument --calls: invalid int value: 'many'" in err


# Out-of-range numbers and unusable --out paths are named, not tracebacks.
@pytest.mark.parametrize("argument", [["--calls", "0"], ["--seed", "-1"]])
def test_synth_out_of_range_numbers_are_named(capsys, tmp_path, argument):
    err = fails(capsys, "synth", "--out", tmp_path / "s", *argument, "--quiet")
    assert argument[0] in err


def test_synth_negative_recordings_is_refused(capsys, tmp_path):
    fails(capsys, "synth", "--out", tmp_path / "s", "--calls", "2", "--recordings", "-1", "--quiet")


@pytest.mark.parametrize("command", ["synth", "cv"])
def test_out_that_is_a_file_is_named(capsys, tmp_path, audio_root, command):
    (tmp_path / "taken").write_text("not a folder")
    cfg = write_corpus(audio_root, "out-file", GOOD)
    args = ["--calls", "1"] if command == "synth" else [cfg]
    err = fails(capsys, command, *args, "--out", tmp_path / "taken", "--quiet")
    assert str(tmp_path / "taken") in err


def test_rerun_into_a_folder_of_another_config_is_refused(capsys, audio_root):
    """A run folder remembers its config: another config must not resume (and mix with) it."""
    cfg = write_corpus(audio_root, "other-config", [], text=MANIFEST_CASES["header_only"][0])
    out = cfg.parent / "run"
    fails(capsys, "cv", cfg, "--out", out, "--quiet")  # fails on the manifest: a refused run writes nothing
    assert not out.exists()
    out.mkdir()
    (out / "config.yaml").write_text("name: another-study\n", encoding="utf-8")  # (tests/test_run_folders.py: real runs)
    err = fails(capsys, "cv", cfg, "train.epochs=3", "--out", out, "--quiet")
    assert f"{out} holds a run with a different config" in err and "--overwrite" in err
