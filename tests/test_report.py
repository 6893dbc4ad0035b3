"""Tests for ctxemo.reports.run_folder and ctxemo.reports.plots on hand-made run folders (no training): pooled metrics
agree with scikit-learn and with metrics.fine_metrics, the caller-level bootstrap, folder detection."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn import metrics as skm

from ctxemo.config import load_config
from ctxemo.errors import CtxemoError
from ctxemo.evaluation.evaluate import evaluate
from ctxemo.evaluation.metrics import decision_f1, fine_metrics
from ctxemo.evaluation.scoring import SegmentScores
from ctxemo.io import write_json
from ctxemo.reports import comparison
from ctxemo.reports import run_folder as report_run
from ctxemo.reports.tables import write_predictions
from ctxemo.taxonomy import Taxonomy

LABELS = ["despair", "sadness", "fear"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_corpus(n_callers: int = 12, calls_per_caller: int = 2, turns: int = 6, seed: int = 0):
    """Gold labels of a small corpus: call / caller ids, segment index, negative [n], fine [n, c]."""
    rng = np.random.default_rng(seed)
    call, caller, index, fine = [], [], [], []
    for p in range(n_callers):
        for k in range(calls_per_caller):
            state = rng.random() < 0.5
            label = rng.integers(len(LABELS))
            for i in range(turns):
                call.append(f"c{p:02d}_{k}")
                caller.append(f"p{p:02d}")
                index.append(i)
                row = np.zeros(len(LABELS), dtype=int)
                row[label] = int(state)
                fine.append(row)
    fine = np.array(fine)
    return SimpleNamespace(call_id=call, caller_id=caller, segment_index=np.array(index), fine=fine,
                           negative=fine.max(1), taxonomy=Taxonomy(labels=tuple(LABELS)))


def write_manifest(path: Path, corpus) -> Path:
    rows = [{"call_id": c, "segment_index": int(i), "caller_id": p, "role": "caller",
             "labels": [LABELS[j] for j in np.flatnonzero(f)]}
            for c, i, p, f in zip(corpus.call_id, corpus.segment_index, corpus.caller_id, corpus.fine)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def write_arm(arm_dir: Path, corpus, *, noise: float, n_folds: int = 3, seed: int = 0,
              multilabel: bool = True, manifest: Path | None = None) -> None:
    """An arm folder as run_cv leaves it: config.yaml, fold*/metrics.json and fold*/predictions.csv written
    by the real evaluate / write_predictions, for predictions = gold blurred by `noise`."""
    rng = np.random.default_rng(seed)
    taxonomy = Taxonomy(labels=tuple(LABELS), multilabel=multilabel)
    # Single-label with every label negative: P(negative) can only come from the binary head.
    cfg = load_config(overrides=[f"taxonomy.labels=[{','.join(LABELS)}]", f"taxonomy.multilabel={multilabel}",
                                 f"data.manifest={manifest}" if manifest else "data.manifest=null",
                                 "head.binary_from=" + ("mean" if multilabel else "head")])
    arm_dir.mkdir(parents=True, exist_ok=True)
    (arm_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    callers = sorted(set(corpus.caller_id))
    for k in range(n_folds):
        test_callers = set(callers[k::n_folds])
        rows = np.array([i for i, c in enumerate(corpus.caller_id) if c in test_callers])
        gold_fine, gold_neg = corpus.fine[rows], corpus.negative[rows]
        p_neg = np.clip(gold_neg + rng.normal(0, noise, len(rows)), 0, 1)
        p_fine = np.clip(gold_fine + rng.normal(0, noise, gold_fine.shape), 0, 1)
        if not multilabel:
            p_fine = p_fine / p_fine.sum(1, keepdims=True).clip(min=1e-6)
        scores = SegmentScores(rows, p_neg, p_fine, gold_neg, gold_fine)
        fine_thresholds = np.array([0.4, 0.5, 0.6]) + 0.05 * k if multilabel else None  # differ per fold
        metrics = evaluate(scores, taxonomy=taxonomy, binary_threshold=0.5, fine_thresholds=fine_thresholds)
        metrics.update(fold=k, thresholds={"binary": 0.5, "fine": None if fine_thresholds is None
                                           else fine_thresholds.tolist()})
        (arm_dir / f"fold{k}").mkdir(exist_ok=True)
        write_predictions(arm_dir / f"fold{k}" / "predictions.csv", scores, manifest=corpus, fold=k,
                          binary_threshold=0.5, fine_thresholds=fine_thresholds)
        write_json(arm_dir / f"fold{k}" / "metrics.json", metrics)


@pytest.fixture
def corpus():
    return fake_corpus()


@pytest.fixture
def ablation_dir(tmp_path, corpus):
    run = tmp_path / "abl"
    manifest = write_manifest(tmp_path / "manifest.jsonl", corpus)
    write_arm(run / "ref", corpus, noise=0.45, seed=1, manifest=manifest)
    write_arm(run / "better", corpus, noise=0.1, seed=2, manifest=manifest)
    write_arm(run / "same", corpus, noise=0.45, seed=1, manifest=manifest)
    cfg = load_config(overrides=["ablation.arms.ref=[]", "ablation.arms.better=[]", "ablation.arms.same=[]",
                                 "ablation.reference=ref"])
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    return run


def test_pooled_f1_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((80, 4)) < [0.3, 0.2, 0.05, 0.0]).astype(int)
    pred = (rng.random((80, 4)) < 0.25).astype(int)
    assert decision_f1(y, pred, average="weighted") == pytest.approx(skm.f1_score(y, pred, average="weighted", zero_division=0))
    assert decision_f1(y[:, 0], pred[:, 0]) == pytest.approx(skm.f1_score(y[:, 0], pred[:, 0]))
    assert decision_f1(np.zeros(5), np.zeros(5)) == 0.0
    gold_idx, pred_idx = rng.integers(0, 4, 80), rng.integers(0, 4, 80)
    eye = np.eye(4, dtype=int)
    assert decision_f1(eye[gold_idx], eye[pred_idx], average="weighted") == pytest.approx(
        skm.f1_score(gold_idx, pred_idx, average="weighted", labels=range(4), zero_division=0))


def test_detect_kind(ablation_dir, tmp_path):
    assert report_run.detect_kind(ablation_dir) == "ablation"
    assert report_run.detect_kind(ablation_dir / "ref") == "cv"
    assert list(report_run.arm_dirs(ablation_dir)) == ["ref", "better", "same"]
    with pytest.raises(CtxemoError):
        report_run.detect_kind(tmp_path / "empty_or_missing")


def test_pooled_predictions_reproduce_fold_metrics(ablation_dir, corpus):
    """Decisions rebuilt from predictions.csv with each fold's thresholds give the fold's metrics back."""
    arm = ablation_dir / "ref"
    pooled = report_run.load_predictions(arm)
    assert len(pooled.call_id) == len(corpus.call_id) and pooled.labels == LABELS
    counts = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    for k in range(3):
        metrics = json.loads((arm / f"fold{k}" / "metrics.json").read_text())
        one = report_run.load_predictions(arm, folds=[k])
        assert decision_f1(one.gold_fine, one.pred_fine, average="weighted") == pytest.approx(metrics["fine"]["weighted_f1"])
        assert decision_f1(one.negative, one.pred_negative) == pytest.approx(metrics["binary"]["f1"])
        for pair in metrics["fine"]["confused_pairs"]:  # 3 labels: at most 6 pairs, all stored
            counts[LABELS.index(pair["true"]), LABELS.index(pair["pred"])] += pair["count"]
    expected = report_run.pair_counts(pooled)
    np.fill_diagonal(expected, 0)
    np.testing.assert_array_equal(expected, counts)


def test_pair_counts_multiclass_match_fine_metrics(tmp_path, corpus):
    write_arm(tmp_path / "arm", corpus, noise=0.4, multilabel=False)
    pooled = report_run.load_predictions(tmp_path / "arm")
    keep = pooled.fine_rows()
    assert keep.sum() == (corpus.fine.sum(1) > 0).sum()  # unlabelled rows have no class to score
    reference = fine_metrics(pooled.gold_fine[keep].argmax(1), pooled.p_fine[keep], labels=LABELS, multilabel=False)
    counts = report_run.pair_counts(pooled)
    for pair in reference["confused_pairs"]:
        assert counts[LABELS.index(pair["true"]), LABELS.index(pair["pred"])] == pair["count"]


def test_bootstrap_finds_the_better_arm_and_not_the_same_one(ablation_dir):
    boot = report_run.bootstrap_comparison(ablation_dir, ["ref", "better", "same"], reference="ref", n_boot=300)
    assert boot["grouped_by"] == "caller_id"  # from predictions.csv if it has them, else the arm's manifest
    better, same = boot["arms"]["better"], boot["arms"]["same"]
    for name in ("binary_f1", "fine_weighted_f1"):
        assert better[name]["diff"] > 0.1 and better[name]["p"] < 0.05 and better[name]["ci_low"] > 0
        assert same[name]["diff"] == 0 and same[name]["p"] == 1.0
        assert better[name]["n_groups"] == 12


def test_bootstrap_groups_by_call_without_caller_ids(ablation_dir, tmp_path):
    (tmp_path / "manifest.jsonl").unlink()
    for arm in ("ref", "better"):
        for path in (ablation_dir / arm).glob("fold*/predictions.csv"):
            lines = path.read_text().splitlines()
            if "caller_id" in lines[0].split(","):  # drop the column if the writer adds it
                col = lines[0].split(",").index("caller_id")
                lines = [",".join(c for i, c in enumerate(line.split(",")) if i != col) for line in lines]
                path.write_text("\n".join(lines) + "\n")
    boot = report_run.bootstrap_comparison(ablation_dir, ["ref", "better"], reference="ref", n_boot=50)
    assert boot["grouped_by"] == "call_id" and boot["arms"]["better"]["binary_f1"]["n_groups"] == 24


def test_regenerate_ablation_writes_tables_bootstrap_and_plots(ablation_dir):
    text = comparison.regenerate(ablation_dir, n_boot=100)
    assert "p_boot=" in text and "p=" in text
    summary = json.loads((ablation_dir / "summary.json").read_text())
    assert summary["reference"] == "ref" and set(summary["bootstrap"]["arms"]) == {"better", "same"}
    markdown = (ablation_dir / "summary.md").read_text()
    comparison.regenerate(ablation_dir, n_boot=100)  # idempotent: one bootstrap section, not two
    assert (ablation_dir / "summary.md").read_text() == markdown
    assert markdown.count(report_run.BOOTSTRAP_HEADING) == 1
    for png in ("per_label_f1.png", "confused_pairs.png", "per_call_ref_vs_better.png", "per_call_ref_vs_same.png"):
        data = (ablation_dir / "plots" / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    pairs = (ablation_dir / "confused_pairs.md").read_text()
    assert "## better" in pairs and "| gold | predicted | count | share |" in pairs
    # Ids and numbers only: every output cell is a label name, an id, a number or fixed prose.
    for name in ("summary.csv", "bootstrap.csv"):
        assert "gold_labels" not in (ablation_dir / name).read_text()


def test_regenerate_compares_only_folds_every_arm_finished(ablation_dir):
    (ablation_dir / "better" / "fold2" / "metrics.json").unlink()
    text = comparison.regenerate(ablation_dir, n_boot=50)
    assert "folds [0, 1]" in text
    summary = json.loads((ablation_dir / "summary.json").read_text())
    assert all(len(s["binary_f1"]["folds"]) == 2 for s in summary["arms"].values())
    assert len(json.loads((ablation_dir / "ref" / "summary.json").read_text())["binary_f1"]["folds"]) == 3


def test_per_call_errors():
    ref = SimpleNamespace(call_id=np.array(["a", "a", "b"], dtype=object), p_negative=np.array([0.2, 0.6, 0.5]),
                          negative=np.array([0, 1, 1]))
    arm = SimpleNamespace(call_id=ref.call_id, p_negative=np.array([0.0, 1.0, 0.9]), negative=ref.negative)
    x, y, share = comparison.per_call_errors(ref, arm)
    np.testing.assert_allclose(x, [0.3, 0.5])
    np.testing.assert_allclose(y, [0.0, 0.1], atol=1e-12)
    np.testing.assert_allclose(share, [0.5, 1.0])


def test_chance_level_arm_is_marked_and_trivial_rows_are_shown(tmp_path, corpus):
    """An arm whose scores carry nothing gets an AUROC interval around 0.5 and is marked; a good one is not."""
    pooled_noise = {}
    for name, noise in (("good", 0.1), ("noise", 5.0)):
        write_arm(tmp_path / name, corpus, noise=noise, seed=3)
        pooled = report_run.load_predictions(tmp_path / name)
        groups, _ = report_run.caller_groups(pooled, tmp_path / name)
        pooled_noise[name] = report_run.pooled_metrics(pooled, groups, n_boot=200)
    assert pooled_noise["noise"]["chance_level"] and not pooled_noise["good"]["chance_level"]
    low, high = pooled_noise["good"]["binary_auroc_ci"]
    assert 0.5 < low <= pooled_noise["good"]["binary_auroc"] <= high
    text = comparison.pooled_text(pooled_noise)
    assert "noise (AUROC interval includes 50: chance level)" in text and "good (AUROC" not in text


def test_trivial_predictors_score_the_same_test_rows():
    from ctxemo.evaluation.evaluate import headline, trivial_metrics

    taxonomy = Taxonomy(labels=tuple(LABELS))
    gold_neg = np.array([1, 1, 0, 0, 0])
    gold_fine = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    scores = SegmentScores(np.arange(5), np.full(5, 0.3), np.zeros((5, 3)), gold_neg, gold_fine)
    rows = trivial_metrics(scores, taxonomy=taxonomy, train_negative_share=0.4,
                           train_fine_share=np.array([0.6, 0.1, 0.0]))
    assert rows["all_negative"]["binary_f1"] == pytest.approx(2 * 2 / (2 + 5))  # recall 1, precision 2/5
    assert rows["all_negative"]["binary_recall"] == 1.0 and rows["all_negative"]["binary_auroc"] == 0.5
    assert rows["training_prior"]["binary_f1"] == 0.0  # 0.4 < 0.5: nothing called negative
    assert rows["training_prior"]["fine_weighted_f1"] == pytest.approx(2 / 3 * (2 * 2 / (2 + 5)))  # despair always
    flat = headline({"binary": {"f1": 0.5}, "fine": {"weighted_f1": 0.2}, "trivial": rows})
    assert flat["all_negative.binary_f1"] == rows["all_negative"]["binary_f1"] and flat["binary_f1"] == 0.5
