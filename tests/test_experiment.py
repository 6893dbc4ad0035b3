"""The evaluation protocol end to end on the precomputed-features corpus: caller-disjoint folds and inner
splits, a test fold that never reaches early stopping or thresholds, fold aggregation, resume, and the
`ablate` / `report` commands."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import feature_corpus
from sklearn import metrics as skm

from ctxemo.cli import main
from ctxemo.config import load_config
from ctxemo.data.splits import load_folds
from ctxemo.embedding.corpus import load_corpus
from ctxemo.evaluation import evaluate as evaluate_module
from ctxemo.studies import cv as experiment
from ctxemo.studies.cv import run_cv
from ctxemo.training import trainers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARMS = ["ablation.arms.isolated=[context.kind=identity]", "ablation.arms.contextual=[context.kind=transformer]",
        "ablation.reference=isolated"]


@pytest.fixture(scope="module")
def corpus_config(tmp_path_factory) -> Path:
    return feature_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cv_run(corpus_config, tmp_path_factory):
    """(config, run folder, summary) of one finished 3-fold CV."""
    cfg = load_config([corpus_config])
    run_dir = tmp_path_factory.mktemp("cv") / "run"
    return cfg, run_dir, run_cv(cfg, run_dir, progress=False)


@pytest.fixture(scope="module")
def ablate_run(corpus_config, tmp_path_factory):
    """(run folder, stdout, exit code) of `ctxemo ablate` with an isolated and a contextual arm."""
    out = tmp_path_factory.mktemp("ablate") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["ablate", str(corpus_config), *ARMS, "train.epochs=2", "--out", str(out), "--quiet"])
    return out, stdout.getvalue(), rc


def _rows(items) -> np.ndarray:
    return np.concatenate([it.rows for it in items]) if items else np.zeros(0, dtype=int)


def test_callers_disjoint_and_test_fold_never_tunes(corpus_config, tmp_path, monkeypatch):
    """Record every row that fit (training + early stopping), scoring and threshold tuning see, per fold
    (one inner split here; cross-fitting: tests/test_context_routes.py)."""
    cfg = load_config([corpus_config], ["train.epochs=2", "cv.inner_folds=0"])
    data = load_corpus(cfg, progress=False)
    caller = np.asarray(data.manifest.caller_id)
    events = []
    real_fit, real_score = trainers.fit, trainers.score_items
    real_tune_binary, real_tune_fine = evaluate_module.tune_binary_threshold, evaluate_module.tune_thresholds

    def spy_fit(model, *, train_items, val_items, **kwargs):
        events.append(("fit", _rows(train_items), _rows(val_items)))
        return real_fit(model, train_items=train_items, val_items=val_items, **kwargs)

    def spy_score(model, items, **kwargs):
        scores, loss = real_score(model, items, **kwargs)
        events.append(("score", _rows(items), scores))
        return scores, loss

    def spy_tune(name, real):
        def tune(y, p):
            events.append((name, y, p))
            return real(y, p)
        return tune

    monkeypatch.setattr(trainers, "fit", spy_fit)
    monkeypatch.setattr(trainers, "score_items", spy_score)
    monkeypatch.setattr(evaluate_module, "tune_binary_threshold", spy_tune("tune_binary", real_tune_binary))
    monkeypatch.setattr(evaluate_module, "tune_thresholds", spy_tune("tune_fine", real_tune_fine))
    run_cv(cfg, tmp_path / "cv", data=data, progress=False)

    folds = load_folds(tmp_path / "cv" / "folds.json", data.manifest.caller_id)
    fold_callers = [set(caller[f]) for f in folds]
    assert set().union(*fold_callers) == set(caller)
    for i in range(len(folds)):
        for j in range(i + 1, len(folds)):
            assert not fold_callers[i] & fold_callers[j], "a caller is in two folds"
    starts = [i for i, e in enumerate(events) if e[0] == "fit"]
    assert len(starts) == len(folds)
    for k, (start, end) in enumerate(zip(starts, starts[1:] + [len(events)])):
        fold_events = events[start:end]
        _, fit_rows, val_rows = fold_events[0]
        test_callers = fold_callers[k]
        assert not set(caller[fit_rows]) & set(caller[val_rows]), "inner validation shares a caller with training"
        assert not (set(caller[fit_rows]) | set(caller[val_rows])) & test_callers, "test callers in training"
        assert set(caller[fit_rows]) | set(caller[val_rows]) | test_callers == set(caller)
        scored = [e for e in fold_events if e[0] == "score"]
        tuned = [e for e in fold_events if e[0].startswith("tune")]
        assert [e[0] for e in tuned] == ["tune_binary", "tune_fine"]
        for _, y, _ in tuned:  # the tuning arrays are those of a scoring pass over inner-validation rows only
            source = [s for s in scored if y is s[2].negative or y is s[2].fine]
            assert len(source) == 1 and set(caller[source[0][1]]) <= set(caller[val_rows])
        test_passes = [i for i, e in enumerate(fold_events) if e[0] == "score" and set(caller[e[1]]) & test_callers]
        assert len(test_passes) == 1, "the test fold is scored exactly once"
        last_tune = max(i for i, e in enumerate(fold_events) if e[0].startswith("tune"))
        assert test_passes[0] > last_tune, "the test fold was scored before thresholds were fixed"
        assert set(caller[fold_events[test_passes[0]][1]]) == test_callers


def test_summary_is_mean_and_std_of_fold_metrics(cv_run):
    cfg, run_dir, summary = cv_run
    folds = [json.loads((run_dir / f"fold{k}" / "metrics.json").read_text()) for k in range(cfg.cv.folds)]
    picks = {
        "binary_f1": lambda m: m["binary"]["f1"],
        "binary_auroc": lambda m: m["binary"]["auroc"],
        "fine_weighted_f1": lambda m: m["fine"]["weighted_f1"],
        "fine_per_label.sadness.f1": lambda m: m["fine"]["per_label"]["sadness"]["f1"],
    }
    on_disk = json.loads((run_dir / "summary.json").read_text())
    for name, pick in picks.items():
        values = np.array([pick(m) for m in folds], dtype=float)
        defined = values[np.isfinite(values)]  # a label absent from a test fold has no F1 there (null on disk)
        for s in (summary[name], on_disk[name]):
            got = np.array([np.nan if v is None else v for v in s["folds"]], dtype=float)
            assert got.tolist() == pytest.approx(values.tolist(), nan_ok=True)
            assert s["mean"] == pytest.approx(np.mean(defined)) and s["n"] == len(defined)
            assert s["std"] == pytest.approx(np.std(defined, ddof=1))


def test_fold_metrics_agree_with_sklearn_on_the_predictions(cv_run):
    """metrics.json of each fold is what scikit-learn computes from that fold's predictions.csv."""
    import csv

    cfg, run_dir, _ = cv_run
    labels = list(cfg.taxonomy.labels)
    for k in range(cfg.cv.folds):
        metrics = json.loads((run_dir / f"fold{k}" / "metrics.json").read_text())
        with open(run_dir / f"fold{k}" / "predictions.csv", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        y = np.array([int(r["negative"]) for r in rows])
        pred = np.array([int(r["pred_negative"]) for r in rows])
        p = np.array([float(r["p_negative"]) for r in rows])
        assert metrics["binary"]["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
        assert metrics["binary"]["n"] == len(rows)
        if len(set(y)) == 2:  # probabilities are stored to 6 decimals: ranks may tie where they did not
            assert metrics["binary"]["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-3)
        gold = np.array([[name in r["gold_labels"].split(";") for name in labels] for r in rows], dtype=int)
        p_fine = np.array([[float(r[f"p_{name}"]) for name in labels] for r in rows])
        fine_pred = (p_fine >= np.array(metrics["thresholds"]["fine"])).astype(int)
        assert metrics["fine"]["weighted_f1"] == pytest.approx(
            skm.f1_score(gold, fine_pred, average="weighted", zero_division=0), abs=1e-6)


def test_resume_recomputes_only_the_missing_fold(cv_run, tmp_path, monkeypatch):
    cfg, run_dir, summary = cv_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "fold1" / "metrics.json").unlink()
    computed = []
    real_run_fold = experiment.run_fold

    def spy(cfg_, data, *, fold, **kwargs):
        computed.append(fold)
        return real_run_fold(cfg_, data, fold=fold, **kwargs)

    monkeypatch.setattr(experiment, "run_fold", spy)
    again = run_cv(cfg, copy, progress=False)
    assert computed == [1]
    assert list(again) == list(summary)
    for name in summary:
        np.testing.assert_allclose(again[name]["folds"], summary[name]["folds"], rtol=1e-9, atol=1e-12)
    assert (copy / "summary.md").read_text() == (run_dir / "summary.md").read_text()


def test_ablate_cli_prints_a_table_with_p_values(ablate_run):
    out_dir, stdout, rc = ablate_run
    assert rc == 0
    table = stdout[stdout.index("arm"):]
    assert "isolated" in table and "contextual" in table
    assert "p=" in table and "Δ" in table
    result = json.loads((out_dir / "summary.json").read_text())
    assert result["reference"] == "isolated"
    p = result["paired"]["contextual"]["binary_f1"]["p_ttest"]
    assert p is None or np.isnan(p) or 0.0 <= p <= 1.0
    folds = json.loads((out_dir / "folds.json").read_text())["folds"]
    for arm in ("isolated", "contextual"):  # both arms on the very same folds
        assert len(list((out_dir / arm).glob("fold*/metrics.json"))) == len(folds)


def test_ablate_adds_the_caller_bootstrap(ablate_run):
    """Needs run_ablation to end with reports.comparison.finish_comparison."""
    out_dir, stdout, _ = ablate_run
    boot = json.loads((out_dir / "summary.json").read_text())["bootstrap"]
    assert boot["grouped_by"] == "caller_id"
    assert set(boot["arms"]) == {"contextual", "linear_probe", "prior"}  # every arm and baseline vs the reference
    assert "p_boot=" in stdout


def _check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_report_cli_regenerates_an_ablation(ablate_run, tmp_path, capsys):
    out_dir, _, _ = ablate_run
    copy = tmp_path / "run"
    shutil.copytree(out_dir, copy)
    original = json.loads((out_dir / "summary.json").read_text())
    for name in ("summary.json", "summary.csv", "summary.md", "bootstrap.csv", "confused_pairs.md"):
        (copy / name).unlink(missing_ok=True)
    shutil.rmtree(copy / "plots", ignore_errors=True)

    assert main(["report", str(copy)]) == 0
    printed = capsys.readouterr().out
    assert "p=" in printed and "p_boot=" in printed
    for name in ("summary.json", "summary.csv", "summary.md", "bootstrap.csv", "confused_pairs.md"):
        assert (copy / name).is_file(), name
    for png in ("per_label_f1.png", "confused_pairs.png", "per_call_isolated_vs_contextual.png"):
        _check_png(copy / "plots" / png)
    regenerated = json.loads((copy / "summary.json").read_text())
    assert regenerated["reference"] == original["reference"]
    assert json.dumps(regenerated["arms"], sort_keys=True) == json.dumps(original["arms"], sort_keys=True)
    assert json.dumps(regenerated["paired"], sort_keys=True) == json.dumps(original["paired"], sort_keys=True)
    boot = regenerated["bootstrap"]["arms"]["contextual"]
    for name in ("binary_f1", "fine_weighted_f1"):
        assert 0.0 < boot[name]["p"] <= 1.0 and boot[name]["ci_low"] <= boot[name]["diff"] <= boot[name]["ci_high"]
    assert "Caller-level paired bootstrap" in (copy / "summary.md").read_text()


def test_report_cli_regenerates_a_cv_run(cv_run, tmp_path, capsys):
    _, run_dir, summary = cv_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("summary.json", "summary.csv", "summary.md"):
        (copy / name).unlink()
    assert main(["report", str(copy)]) == 0
    assert "binary_f1" in capsys.readouterr().out
    assert json.loads((copy / "summary.json").read_text()) == json.loads((run_dir / "summary.json").read_text())
    assert (copy / "summary.md").read_text() == (run_dir / "summary.md").read_text()
    _check_png(copy / "plots" / "per_label_f1.png")
    _check_png(copy / "plots" / "confused_pairs.png")


def test_report_cli_refuses_a_folder_without_folds(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "fold" in capsys.readouterr().err
