"""`report.html`: one self-contained page per run folder (cv, ablation or demo) that a researcher reads
instead of a folder of CSVs: the config, the headline tables as the run wrote them (summary.md: intervals,
paired tests, baselines, bootstrap), calibration, per-label figures, confusion matrices, ROC and PR
curves, per-call timelines and figures, fold prevalence, and the run folder's own plots.

Tables the summary already holds are rendered from its files, never recomputed here, so the page shows
exactly what summary.md / summary.json say. Figures come from the pooled out-of-fold predictions.
Ids, numbers and label names only: no audio, no transcripts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ctxemo.evaluation.metrics import calibration_bins, expected_calibration_error
from ctxemo.inference.outputs import summarize_call
from ctxemo.io import read_json, write_text
from ctxemo.reports import explore_plots, report_figures
from ctxemo.reports import html as H
from ctxemo.reports.comparison import _common_folds
from ctxemo.reports.curves import (
    call_trajectory,
    pick_calls,
    pr_curve,
    pr_curves,
    prevalence,
    roc_curve,
)
from ctxemo.reports.run_folder import (
    Pooled,
    _reference,
    arm_manifest,
    detect_kind,
    load_predictions,
    pair_counts,
    run_arms,
)
from ctxemo.reports.tables import format_entry

REPORT_FILE = "report.html"
TIMELINE_CALLS = 3  # calls drawn as timelines (those with the most switches between negative and not)
MAX_CALL_ROWS = 20  # calls listed in the per-call table (the rest are counted, not listed)
RUN_FACTS = ("command", "git", "seed", "started", "python", "platform")


def write_report(run_dir: Path, *, timeline_calls: int = TIMELINE_CALLS) -> Path:
    """Write `run_dir/report.html` from the run folder's files; returns its path."""
    run_dir = Path(run_dir)
    kind = detect_kind(run_dir)
    arms = run_arms(run_dir)
    reference = next(iter(arms)) if kind == "cv" else _reference(run_dir, list(arms))
    folds = None if kind == "cv" else _common_folds(run_dir, list(arms))
    pooled = {arm: p for arm, folder in arms.items() if (p := load_predictions(folder, folds=folds)) is not None}
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    summaries = summary.get("arms", {}) if kind != "cv" else {reference: summary}
    sections = [("run", "Run", _run_section(run_dir, kind)),
                ("headline", "Headline tables", _headline_section(run_dir, summary))]
    if summaries:
        sections.append(("calibration", "Calibration", _calibration_section(summaries, pooled)))
        sections.append(("labels", "Per label", _per_label_section(summaries)))
    if pooled:
        sections.append(("confusion", "Confusion matrices", _confusion_section(run_dir, pooled)))
        sections.append(("curves", "ROC and precision-recall", _curves_section(pooled, reference)))
        sections.append(("calls", "Calls", _calls_section(pooled, reference, arms[reference], timeline_calls)))
    prevalence_file = arms[reference] / "fold_prevalence.json"
    if prevalence_file.is_file():
        sections.append(("folds", "Fold prevalence", _folds_section(read_json(prevalence_file))))
    plots = sorted((run_dir / "plots").glob("*.png"))
    if plots:
        sections.append(("plots", "Run folder plots",
                         "".join(f"<h3>{H.esc(p.name)}</h3>\n" + H.image(p.read_bytes(), alt=p.name) for p in plots)))
    sections = [(anchor, title, H.section(anchor, title, body)) for anchor, title, body in sections]
    title = f"ctxemo report: {run_dir.name} ({'ablation' if kind != 'cv' else 'cv'}, {len(arms)} arm(s))"
    return write_text(run_dir / REPORT_FILE, H.page(title, sections))


# ----------------------------------------------------------------------------- sections

def _run_section(run_dir: Path, kind: str) -> str:
    run = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    facts = [["folder", str(run_dir)], ["kind", kind]]
    facts += [[key, run[key]] for key in RUN_FACTS if key in run and not isinstance(run[key], (dict, list))]
    config = run_dir / "config.yaml"
    text = config.read_text(encoding="utf-8") if config.is_file() else "(no config.yaml)"
    return (H.table(["", ""], facts, numeric_from=9)
            + f"<details><summary>config.yaml (the resolved config)</summary><pre>{H.esc(text)}</pre></details>\n")


