"""ctxemo.explore (the notebooks' data wrangling) and ctxemo.reports.explore_plots, on a hand-made corpus and a
hand-made run folder whose every number is known, plus one real (tiny) ablation through `ensure_run`."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import feature_corpus, write_wav
from matplotlib.figure import Figure

from ctxemo import explore
from ctxemo.errors import CtxemoError
from ctxemo.reports import explore_plots as xplots
from ctxemo.reports.tables import markdown_table

LABELS = ["despair", "sadness", "pain", "guilt", "confusion", "helplessness", "resentment", "fear", "numbness",
          "anxiety", "grievance"]


# ----------------------------------------------------------------------------- a corpus

def write_corpus(folder: Path) -> Path:
    """Two callers, three calls. c1 (caller A): 4 segments listed out of order, one operator turn, own wavs;
    c2 (caller A): 2 segments cut from one whole-call recording by start/end; c3 (caller B): 1 calm segment,
    audio missing on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, seconds in ((0, 0.5), (1, 1.0), (2, 0.25), (3, 2.0)):
        write_wav(folder / "c1" / f"{index}.wav", seconds=seconds)
    write_wav(folder / "c2.wav", seconds=3.0)
    rows = [
        # call, index, audio, start, end, caller, role, labels
        ("c1", 3, "c1/3.wav", "", "", "A", "caller", "despair;sadness"),
        ("c1", 0, "c1/0.wav", "", "", "A", "caller", "sadness"),
        ("c1", 1, "c1/1.wav", "", "", "A", "operator", ""),
        ("c1", 2, "c1/2.wav", "", "", "A", "caller", ""),
        ("c2", 0, "c2.wav", "0.5", "1.5", "A", "caller", "sadness;anxiety"),
        ("c2", 1, "c2.wav", "2.0", "2.5", "A", "caller", ""),
        ("c3", 0, "missing.wav", "", "", "B", "caller", ""),
    ]
    path = folder / "manifest.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["call_id", "segment_index", "audio", "start", "end", "caller_id", "role", "labels"])
        writer.writerows(rows)
    return path


@pytest.fixture
def manifest(tmp_path):
    return explore.read_manifest(write_corpus(tmp_path / "corpus"))


def test_cooccurrence_counts_and_conditional_shares():
    fine = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0]])
    counts = explore.cooccurrence(fine)
    assert counts.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    cond = explore.conditional_cooccurrence(counts)
    assert cond[0, 1] == pytest.approx(0.5) and cond[1, 0] == pytest.approx(0.5) and cond[0, 0] == 1.0
    assert np.isnan(cond[2]).all()  # an absent label has no conditional distribution


def test_binning_edges_nan_and_empty_bins():
    edges = np.array([0.0, 0.5, 1.0, 2.0])
    x = np.array([0.0, 0.49, 0.5, 1.0, 2.0, 5.0, -1.0, np.nan])
    assert explore.bin_index(x, edges).tolist() == [0, 0, 1, 2, 2, 2, 0, -1]
    mean, count = explore.binned_mean(np.array([0.1, 0.2, 1.5]), np.array([1.0, 0.0, 1.0]), edges=edges)
    assert count.tolist() == [2, 0, 1]
    assert mean[0] == 0.5 and np.isnan(mean[1]) and mean[2] == 1.0
    two_columns, _ = explore.binned_mean(np.array([0.1, 0.2]), np.array([[1, 0], [1, 1]]), edges=edges)
    assert two_columns.shape == (3, 2) and two_columns[0].tolist() == [1.0, 0.5]


def test_quantile_edges_split_evenly_and_survive_ties():
    edges = explore.quantile_edges(np.arange(1.0, 9.0), 4)
    _, count = explore.binned_mean(np.arange(1.0, 9.0), np.zeros(8), edges=edges)
    assert count.tolist() == [2, 2, 2, 2]
    assert len(explore.quantile_edges(np.ones(5), 4)) == 2  # all tied: one bin, still valid edges
    assert explore.quantile_edges(np.array([np.nan]), 3).tolist() == [0.0, 1.0]


def test_read_manifest_takes_the_taxonomy_from_a_config(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"call_id": "a", "segment_index": 0, "labels": "tense"}) + "\n",
                                      encoding="utf-8")
    (tmp_path / "t.yaml").write_text("taxonomy:\n  labels: [tense, flat]\n", encoding="utf-8")
    m = explore.read_manifest(tmp_path / "m.jsonl", config=tmp_path / "t.yaml")
    assert explore.label_names(m) == ["negative", "tense", "flat"] and m.negative.tolist() == [1]


