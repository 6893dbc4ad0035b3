"""Tests for ctxemo.evaluation.metrics: agreement with scikit-learn, threshold tuning, fold summaries, paired tests."""
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from ctxemo.evaluation.metrics import (
    binary_metrics,
    fine_metrics,
    flatten_metrics,
    mean_std,
    paired_bootstrap,
    paired_test,
    summarize_folds,
    tune_binary_threshold,
    tune_thresholds,
)

LABELS = ["despair", "sadness", "fear", "anxiety"]


@pytest.fixture
def binary_data():
    rng = np.random.default_rng(0)
    y = (rng.random(60) < 0.3).astype(int)
    p = np.clip(0.35 * y + rng.random(60) * 0.6, 0, 1)
    return y, p


@pytest.fixture
def multilabel_data():
    rng = np.random.default_rng(1)
    y = (rng.random((50, 4)) < [0.4, 0.3, 0.1, 0.0]).astype(int)  # "anxiety" never occurs
    p = np.clip(0.4 * y + rng.random((50, 4)) * 0.6, 0, 1)
    return y, p


def test_binary_metrics_agree_with_sklearn(binary_data):
    y, p = binary_data
    out = binary_metrics(y, p, threshold=0.45)
    pred = (p >= 0.45).astype(int)
    assert out["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert out["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert out["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert out["seed_weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert out["auroc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert out["ap"] == pytest.approx(skm.average_precision_score(y, p))
    assert out["support_negative"] == y.sum() and out["n"] == 60
    json.dumps(out)


def test_single_class_auroc_is_nan_not_a_crash():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning spam either
        out = binary_metrics(np.zeros(5, int), np.linspace(0, 1, 5))
    assert math.isnan(out["auroc"]) and math.isnan(out["ap"])
    assert out["f1"] == 0.0 and out["precision"] == 0.0


def test_fine_multilabel_agrees_with_sklearn(multilabel_data):
    y, p = multilabel_data
    thresholds = np.array([0.5, 0.4, 0.6, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fine_metrics(y, p, labels=LABELS, multilabel=True, thresholds=thresholds)
    pred = (p >= thresholds).astype(int)
    for avg in ("weighted", "micro"):
        assert out[f"{avg}_f1"] == pytest.approx(skm.f1_score(y, pred, average=avg, zero_division=0))
    present, labelled = [0, 1, 2], y.sum(1) > 0  # "anxiety" is absent: out of the macro average
    assert out["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=present, zero_division=0))
    assert out["labelled_samples_f1"] == pytest.approx(
        skm.f1_score(y[labelled], pred[labelled], average="samples", zero_division=0))
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    for k in present:
        row = out["per_label"][LABELS[k]]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (prec[k], rec[k], f1[k], sup[k])
        )
    assert out["per_label"]["despair"]["ap"] == pytest.approx(skm.average_precision_score(y[:, 0], p[:, 0]))
    assert out["per_label"]["despair"]["auroc"] == pytest.approx(skm.roc_auc_score(y[:, 0], p[:, 0]))
    assert math.isnan(out["per_label"]["anxiety"]["ap"])
    expected_macro_ap = np.mean([skm.average_precision_score(y[:, k], p[:, k]) for k in range(3)])
    assert out["macro_ap"] == pytest.approx(expected_macro_ap)
    json.dumps(out)


def test_multilabel_confused_pairs_count_missed_and_spurious():
    labels = ["a", "b", "c"]
    y = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    p = np.array([[0.1, 0.9, 0.0], [0.2, 0.8, 0.9], [0.0, 0.1, 0.9], [0.9, 0.9, 0.0]])
    out = fine_metrics(y, p, labels=labels, multilabel=True)
    # a missed & b spurious: rows 0, 1; a missed & c spurious: row 1; b missed & c spurious: row 2.
    assert out["confused_pairs"] == [
        {"true": "a", "pred": "b", "count": 2},
        {"true": "a", "pred": "c", "count": 1},
        {"true": "b", "pred": "c", "count": 1},
    ]


def test_fine_multiclass_agrees_with_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 40)
    logits = rng.normal(size=(40, 4)) + 1.5 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    out = fine_metrics(y, p, labels=LABELS, multilabel=False)
    pred = p.argmax(1)
    for avg in ("weighted", "macro", "micro"):
        assert out[f"{avg}_f1"] == pytest.approx(skm.f1_score(y, pred, average=avg, labels=range(4), zero_division=0))
    assert math.isnan(out["labelled_samples_f1"])
    assert out["per_label"]["fear"]["f1"] == pytest.approx(skm.f1_score(y == 2, pred == 2))
    cm = skm.confusion_matrix(y, pred, labels=range(4))
    np.fill_diagonal(cm, 0)
    top = out["confused_pairs"][0]
    assert top["count"] == cm.max()
    assert sum(pair["count"] for pair in out["confused_pairs"]) <= cm.sum()
    one_hot = fine_metrics(np.eye(4, dtype=int)[y], p, labels=LABELS, multilabel=False)
    assert one_hot["macro_f1"] == out["macro_f1"]


def test_tuned_thresholds_beat_or_match_half(multilabel_data):
    y, p = multilabel_data
    tuned = tune_thresholds(y, p)
    assert tuned.shape == (4,)
    assert tuned[3] == 0.5  # no positives
    for k in range(4):
        at_tuned = skm.f1_score(y[:, k], p[:, k] >= tuned[k], zero_division=0)
        at_half = skm.f1_score(y[:, k], p[:, k] >= 0.5, zero_division=0)
        assert at_tuned >= at_half
    # The midpoint rule keeps the tuned cut strictly between observed values.
    assert not np.any(np.isin(tuned[:3], p[:, :3]))


def test_tuned_threshold_finds_perfect_split():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.4])
    assert tune_binary_threshold(y, p) == pytest.approx(0.25)
    assert binary_metrics(y, p, threshold=tune_binary_threshold(y, p))["f1"] == 1.0


def test_mean_std_ignores_nan_and_uses_ddof_one():
    mean, std = mean_std([1.0, 2.0, float("nan"), 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
    mean, std = mean_std([4.0])
    assert mean == 4.0 and math.isnan(std)  # one fold: no spread, not a spread of 0
    assert all(math.isnan(v) for v in mean_std([float("nan")]))


def test_summarize_folds_and_flatten():
    folds = [
        flatten_metrics({"f1": 0.5, "per_label": {"fear": {"f1": 0.2}}, "confused_pairs": []}),
        flatten_metrics({"f1": 0.7, "per_label": {"fear": {"f1": 0.4}}, "confused_pairs": []}),
    ]
    summary = summarize_folds(folds)
    assert set(summary) == {"f1", "per_label.fear.f1"}
    assert summary["f1"]["mean"] == pytest.approx(0.6)
    assert summary["f1"]["std"] == pytest.approx(math.sqrt(0.02))
    assert summary["per_label.fear.f1"]["folds"] == [0.2, 0.4]
    json.dumps(summary)


def test_paired_test_known_numbers():
    a = [0.60, 0.62, 0.58, 0.61, 0.59]
    b = [0.65, 0.66, 0.60, 0.66, 0.62]
    out = paired_test(a, b)
    # Differences: 0.05, 0.04, 0.02, 0.05, 0.03 -> mean 0.038, sample std 0.013038.
    assert out["n"] == 5
    assert out["mean_diff"] == pytest.approx(0.038)
    assert out["std_diff"] == pytest.approx(0.0130384, rel=1e-4)
    # t = 0.038 / (0.0130384 / sqrt 5) = 6.5169, two-sided p with 4 df.
    assert out["t_stat"] == pytest.approx(6.5169, rel=1e-3)
    assert out["p_ttest"] == pytest.approx(2 * stats.t.sf(6.5169, 4), rel=1e-3)
    # All five differences positive: exact Wilcoxon two-sided p = 2 / 2^5.
    assert out["p_wilcoxon"] == pytest.approx(0.0625)


def test_paired_test_undefined_cases_are_nan():
    same = paired_test([0.5, 0.6], [0.5, 0.6])
    assert same["mean_diff"] == 0.0 and math.isnan(same["p_ttest"]) and math.isnan(same["p_wilcoxon"])
    one = paired_test([0.5, float("nan")], [0.6, 0.7])
    assert one["n"] == 1 and math.isnan(one["std_diff"]) and math.isnan(one["p_ttest"])


def test_paired_bootstrap_detects_better_arm():
    rng = np.random.default_rng(3)
    groups = np.repeat([f"caller{i}" for i in range(30)], 4)
    y = (rng.random(120) < 0.4).astype(int)
    p_a = rng.random(120)  # chance
    p_b = np.clip(0.6 * y + 0.4 * rng.random(120), 0, 1)  # informative

    def accuracy(yy, pp):
        return float(np.mean((pp >= 0.5) == yy))

    out = paired_bootstrap(y, p_a, p_b, groups, metric_fn=accuracy, n_boot=300, seed=0)
    assert out["diff"] > 0 and out["ci_low"] > 0 and out["p"] < 0.05
    assert out["n_groups"] == 30 and out["n_boot"] == 300
    again = paired_bootstrap(y, p_a, p_b, groups, metric_fn=accuracy, n_boot=300, seed=0)
    assert again == out
    null = paired_bootstrap(y, p_a, p_a, groups, metric_fn=accuracy, n_boot=100, seed=0)
    assert null["diff"] == 0.0 and null["p"] == 1.0


def test_a_perfect_model_scores_one_on_rows_and_labels_it_can_be_judged_on():
    # Row 1 carries no gold label; label b has no gold positive in this fold.
    y = np.array([[1, 0], [0, 0]])
    out = fine_metrics(y, y.astype(float), labels=["a", "b"], multilabel=True)
    assert out["labelled_samples_f1"] == 1.0  # scikit-learn's samples F1 would give 0.5
    assert out["macro_f1"] == 1.0  # would be 0.5 with the absent label counted as 0
    assert out["n_labels_present"] == 1
    assert math.isnan(out["per_label"]["b"]["f1"]) and math.isnan(out["per_label"]["b"]["recall"])
    assert out["macro_ap"] == 1.0 and out["macro_auroc"] == 1.0


def test_macro_metrics_skip_the_same_absent_labels():
    rng = np.random.default_rng(3)
    y = (rng.random((50, 4)) < 0.3).astype(int)
    y[:, 2] = 0  # absent from this fold
    p = np.clip(0.4 * y + 0.6 * rng.random((50, 4)), 0, 1)
    out = fine_metrics(y, p, labels=LABELS, multilabel=True)
    kept = [0, 1, 3]
    assert out["n_labels_present"] == 3
    assert out["macro_f1"] == pytest.approx(np.mean([skm.f1_score(y[:, k], p[:, k] >= 0.5) for k in kept]))
    assert out["macro_ap"] == pytest.approx(np.mean([skm.average_precision_score(y[:, k], p[:, k]) for k in kept]))
    assert out["macro_auroc"] == pytest.approx(np.mean([skm.roc_auc_score(y[:, k], p[:, k]) for k in kept]))
    # Spurious predictions of the absent label still cost micro F1.
    spurious = p.copy()
    spurious[:, 2] = 0.9
    assert fine_metrics(y, spurious, labels=LABELS, multilabel=True)["micro_f1"] < out["micro_f1"]


def test_no_labelled_row_gives_undefined_not_zero():
    out = fine_metrics(np.zeros((3, 2), int), np.full((3, 2), 0.2), labels=["a", "b"], multilabel=True)
    assert math.isnan(out["labelled_samples_f1"]) and math.isnan(out["macro_f1"])


def test_json_files_hold_null_for_undefined_values(tmp_path):
    from ctxemo.io import read_json, write_json

    write_json(tmp_path / "m.json", {"auroc": float("nan"), "x": [np.float32("inf"), 1.5], "n": np.int64(3)})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_json(tmp_path / "m.json") == {"auroc": None, "x": [None, 1.5], "n": 3}
    # Read back, a null is NaN again: the fold summaries are the same from memory and from disk.
    assert math.isnan(flatten_metrics(read_json(tmp_path / "m.json"))["auroc"])  # read back: NaN again


def test_nan_validation_score_never_beats_a_defined_one():
    from ctxemo.training.loop import _is_better

    assert _is_better(float("nan"), None, "ap")  # nothing defined yet: keep the latest epoch
    assert _is_better(float("nan"), float("nan"), "ap")
    assert _is_better(0.1, float("nan"), "ap")  # the first defined score replaces an undefined best
    assert not _is_better(float("nan"), 0.1, "ap")
    assert _is_better(0.2, 0.1, "ap") and not _is_better(0.05, 0.1, "ap")
    assert _is_better(0.5, 1.0, "loss")


def test_four_callers_cannot_give_a_small_p():
    """The issue's case: an arm worse for all 4 callers. The bootstrap's p is withheld (it said 0.002); the
    exact sign-flip test can go no lower than 2 / 2^4 = 0.125."""
    from ctxemo.evaluation.metrics import f1_counts, f1_from_counts, sign_flip_test

    rng = np.random.default_rng(0)
    groups = np.repeat([f"c{i}" for i in range(4)], 30)
    y = (rng.random(120) < 0.5).astype(int)
    good = np.where(rng.random(120) < 0.9, y, 1 - y)
    bad = np.where(rng.random(120) < 0.6, y, 1 - y)
    boot = paired_bootstrap(y, good, bad, groups, metric_fn=lambda a, b: skm.f1_score(a, b, zero_division=0),
                            n_boot=200)
    assert math.isnan(boot["p"]) and "4 groups < 10" in boot["p_withheld"]
    flip = sign_flip_test(f1_counts(y, good, groups), f1_counts(y, bad, groups), f1_from_counts)
    assert flip["exact"] and flip["n_patterns"] == 16 and flip["min_p"] == 0.125
    assert flip["p"] == pytest.approx(0.125)
    assert flip["diff"] == pytest.approx(skm.f1_score(y, bad) - skm.f1_score(y, good))


def test_sign_flip_agrees_with_brute_force_and_separates_real_gains():
    from itertools import product

    from ctxemo.evaluation.metrics import f1_counts, f1_from_counts, sign_flip_test

    rng = np.random.default_rng(1)
    groups = np.repeat([f"c{i}" for i in range(6)], 10)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    a = np.where(rng.random((60, 3)) < 0.7, y, 1 - y)
    b = np.where(rng.random((60, 3)) < 0.75, y, 1 - y)

    def weighted(yy, pp):
        return skm.f1_score(yy, pp, average="weighted", zero_division=0)

    observed = weighted(y, b) - weighted(y, a)
    hits = 0
    for pattern in product([0, 1], repeat=6):
        swap = np.repeat(np.array(pattern, bool), 10)[:, None]
        hits += abs(weighted(y, np.where(swap, a, b)) - weighted(y, np.where(swap, b, a))) >= abs(observed) - 1e-12
    flip = sign_flip_test(f1_counts(y, a, groups), f1_counts(y, b, groups),
                          lambda t: f1_from_counts(t, average="weighted"))
    assert flip["diff"] == pytest.approx(observed) and flip["p"] == pytest.approx(hits / 64)
    # 40 callers, a clearly better arm: the sampled test finds it.
    groups = np.repeat([f"c{i}" for i in range(40)], 5)
    y = (rng.random(200) < 0.5).astype(int)
    weak, strong = np.where(rng.random(200) < 0.6, y, 1 - y), np.where(rng.random(200) < 0.95, y, 1 - y)
    flip = sign_flip_test(f1_counts(y, weak, groups), f1_counts(y, strong, groups), f1_from_counts, n_random=2000)
    assert not flip["exact"] and flip["p"] < 0.01


def test_seed_label_weighted_f1_is_the_mean_of_per_label_weighted_f1():
    rng = np.random.default_rng(4)
    y = (rng.random((60, 4)) < [0.3, 0.2, 0.1, 0.0]).astype(int)  # the last label absent: skipped
    p = np.clip(0.4 * y + 0.6 * rng.random((60, 4)), 0, 1)
    out = fine_metrics(y, p, labels=LABELS, multilabel=True)
    pred = p >= 0.5
    expected = np.mean([skm.f1_score(y[:, k], pred[:, k], average="weighted") for k in range(3)])
    assert out["seed_label_weighted_f1"] == pytest.approx(expected)
    assert out["seed_label_weighted_f1"] > out["macro_f1"]  # true negatives of rare labels count