def _headline_section(run_dir: Path, summary: Dict) -> str:
    md = run_dir / "summary.md"
    body = H.markdown_to_html(md.read_text(encoding="utf-8")) if md.is_file() else "<p>No summary.md.</p>\n"
    pooled = summary.get("pooled") if isinstance(summary, dict) else None
    if pooled:  # the summary's pooled out-of-fold figures, as it holds them
        keys = list(next(iter(pooled.values())))
        rows = [[arm, *(_percent(m.get(k)) if k != "n" else m.get(k) for k in keys)] for arm, m in pooled.items()]
        body += ("<h3>Pooled out-of-fold predictions</h3>\n<p class=\"note\">Each metric on the test segments of "
                 "all folds pooled, in % (n = segments).</p>\n" + H.table(["arm", *keys], rows))
    return body


def _calibration_section(summaries: Dict[str, Dict], pooled: Dict[str, Pooled]) -> str:
    rows = [[arm, *(format_entry(s[k]) if k in s else "n/a" for k in ("binary_ece", "binary_brier"))]
            for arm, s in summaries.items()]
    body = ('<p class="note">ECE (expected calibration error, 10 equal-width bins) and Brier score of p_negative '
            "per test fold, mean ± std in %; lower is better. <code>train.calibrate=temperature</code> fits a "
            "temperature on the inner validation callers.</p>\n" + H.table(["arm", "ECE", "Brier"], rows))
    if pooled:
        bins = {arm: calibration_bins(p.negative, p.p_negative) for arm, p in pooled.items()}
        ece = {arm: expected_calibration_error(p.negative, p.p_negative) for arm, p in pooled.items()}
        body += H.figure(report_figures.reliability_diagram(bins, ece), alt="reliability diagram")
    return body


def _per_label_section(summaries: Dict[str, Dict]) -> str:
    from ctxemo.reports.plots import labels_from_summary

    labels = labels_from_summary(summaries)
    first = next(iter(summaries.values()))
    arms = list(summaries)
    header = ["label", "gold segments", *(f"{arm} F1" for arm in arms), *(f"{arm} AP" for arm in arms)]
    rows = []
    for name in labels:
        support = first.get(f"fine_per_label.{name}.support", {}).get("folds", [])
        rows.append([name, int(np.nansum(support)) if support else "n/a",
                     *(_cell(summaries[a], f"fine_per_label.{name}.f1") for a in arms),
                     *(_cell(summaries[a], f"fine_per_label.{name}.ap") for a in arms)])
    return ('<p class="note">Per fine label: F1 and average precision per test fold, mean ± std in %; gold '
            "segments summed over folds.</p>\n" + H.table(header, rows))


def _confusion_section(run_dir: Path, pooled: Dict[str, Pooled]) -> str:
    binary = {arm: np.array([[np.sum((p.negative == g) & (p.pred_negative == d)) for d in (0, 1)] for g in (0, 1)])
              for arm, p in pooled.items()}
    body = H.figure(report_figures.confusion_matrices(binary, ["not negative", "negative"],
                                                       title="Binary task: gold vs decided (fold thresholds), "
                                                             "all folds pooled"), alt="binary confusion matrices")
    first = next(iter(pooled.values()))
    fine = {arm: pair_counts(p) for arm, p in pooled.items()}
    if first.multilabel:
        note = ("Multi-label: an off-diagonal cell counts segments where the gold (row) label was missed while the "
                "column label was predicted and is not gold; the diagonal counts hits (gold and predicted).")
        for arm, p in pooled.items():  # pair_counts leaves the diagonal empty: put the hits there
            np.fill_diagonal(fine[arm], (p.gold_fine[p.fine_rows()] & p.pred_fine[p.fine_rows()]).sum(0))
    else:
        note = "Single-label: gold class (row) vs predicted class (column), labelled segments only."
    body += f'<p class="note">{H.esc(note)}</p>\n'
    body += H.figure(report_figures.confusion_matrices(fine, first.labels, title="Fine labels: gold vs predicted, "
                                                        "all folds pooled"), alt="fine confusion matrices")
    pairs = run_dir / "confused_pairs.md"
    if pairs.is_file():
        body += H.markdown_to_html(pairs.read_text(encoding="utf-8"), heading_offset=2)
    return body


def _curves_section(pooled: Dict[str, Pooled], reference: str) -> str:
    roc = {arm: roc_curve(p.negative, p.p_negative) for arm, p in pooled.items()}
    pr = {arm: pr_curve(p.negative, p.p_negative) for arm, p in pooled.items()}
    ref = pooled.get(reference, next(iter(pooled.values())))
    chance = prevalence(ref)
    body = H.figure(report_figures.roc_pr_curves(roc, pr, prevalence=chance["negative"]), alt="ROC and PR curves")
    body += "<h3>Precision-recall per label</h3>\n"
    body += H.figure(explore_plots.pr_curves({arm: pr_curves(p) for arm, p in pooled.items()}, chance),
                     alt="per-label precision-recall curves")
    return body


