"""Tests for ctxemo.evaluation.evaluate: the rule that makes a segment's binary decision and fine labels agree,
the minimum label probability, and `ctxemo evaluate` on a held-out manifest."""
import numpy as np

from ctxemo.evaluation.evaluate import (
    MIN_LABEL_PROB,
    Thresholds,
    decision_thresholds,
    segment_labels,
)
from ctxemo.evaluation.scoring import SegmentScores
from ctxemo.taxonomy import Taxonomy

MULTI = Taxonomy(labels=("sadness", "fear", "calm"), negative_labels=("sadness", "fear"))
SINGLE = Taxonomy(labels=("sadness", "fear", "calm"), multilabel=False, negative_labels=("sadness", "fear"))
CUT = np.array([0.4, 0.4, 0.4])


def test_a_negative_segment_always_names_a_negative_label():
    p = np.array([0.2, 0.3, 0.1])  # nothing over its threshold
    assert segment_labels(p, negative=True, taxonomy=MULTI, fine_thresholds=CUT) == ["fear"]
    assert segment_labels(p, negative=False, taxonomy=MULTI, fine_thresholds=CUT) == []


def test_labels_follow_the_binary_side_and_the_probability_floor():
    p = np.array([0.9, 0.5, 0.6])
    assert segment_labels(p, negative=True, taxonomy=MULTI, fine_thresholds=CUT) == ["sadness", "fear"]
    assert segment_labels(p, negative=False, taxonomy=MULTI, fine_thresholds=CUT) == ["calm"]
    tiny = np.array([0.003, 0.05, 0.0])
    # Thresholds tuned down to 0.0024 do not make a 0.3% label "top".
    assert segment_labels(tiny, negative=False, taxonomy=MULTI, fine_thresholds=np.full(3, 0.0024)) == []
    assert segment_labels(tiny, negative=True, taxonomy=MULTI, fine_thresholds=np.full(3, 0.0024)) == ["fear"]


def test_single_label_argmax_moves_to_the_decided_side():
    p = np.array([0.2, 0.3, 0.5])
    assert segment_labels(p, negative=False, taxonomy=SINGLE, fine_thresholds=None) == ["calm"]
    assert segment_labels(p, negative=True, taxonomy=SINGLE, fine_thresholds=None) == ["fear"]


def test_tuned_fine_thresholds_never_fall_below_the_floor():
    rng = np.random.default_rng(0)
    fine = (rng.random((40, 3)) < 0.2).astype(int)
    p_fine = 0.01 * rng.random((40, 3)) + 0.002 * fine  # positives only slightly above: a tiny tuned cut
    scores = SegmentScores(np.arange(40), rng.random(40), p_fine, fine.max(1), fine)
    cut = decision_thresholds(scores, MULTI, tune=True)
    assert isinstance(cut, Thresholds) and np.all(cut.fine >= MIN_LABEL_PROB)


def test_cli_evaluate_writes_a_folds_files_for_a_held_out_manifest(tmp_path):
    """`ctxemo evaluate BUNDLE MANIFEST`: predictions.csv as a CV fold writes it (gold `negative` beside
    `pred_negative`), metrics.json computed from exactly those rows, the same scores as `ctxemo predict`."""
    import csv
    import json

    from bundle_helpers import random_bundle, small_corpus, tiny_config
    from sklearn.metrics import f1_score, roc_auc_score

    from ctxemo.cli import main

    manifest = small_corpus(tmp_path / "corpus", n_calls=4, seed=2)
    bundle = random_bundle(tmp_path / "bundle", tiny_config(tmp_path))
    assert main(["evaluate", str(bundle), str(manifest), "--out", str(tmp_path / "held")]) == 0
    with open(tmp_path / "held" / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:7] == ["call_id", "caller_id", "segment_index", "fold", "p_negative", "pred_negative",
                                 "negative"]
    metrics = json.loads((tmp_path / "held" / "metrics.json").read_text())
    gold = [int(r["negative"]) for r in rows]
    assert metrics["binary"]["f1"] == f1_score(gold, [int(r["pred_negative"]) for r in rows], zero_division=0)
    assert metrics["binary"]["auroc"] == roc_auc_score(gold, [float(r["p_negative"]) for r in rows])
    assert metrics["n_scored_segments"] == len(rows) and metrics["thresholds"]["binary"] == 0.45
    assert main(["predict", str(bundle), str(manifest), "--out", str(tmp_path / "pred"), "--quiet"]) == 0
    with open(tmp_path / "pred" / "segments.csv", newline="", encoding="utf-8") as handle:
        predicted = {(r["call_id"], r["segment_index"]): r for r in csv.DictReader(handle) if r["role"] == "caller"}
    assert "negative" not in next(iter(predicted.values()))  # predict's decision column is pred_negative
    for r in rows:
        twin = predicted[(r["call_id"], r["segment_index"])]
        assert float(twin["p_negative"]) == float(r["p_negative"]) and twin["pred_negative"] == r["pred_negative"]


def test_evaluate_names_the_manifest_it_cannot_read(tmp_path):
    from bundle_helpers import random_bundle, tiny_config

    from ctxemo.cli import main

    bundle = random_bundle(tmp_path / "bundle", tiny_config(tmp_path))
    (tmp_path / "bad.csv").write_text("call_id,segment_index\nc1,zero\n", encoding="utf-8")
    assert main(["evaluate", str(bundle), str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_a_corpus_without_fine_labels_is_refused_or_runs_binary_only(features_config, load_test_config, tmp_path):
    import json

    import pytest

    from ctxemo.errors import ConfigError
    from ctxemo.studies.cv import run_cv

    manifest = features_config.parent / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("\n".join(json.dumps({**{k: v for k, v in r.items() if k != "labels"},
                                              "negative": int(bool(r["labels"]))}) for r in rows))
    with pytest.raises(ConfigError, match=r"manifest.jsonl: no caller segment carries a fine label.*loss.fine_weight=0"):
        run_cv(load_test_config(features_config), tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused" / "fold0").exists()  # refused before anything trained
    cfg = load_test_config(features_config, "loss.fine_weight=0", "head.binary_from=head", "cv.only_folds=[0]",
                           "train.epochs=1")
    summary = run_cv(cfg, tmp_path / "binary", progress=False)
    assert "binary_f1" in summary and not any(k.startswith("fine_") for k in summary)
    metrics = json.loads((tmp_path / "binary" / "fold0" / "metrics.json").read_text())
    assert metrics["fine"] is None and "fine_weighted_f1" not in metrics["trivial"]["all_negative"]
    assert "fine" not in (tmp_path / "binary" / "summary.md").read_text()