def test_label_table_and_caller_rows_only(manifest):
    header, rows = explore.label_table(manifest)
    table = {row[0]: row for row in rows}
    assert header[0] == "label" and list(table) == ["negative", *LABELS]
    # 6 caller segments: negative = c1/3, c1/0, c2/0; the operator turn is not counted.
    assert table["negative"][1:] == [3, "0.500", 1]
    assert table["sadness"][1] == 3 and table["despair"][1] == 1 and table["anxiety"][1] == 1
    assert explore.label_matrix(manifest).shape == (6, 12)
    assert "| negative | 3 |" in markdown_table(header, rows)


def test_call_positions_follow_segment_order(manifest):
    pos = explore.call_positions(manifest)
    by_key = {(c, int(s)): p for c, s, p in zip(manifest.call_id, manifest.segment_index, pos)}
    assert [by_key[("c1", i)] for i in range(4)] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert [by_key[("c2", i)] for i in range(2)] == [0.0, 1.0]
    assert by_key[("c3", 0)] == 0.5


def test_segment_durations_from_crops_headers_and_missing_files(manifest):
    d = dict(zip(zip(manifest.call_id, manifest.segment_index.tolist()), explore.segment_durations(manifest)))
    assert d[("c1", 0)] == pytest.approx(0.5) and d[("c1", 3)] == pytest.approx(2.0)
    assert d[("c2", 0)] == pytest.approx(1.0) and d[("c2", 1)] == pytest.approx(0.5)
    assert np.isnan(d[("c3", 0)])


def test_segment_audio_crops_whole_call_recordings(manifest):
    row = next(i for i, (c, s) in enumerate(zip(manifest.call_id, manifest.segment_index)) if c == "c2" and s == 0)
    wave = explore.segment_audio(manifest, row, sample_rate=8000)
    assert wave.dtype == np.float32 and wave.shape == (8000,)


def test_position_profile_and_caller_profiles(manifest):
    edges, shares, count = explore.position_profile(manifest, bins=2)
    # caller positions: c1 -> 0, 2/3, 1 (index 1 is the operator); c2 -> 0, 1; c3 -> 0.5
    assert edges.tolist() == [0.0, 0.5, 1.0] and count.tolist() == [2, 4]
    assert shares.shape == (2, 12)
    assert shares[0, 0] == pytest.approx(1.0)  # c1/0 and c2/0 are both negative
    assert shares[1, 0] == pytest.approx(0.25)  # c1/2, c1/3 (negative), c2/1, c3/0
    callers, profile, n = explore.caller_profiles(manifest)
    assert callers == ["A", "B"] and n.tolist() == [5, 1]
    assert profile[0, 0] == pytest.approx(3 / 5) and profile[1].sum() == 0


def test_corpus_overview(manifest):
    overview = explore.corpus_overview(manifest, explore.segment_durations(manifest))
    assert overview["calls"] == 3 and overview["callers"] == 2 and overview["segments"] == 7
    assert overview["caller segments"] == 6 and overview["negative share of caller segments"] == 0.5
    assert overview["audio hours"] == pytest.approx(5.25 / 3600, abs=1e-3)


# ----------------------------------------------------------------------------- a run folder

PRED_HEADER = ["call_id", "caller_id", "segment_index", "fold", "p_negative", "pred_negative", "negative",
               *[f"p_{name}" for name in LABELS], "gold_labels"]