def _calls_section(pooled: Dict[str, Pooled], reference: str, reference_dir: Path, n_calls: int) -> str:
    ref = pooled.get(reference, next(iter(pooled.values())))
    chosen = pick_calls(ref, n_calls)
    timelines = {call: {arm: call_trajectory(p, call) for arm, p in pooled.items() if call in set(p.call_id)}
                 for call in chosen}
    body = ('<p class="note">p_negative along the calls with the most switches between negative and not turns; '
            "shaded = gold negative, filled marker = decided negative.</p>\n")
    body += H.figure(explore_plots.trajectories(timelines), alt="per-call timelines")
    times = _segment_times(reference_dir)
    rows = _call_rows(pooled, times)
    unit = "speech time" if times else "caller turns (the manifest has no times)"
    header = ["call", "arm", "caller turns", "first alert (turn)", "time to first alert (s)",
              f"share of {unit} above threshold", "changes negative/not", "gold share", "gold changes"]
    listed = sorted({r[0] for r in rows})[:MAX_CALL_ROWS]
    more = len({r[0] for r in rows}) - len(listed)
    body += ("<h3>Per-call figures</h3>\n<p class=\"note\">As <code>ctxemo predict</code> writes them to calls.csv, "
             "on the out-of-fold test predictions; gold = the same figures from the gold labels."
             + (f" {more} more calls not listed." if more > 0 else "") + "</p>\n")
    return body + H.table(header, [r for r in rows if r[0] in set(listed)], numeric_from=2)


def _folds_section(folds: List[Dict]) -> str:
    rows = [[f["fold"], f["n_rows"], f["n_callers"], f["positives"].get("negative", "n/a"),
             _percent(f["positive_share"].get("negative"))] for f in folds]
    return (H.figure(report_figures.fold_prevalence(folds), alt="fold prevalence")
            + H.table(["fold", "caller segments", "callers", "negative", "negative share (%)"], rows))


# ----------------------------------------------------------------------------- per-call figures

def _segment_times(arm_dir: Path) -> Optional[Dict[tuple, tuple]]:
    """{(call_id, segment_index): (start, end)} from the run's manifest when every row has times, else None."""
    manifest = arm_manifest(arm_dir)
    if manifest is None or not (np.isfinite(manifest.start_sec).all() and np.isfinite(manifest.end_sec).all()):
        return None
    return {(c, int(i)): (float(s), float(e)) for c, i, s, e in
            zip(manifest.call_id, manifest.segment_index, manifest.start_sec, manifest.end_sec)}


def _call_rows(pooled: Dict[str, Pooled], times: Optional[Dict[tuple, tuple]]) -> List[list]:
    """One row per (call, arm): summarize_call's figures of the decided and of the gold labels."""
    rows = []
    for arm, p in pooled.items():
        for call in sorted(set(p.call_id.tolist())):
            trajectory = call_trajectory(p, call)
            figures = {}
            for name, decided in (("pred", trajectory["pred_negative"]), ("gold", trajectory["negative"])):
                records = []
                for index, p_neg, neg in zip(trajectory["segment_index"], trajectory["p_negative"], decided):
                    start, end = times[(call, int(index))] if times else (None, None)
                    records.append({"segment_index": int(index), "role": "caller", "start": start, "end": end,
                                    # without times every turn weighs the same: shares are of turns
                                    "duration": (end - start) if times else 1.0, "p_negative": float(p_neg),
                                    "pred_negative": int(neg)})
                figures[name] = summarize_call(records, call_id=call, source="", duration_sec=None, n_skipped=0)
            pred, gold = figures["pred"], figures["gold"]
            rows.append([call, arm, pred["n_caller_segments"], _blank(pred["first_alert_segment"]),
                         _blank(pred["time_to_first_alert_sec"]), _percent(pred["negative_share"]),
                         pred["negative_changes"], _percent(gold["negative_share"]), gold["negative_changes"]])
    return sorted(rows, key=lambda r: (r[0], list(pooled).index(r[1])))


# ----------------------------------------------------------------------------- cells

def _cell(summary: Dict, key: str) -> str:
    return format_entry(summary[key]) if key in summary else "n/a"


def _percent(value) -> str:
    """A share in %; an interval [low, high] as "low-high"; a flag (e.g. chance_level) as yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return "-".join(_percent(v) for v in value)
    return "n/a" if value is None or not np.isfinite(float(value)) else f"{100 * float(value):.1f}"


def _blank(value) -> object:
    return "–" if value is None else value
