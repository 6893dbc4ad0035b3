"""Run folders never mix results: a rerun resumes only on the same config and the same inputs (recorded in
run.json), `--overwrite` starts clean, a refused run writes nothing, and a resume says what it keeps."""
import json

import numpy as np
import pytest
from conftest import feature_corpus

from ctxemo.cli import main

CV = ["train.epochs=2", "train.patience=5", "cv.folds=3", "cv.inner_folds=0", "--quiet"]


@pytest.fixture
def corpus(tmp_path):
    return feature_corpus(tmp_path / "corpus", n_callers=6, calls_per_caller=2, turns=6)


def cv(config, out, *extra):
    return main(["cv", str(config), *CV, *extra, "--out", str(out)])


def snapshot(folder):
    """{relative path: bytes} of every file in a folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_json_records_input_fingerprints(tmp_path, corpus):
    assert cv(corpus, tmp_path / "run") == 0
    inputs = json.loads((tmp_path / "run" / "run.json").read_text())["inputs"]
    assert set(inputs) == {"manifest", "features"}
    assert inputs["manifest"]["rows"] == 6 * 2 * 6 and len(inputs["manifest"]["sha256"]) == 64
    assert inputs["features"]["path"].endswith("feats.npy")


def test_resume_with_a_changed_manifest_is_refused_and_nothing_is_touched(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert cv(corpus, run) == 0
    before = snapshot(run)
    manifest = corpus.parent / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:  # every caller row relabelled: the old predictions.csv gold labels would be wrong
        if row["role"] == "caller":
            row["labels"] = ["sadness"]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    capsys.readouterr()
    assert cv(corpus, run) == 2
    err = capsys.readouterr().err
    assert f"manifest {manifest}: content changed" in err
    assert "choose another --out, or pass --overwrite" in err
    assert snapshot(run) == before

    assert cv(corpus, run, "--overwrite") == 0  # the way on: start clean
    gold = [line.split(",") for line in (run / "fold0" / "predictions.csv").read_text().splitlines()]
    assert json.loads((run / "run.json").read_text())["inputs"]["manifest"]["sha256"] != \
        json.loads(before["run.json"])["inputs"]["manifest"]["sha256"]
    assert len(gold) > 1


def test_resume_with_changed_features_is_refused(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert cv(corpus, run) == 0
    feats = corpus.parent / "feats.npy"
    values = np.load(feats)
    values[0, 0] += 1.0
    np.save(feats, values)
    capsys.readouterr()
    assert cv(corpus, run) == 2
    err = capsys.readouterr().err
    assert f"features {feats}: content changed" in err and "manifest" not in err  # only what changed is named


def test_a_run_folder_from_before_input_fingerprints_still_resumes(tmp_path, corpus):
    run = tmp_path / "run"
    assert cv(corpus, run) == 0
    meta = json.loads((run / "run.json").read_text())
    del meta["inputs"]
    (run / "run.json").write_text(json.dumps(meta))
    assert cv(corpus, run) == 0


def test_a_run_folder_from_before_a_new_config_key_still_resumes(tmp_path, corpus, capsys):
    """A key added by a later ctxemo (here encoder.precision) takes its default in an older config.yaml, so the
    folder resumes while the run keeps that default, and is refused, naming the key, when it does not."""
    run = tmp_path / "run"
    assert cv(corpus, run) == 0
    stored = (run / "config.yaml").read_text()
    assert "precision: float32" in stored
    (run / "config.yaml").write_text(stored.replace("  precision: float32\n", ""))
    results = lambda: {k: v for k, v in snapshot(run).items() if k not in ("config.yaml", "run.json")}  # noqa: E731
    before = results()
    assert cv(corpus, run) == 0 and results() == before  # resumed: every fold was done, no result rewritten
    assert "precision: float32" in (run / "config.yaml").read_text()  # the record now names the new key
    capsys.readouterr()
    assert cv(corpus, run, "encoder.precision=bfloat16", "train.epochs=3") == 2
    err = capsys.readouterr().err
    assert "encoder.precision: 'float32' -> 'bfloat16'" in err and "train.epochs: 2 -> 3" in err, err


def test_overwrite_starts_clean_and_says_so(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert cv(corpus, run, "cv.only_folds=[0,1]") == 0
    assert len(json.loads((run / "fold1" / "history.json").read_text())) == 2
    (run / "stale-note.txt").write_text("from the old run")
    capsys.readouterr()
    assert cv(corpus, run, "cv.only_folds=[0]", "train.epochs=1", "--overwrite") == 0
    out = capsys.readouterr().out
    assert f"[overwrite] removed the previous run in {run}" in out
    assert not (run / "fold1").exists() and not (run / "stale-note.txt").exists()  # nothing old left
    assert len(json.loads((run / "fold0" / "history.json").read_text())) == 1  # fold 0 retrained
    assert json.loads((run / "summary.json").read_text())["binary_f1"]["folds"].__len__() == 1


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, corpus, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    assert cv(corpus, folder, "--overwrite") == 2
    assert "is not a ctxemo run folder" in capsys.readouterr().err
    assert (folder / "thesis.tex").read_text() == "precious" and len(list(folder.iterdir())) == 1


def test_a_refused_run_leaves_no_folder(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert cv(corpus, run, "cv.folds=7") == 2  # 6 callers: 7 folds are impossible
    assert "ctxemo cv: error:" in capsys.readouterr().err
    assert not run.exists()
    assert cv(corpus, run, "cv.only_folds=[5]") == 2
    assert "cv.only_folds" in capsys.readouterr().err and not run.exists()
    assert main(["ablate", str(corpus), *CV, "cv.folds=7", "ablation.arms={a: [], b: [context.kind=identity]}",
                 "--out", str(run)]) == 2
    assert not run.exists()
    assert main(["train", str(corpus), "train.lr=-1", "--out", str(run)]) == 2
    assert "'train.lr' = -1.0 must be > 0" in capsys.readouterr().err and not run.exists()


def test_resume_says_what_it_keeps(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert cv(corpus, run) == 0
    (run / "fold2" / "metrics.json").unlink()
    capsys.readouterr()
    assert cv(corpus, run) == 0
    assert f"[resume] {run}: fold(s) 0-1 done earlier (kept); running fold(s) 2" in capsys.readouterr().out
    assert cv(corpus, run) == 0
    assert "fold(s) 0-2 done earlier (kept); rebuilding the summary" in capsys.readouterr().out


def test_every_output_is_owner_only_whatever_the_umask(tmp_path, corpus):
    """One rule for every output (ctxemo/io.py): files 0600, folders 0700; the caller's umask is restored."""
    import os
    import stat
    previous = os.umask(0o022)  # a shared server's usual umask: 0644 files without the rule
    try:
        assert cv(corpus, tmp_path / "run") == 0
        assert main(["train", str(corpus), *CV, "--out", str(tmp_path / "train")]) == 0
        assert main(["predict", str(tmp_path / "train" / "bundle"), str(corpus.parent / "manifest.jsonl"),
                     "--features", str(corpus.parent / "feats.npy"), "--out", str(tmp_path / "pred"), "--quiet"]) == 0
        assert os.umask(0o022) == 0o022  # restored after each command
    finally:
        os.umask(previous)
    for root in ("run", "train", "pred"):
        for path in [tmp_path / root, *(tmp_path / root).rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_resume_after_an_audio_file_changed_is_refused(tmp_path, capsys):
    """Without features, the audio rows' fingerprint (the embedding cache's) is recorded and compared."""
    import os

    from ctxemo.data.synthetic import CorpusSpec, generate_corpus
    spec = CorpusSpec(n_calls=2, seed=3, calls_per_caller=1, min_turns=2, max_turns=3, caller_turn_sec=(0.3, 0.4),
                      operator_turn_sec=(0.3, 0.4))
    manifest = generate_corpus(tmp_path / "corpus", spec=spec)
    cfg = tmp_path / "embed.yaml"
    cfg.write_text(f"name: e\nout_dir: {tmp_path / 'runs'}\ndata:\n  manifest: {manifest}\n", encoding="utf-8")
    args = ["embed", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(args) == 0
    assert set(json.loads((tmp_path / "run" / "run.json").read_text())["inputs"]) == {"manifest", "audio"}
    wav = next((tmp_path / "corpus").rglob("*.wav"))
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))  # re-exported: another mtime
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "audio: the size or modification time of an audio file, or a row's crop, changed" in err
    assert "manifest" not in err


def test_an_impossible_inner_split_is_refused_before_anything_is_written(tmp_path, capsys):
    two = feature_corpus(tmp_path / "two", n_callers=2, calls_per_caller=2, turns=4)
    assert main(["cv", str(two), "cv.folds=2", "--out", str(tmp_path / "cv"), "--quiet"]) == 2  # 1 training caller
    assert "ctxemo cv: error:" in capsys.readouterr().err and not (tmp_path / "cv").exists()
    one = feature_corpus(tmp_path / "one", n_callers=1, calls_per_caller=3, turns=4)
    assert main(["train", str(one), "--out", str(tmp_path / "train"), "--quiet"]) == 2
    assert "ctxemo train: error:" in capsys.readouterr().err and not (tmp_path / "train").exists()
    arms = "ablation.arms={a: [], b: [context.kind=identity]}"
    assert main(["ablate", str(two), "cv.folds=2", arms, "--out", str(tmp_path / "abl"), "--quiet"]) == 2
    assert "ctxemo ablate: error:" in capsys.readouterr().err and not (tmp_path / "abl").exists()
