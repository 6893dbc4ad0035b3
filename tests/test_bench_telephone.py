"""benchmarks/bench_telephone.py: its pooled figures on tiny hand-made scores, and its smoke run on the real
EmoDB pseudo-calls (4 callers, one fold, two epochs, eGeMAPS). The full run: benchmarks/README.md "Telephone band"."""
import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest

from ctxemo.evaluation.scoring import SegmentScores

REPO = Path(__file__).resolve().parents[1]
REALSPEECH = REPO.parent / "shared" / "realspeech"


def _benchmark():
    spec = importlib.util.spec_from_file_location("bench_telephone", REPO / "benchmarks" / "bench_telephone.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pooled_figures_decide_each_fold_with_its_own_threshold():
    bench = _benchmark()
    manifest = types.SimpleNamespace(taxonomy=types.SimpleNamespace(labels=("calm", "angry")),
                                     call_id=["a", "a", "b", "b"], segment_index=[0, 1, 0, 1],
                                     caller_id=["x", "x", "y", "y"])
    one_hot = np.eye(2, dtype=int)
    # Fold 1 (rows 0-1): p 0.6 and 0.4 at threshold 0.5; fold 2 (rows 2-3): p 0.3 and 0.2 at threshold 0.25.
    fold1 = SegmentScores(np.array([0, 1]), np.array([0.6, 0.4]), np.array([[0.4, 0.6], [0.6, 0.4]]),
                          np.array([1, 0]), one_hot[[1, 0]])
    fold2 = SegmentScores(np.array([2, 3]), np.array([0.3, 0.2]), np.array([[0.7, 0.3], [0.8, 0.2]]),
                          np.array([1, 0]), one_hot[[1, 0]])
    figures = bench.condition_figures(bench.pool([(fold1, 0.5), (fold2, 0.25)], manifest, multilabel=False))
    assert figures["flagged_share"] == 0.5 and figures["gold_negative_share"] == 0.5  # rows 0 and 2 flagged
    assert figures["false_alarm_rate"] == 0.0 and figures["binary_f1"] == 1.0
    assert figures["mean_p_negative"] == pytest.approx(0.375)
    assert figures["binary_auroc"] == 0.75  # pooled ranking: 0.3 (negative) sits below 0.4 (calm)
    # argmax right on rows 0, 1, 3; row 2 (angry) read calm: F1 calm 0.8, angry 2/3, weighted by support 2 and 2
    assert figures["fine_weighted_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


@pytest.mark.skipif(not REALSPEECH.is_dir(), reason=f"real-speech corpora not found at {REALSPEECH}")
@pytest.mark.skipif(importlib.util.find_spec("opensmile") is None, reason="opensmile is not installed")
def test_smoke_scores_both_test_conditions_beside_the_prior(tmp_path, capsys):
    bench = _benchmark()
    report = bench.main(["--smoke", "--shares", "0", "1", "--seeds", "0", "--out", str(tmp_path), "--quiet"])
    results = report["results"]
    assert list(results) == ["isolated | share 0", "isolated | share 1"]
    for run in results.values():
        assert set(run) == {*bench.TEST_AUDIO, "prior"}
        for (figures,) in run.values():  # one seed
            assert all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in figures.values()), figures
        assert run["wideband"][0]["gold_negative_share"] == run["telephone"][0]["gold_negative_share"]
        assert run["prior"][0]["flagged_share"] in (0.0, 1.0)  # a constant predictor flags all or nothing
    # The two conditions read different audio: the same model cannot score them identically.
    wide, tele = results["isolated | share 0"]["wideband"][0], results["isolated | share 0"]["telephone"][0]
    assert wide["mean_p_negative"] != tele["mean_p_negative"]
    assert "| isolated | 1 | telephone |" in capsys.readouterr().out
    assert (tmp_path / "results.json").is_file() and len(list((tmp_path / "runs").glob("*.json"))) == 2
    # The telephone copies are the pipeline's files: 16-bit, at their own rate, the length of the original.
    import soundfile as sf

    copies = {rate: sorted((tmp_path / "telephone-wavs" / str(rate)).rglob("*.wav")) for rate in (8000, 16000)}
    assert len(copies[8000]) == len(copies[16000]) > 0
    info = sf.info(copies[8000][0])
    assert info.samplerate == 8000 and info.subtype == "PCM_16" and info.duration == pytest.approx(2.0, abs=0.01)