def write_arm(arm_dir: Path, folds, *, name: str) -> None:
    """folds: {fold: [(call, caller, index, p_negative, pred, gold, gold_labels), ...]}."""
    arm_dir.mkdir(parents=True, exist_ok=True)
    (arm_dir / "config.yaml").write_text(f"name: {name}\ntaxonomy:\n  multilabel: true\n", encoding="utf-8")
    for fold, rows in folds.items():
        fold_dir = arm_dir / f"fold{fold}"
        fold_dir.mkdir()
        (fold_dir / "metrics.json").write_text(json.dumps({"thresholds": {"binary": 0.5, "fine": None}}),
                                               encoding="utf-8")
        with open(fold_dir / "predictions.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(PRED_HEADER)
            for call, caller, index, p, pred, gold, labels in rows:
                p_fine = [0.9 if name == "sadness" else 0.1 for name in LABELS]
                writer.writerow([call, caller, index, fold, p, pred, gold, *p_fine, labels])


@pytest.fixture
def run_dir(tmp_path, manifest):
    """An ablation folder with arms `isolated` (reference) and `contextual`, two folds each, on `manifest`."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        f"name: t\ndata:\n  manifest: {manifest.path}\ntaxonomy:\n  labels: {LABELS}\n  multilabel: true\n"
        "  negative_labels: []\nablation:\n  reference: isolated\n  arms:\n"
        "    isolated: [context.kind=identity]\n    contextual: [context.kind=transformer]\n", encoding="utf-8")
    iso = {0: [("c1", "A", 3, 0.2, 0, 1, "despair;sadness"), ("c1", "A", 0, 0.6, 1, 1, "sadness"),
               ("c1", "A", 2, 0.7, 1, 0, "")],
           1: [("c2", "A", 1, 0.4, 0, 0, ""), ("c2", "A", 0, 0.9, 1, 1, "sadness;anxiety"),
               ("c3", "B", 0, 0.95, 1, 0, "")]}
    ctx = {k: [(c, who, i, 1.0 - abs(gold - 0.8), int(gold), gold, lab) for c, who, i, _, _, gold, lab in rows]
           for k, rows in iso.items()}
    write_arm(run / "isolated", iso, name="t")
    write_arm(run / "contextual", ctx, name="t")
    return run


def test_load_arms_pools_every_fold_in_config_order(run_dir):
    arms = explore.load_arms(run_dir)
    assert list(arms) == ["isolated", "contextual"]
    iso = arms["isolated"]
    assert len(iso.call_id) == 6 and iso.p_fine.shape == (6, 11) and iso.labels == LABELS
    assert iso.gold_fine[:, LABELS.index("sadness")].sum() == 3


def test_load_arms_reads_a_cv_folder(run_dir):
    arms = explore.load_arms(run_dir / "isolated")
    assert list(arms) == ["t"] and len(arms["t"].call_id) == 6


def test_call_trajectory_is_in_segment_order(run_dir):
    iso = explore.load_arms(run_dir)["isolated"]
    t = explore.call_trajectory(iso, "c1")
    assert t["segment_index"].tolist() == [0, 2, 3]
    assert t["p_negative"].tolist() == [0.6, 0.7, 0.2] and t["negative"].tolist() == [1, 0, 1]
    assert t["pred_negative"].tolist() == [1, 1, 0]
    with pytest.raises(CtxemoError, match="c9"):
        explore.call_trajectory(iso, "c9")


def test_pick_calls_prefers_calls_with_both_classes(run_dir):
    iso = explore.load_arms(run_dir)["isolated"]
    assert explore.pick_calls(iso, n=2) == ["c1", "c2"]  # each has 1 minority turn; c3 has none


def test_errors_alignment_and_worst_errors(run_dir, manifest):
    iso = explore.load_arms(run_dir)["isolated"]
    rows = explore.align_to_manifest(iso, manifest)
    assert [(manifest.call_id[r], int(manifest.segment_index[r])) for r in rows] == list(
        zip(iso.call_id.tolist(), iso.segment_index.tolist()))
    assert explore.binary_errors(iso).tolist() == [1, 0, 1, 0, 0, 1]
    worst = explore.worst_errors(iso, n=2)
    assert [iso.p_negative[i] for i in worst] == [0.95, 0.2]  # |p - gold|: 0.95, 0.8, 0.7
    header, table = explore.describe_segments(iso, worst, manifest=manifest)
    assert header[-2:] == ["audio", "start–end (s)"]
    assert table[0][:6] == ["c3", 0, 0, "0.95", 1, "-"] and table[0][-2:] == ["missing.wav", "whole file"]
    assert table[0][6].startswith("sadness 0.90")


def test_align_to_manifest_names_a_missing_segment(run_dir, tmp_path):
    iso = explore.load_arms(run_dir)["isolated"]
    other = tmp_path / "other.csv"
    other.write_text("call_id,segment_index\nc1,0\n", encoding="utf-8")
    with pytest.raises(CtxemoError, match="not in manifest"):
        explore.align_to_manifest(iso, explore.read_manifest(other))


def test_pr_curves_and_prevalence(run_dir):
    arms = explore.load_arms(run_dir)
    curves = explore.pr_curves(arms["contextual"])
    assert list(curves) == ["negative", *LABELS]
    precision, recall, ap = curves["negative"]
    assert ap == pytest.approx(1.0) and recall[0] == 1.0  # the contextual arm ranks every negative first
    assert np.isnan(curves["guilt"][2]) and curves["guilt"][0].size == 0  # no positive: no curve
    chance = explore.prevalence(arms["isolated"])
    assert chance["negative"] == pytest.approx(0.5) and chance["sadness"] == pytest.approx(0.5)


def test_run_manifest_comes_from_the_run_config(run_dir, manifest):
    assert explore.run_manifest(run_dir).call_id == manifest.call_id
    (run_dir / "config.yaml").unlink()
    with pytest.raises(CtxemoError, match="data.manifest"):
        explore.run_manifest(run_dir)


def test_paired_rows_from_a_summary():
    summary = {"reference": "iso", "metrics": ["binary_f1"],
               "arms": {"iso": {"binary_f1": {"folds": [0.5, 0.6]}}, "ctx": {"binary_f1": {"folds": [0.7, 0.7]}}},
               "paired": {"ctx": {"binary_f1": {"mean_diff": 0.15, "p_ttest": 0.2, "p_wilcoxon": float("nan")}}}}
    header, rows = explore.paired_rows(summary)
    assert header[2] == "iso per fold"
    assert rows == [["ctx", "binary_f1", "50.0 60.0", "70.0 70.0", "+15.00", "0.2", "n/a"]]


def test_ensure_run_loads_a_finished_folder_without_running(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"reference": "a"}), encoding="utf-8")
    assert explore.ensure_run(tmp_path, config="does-not-exist.yaml", log=lambda m: None) == {"reference": "a"}


def test_ensure_run_runs_an_ablation_config_then_loads_it(tmp_path):
    config = feature_corpus(tmp_path / "corpus", n_callers=6, turns=6)
    overrides = ["ablation.arms.isolated=[context.kind=identity]", "ablation.arms.norm=[context.kind=call_norm]",
                 "train.epochs=1", "cv.folds=2"]
    run = tmp_path / "run"
    summary = explore.ensure_run(run, config=config, overrides=overrides, log=lambda m: None)
    assert list(summary["arms"]) == ["isolated", "norm", "linear_probe", "prior"] and (run / "summary.json").is_file()
    assert explore.ensure_run(run, log=lambda m: None)["reference"] == summary["reference"]
    arms = explore.load_arms(run)
    assert list(arms) == ["isolated", "norm", "linear_probe", "prior"] and len(arms["norm"].call_id) == len(arms["isolated"].call_id) > 0


# ----------------------------------------------------------------------------- figures

def test_every_figure_draws_and_saves(tmp_path, manifest, run_dir):
    names = explore.label_names(manifest)
    _, table = explore.label_table(manifest)
    counts = explore.cooccurrence(explore.label_matrix(manifest)[:, 1:])
    d = explore.segment_durations(manifest)
    arms = explore.load_arms(run_dir)
    iso = arms["isolated"]
    figures = [
        xplots.label_frequencies(names, [row[1] for row in table], total=6),
        xplots.cooccurrence_heatmap(explore.conditional_cooccurrence(counts), LABELS, title="t",
                                    counts=counts.diagonal()),
        xplots.duration_histogram({"caller": d[manifest.is_caller], "operator": d[~manifest.is_caller]}),
        xplots.duration_histogram({"none": np.array([np.nan])}),
        xplots.position_profile(*explore.position_profile(manifest, bins=3), names),
        xplots.caller_profiles(*explore.caller_profiles(manifest), names, max_callers=1),
        xplots.trajectories({c: {a: explore.call_trajectory(p, c) for a, p in arms.items()} for c in ["c1", "c3"]}),
        xplots.pr_curves({a: explore.pr_curves(p) for a, p in arms.items()}, explore.prevalence(iso)),
        xplots.binned_rates([("position", [0, 0.5, 1], {a: explore.binned_mean(
            explore.call_positions(manifest)[explore.align_to_manifest(p, manifest)], explore.binary_errors(p),
            edges=np.array([0, 0.5, 1])) for a, p in arms.items()})]),
    ]
    for k, fig in enumerate(figures):
        assert isinstance(fig, Figure)
        path = xplots.save(fig, tmp_path / "figs" / f"{k}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
