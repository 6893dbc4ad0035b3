"""Prediction outputs: one record per segment, one summary per call, the output folder they are
appended to (flushed per call, resumable), and the call's p_negative trajectory plot.

Records hold ids, times and numbers only (never audio or text), so they are safe to log and share.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ctxemo.errors import CtxemoError
from ctxemo.io import atomic_path, json_text

SEGMENT_BASE_COLUMNS = ["call_id", "segment_index", "start", "end", "duration", "role", "p_negative",
                        "pred_negative"]  # pred_: a decision, not the gold `negative` of manifests and CV files
CALL_COLUMNS = ["call_id", "source", "roles", "duration_sec", "n_segments", "n_caller_segments", "n_skipped",
                "caller_speech_sec", "negative_speech_sec", "negative_share", "mean_p_negative", "max_p_negative",
                "longest_negative_run_segments", "longest_negative_run_sec", "longest_negative_run_start",
                "longest_negative_run_end", "first_alert_segment", "time_to_first_alert_sec", "negative_changes",
                "peak_segments"]
# calls.csv `roles`: where each turn's role came from. A mono recording cannot tell caller from operator.
ROLES_FROM_MANIFEST, ROLES_FROM_CHANNELS = "manifest", "channels"
ROLES_UNKNOWN_MONO = "unknown (mono recording: every turn scored as the caller's)"
SKIPPED_COLUMNS = ["call_id", "source", "segment_index", "start", "end", "role", "channel", "reason"]
RUN_FILE = "predict.json"  # bundle + options of the predictions in a folder (a rerun must match to resume)


def segment_columns(labels: Sequence[str], *, live: bool = False) -> List[str]:
    """CSV columns of the per-segment table (`latency_ms` in live mode)."""
    return SEGMENT_BASE_COLUMNS + [f"p_{name}" for name in labels] + ["top_labels"] + (["latency_ms"] if live else [])


def _number(value: Optional[float], digits: int = 6) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, digits)


def segment_record(bundle, *, call_id: str, segment_index: int, start: Optional[float], end: Optional[float],
                   duration: float, role: str, p_negative: float, p_fine: np.ndarray) -> Dict[str, Any]:
    """One segment's prediction; probabilities and decisions are None for segments that are not scored."""
    scored = role == "caller" and not math.isnan(float(p_negative))
    record: Dict[str, Any] = {
        "call_id": call_id, "segment_index": int(segment_index), "start": _number(start, 3), "end": _number(end, 3),
        "duration": _number(duration, 3), "role": role,
        "p_negative": _number(p_negative) if scored else None,
        "pred_negative": int(bundle.is_negative(float(p_negative))) if scored else None,
    }
    for name, p in zip(bundle.taxonomy.labels, p_fine):
        record[f"p_{name}"] = _number(p) if scored else None
    record["top_labels"] = bundle.top_labels(np.asarray(p_fine), negative=bool(record["pred_negative"])) if scored else []
    return record


def summarize_call(records: Sequence[Dict[str, Any]], *, call_id: str, source: str,
                   duration_sec: Optional[float], n_skipped: int, n_peaks: int = 3,
                   roles: str = ROLES_FROM_MANIFEST) -> Dict[str, Any]:
    """Per-call figures over the scored (caller) segments, in segment order.

    roles: where the segments' roles came from (ROLES_FROM_MANIFEST, ROLES_FROM_CHANNELS or ROLES_UNKNOWN_MONO).

    negative_share: negative caller speech time / all caller speech time.
    longest negative run: most consecutive negative caller segments (operator turns between them do
    not break a run), with their caller speech seconds and the run's start/end in the call.
    first alert: the first caller segment decided negative (its segment_index) and the time from the
    call's start to its end, when the alert can be raised (None without an alert or without times).
    negative_changes: switches between negative and not along consecutive caller segments (how often an
    operator's display would flip).
    peak_segments: the `n_peaks` caller segments with the highest p_negative.
    negative_share is the share of caller speech time above the decision threshold.
    """
    scored = [r for r in records if r["p_negative"] is not None]
    speech = sum(r["duration"] or 0.0 for r in scored)
    negative_speech = sum(r["duration"] or 0.0 for r in scored if r["pred_negative"])
    seconds = lambda run: sum(r["duration"] or 0.0 for r in run)  # noqa: E731
    best: List[Dict[str, Any]] = []
    current: List[Dict[str, Any]] = []
    for r in scored:
        current = current + [r] if r["pred_negative"] else []
        if (len(current), seconds(current)) > (len(best), seconds(best)):
            best = current
    peaks = sorted(scored, key=lambda r: -r["p_negative"])[:n_peaks]
    p = [r["p_negative"] for r in scored]
    first = next((r for r in scored if r["pred_negative"]), None)
    decisions = [int(r["pred_negative"]) for r in scored]
    return {
        "call_id": call_id, "source": source, "roles": roles, "duration_sec": _number(duration_sec, 3),
        "n_segments": len(records), "n_caller_segments": len(scored), "n_skipped": int(n_skipped),
        "caller_speech_sec": round(speech, 3), "negative_speech_sec": round(negative_speech, 3),
        "negative_share": round(negative_speech / speech, 4) if speech > 0 else None,
        "mean_p_negative": _number(np.mean(p)) if p else None, "max_p_negative": _number(max(p)) if p else None,
        "longest_negative_run_segments": len(best),
        "longest_negative_run_sec": round(seconds(best), 3),
        "longest_negative_run_start": best[0]["start"] if best else None,
        "longest_negative_run_end": best[-1]["end"] if best else None,
        "first_alert_segment": first["segment_index"] if first else None,
        "time_to_first_alert_sec": first["end"] if first else None,
        "negative_changes": int(sum(a != b for a, b in zip(decisions, decisions[1:]))),
        "peak_segments": [{"segment_index": r["segment_index"], "start": r["start"], "p_negative": r["p_negative"]}
                          for r in peaks],
    }


def csv_value(column: str, value: Any) -> str:
    """A record value as CSV text: lists joined by ';', peaks as index:p, None as empty."""
    if value is None:
        return ""
    if column == "peak_segments":
        return ";".join(f"{p['segment_index']}:{p['p_negative']:.3f}" for p in value)
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)


LONG_CALL_SEC = 180.0  # a call longer than this is plotted in minutes (a 22-minute call in seconds is unreadable)


def trajectory_figure(records: Sequence[Dict[str, Any]], *, threshold: float, title: str,
                      gold: Optional[Dict[int, int]] = None):
    """p_negative along one call as a `matplotlib.figure.Figure` (no pyplot).

    Caller turns are horizontal bars over their time span (at their index when times are unknown), red
    when decided negative; operator turns are grey spans along the bottom; `gold` ({segment_index: 0/1}
    of caller turns, from a labelled manifest) shades the gold-negative turns; the decision threshold is
    dashed. Minutes on the x axis for calls over LONG_CALL_SEC.
    """
    from matplotlib.figure import Figure

    scored = [r for r in records if r["p_negative"] is not None]
    timed = bool(scored) and all(r["start"] is not None and r["end"] is not None for r in records)
    last_end = max((r["end"] for r in records), default=0.0) if timed else 0.0
    scale = 60.0 if timed and last_end > LONG_CALL_SEC else 1.0

    def span(r):
        if timed:
            return r["start"] / scale, r["end"] / scale
        return r["segment_index"] - 0.4, r["segment_index"] + 0.4

    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for i, r in enumerate(r for r in records if r["role"] == "operator"):
        ax.axvspan(*span(r), ymin=0.0, ymax=0.05, color="0.55", lw=0, label="operator turn" if i == 0 else None)
    gold_turns = [r for r in scored if gold and gold.get(r["segment_index"])]
    for i, r in enumerate(gold_turns):
        ax.axvspan(*span(r), color="tab:red", alpha=0.15, lw=0, label="gold: negative" if i == 0 else None)
    labelled = set()
    for r in scored:
        name = "caller turn, decided negative" if r["pred_negative"] else "caller turn, not negative"
        ax.plot(span(r), [r["p_negative"]] * 2, color="tab:red" if r["pred_negative"] else "tab:blue", lw=3,
                label=None if name in labelled else name)
        labelled.add(name)
    if scored:
        mids = [sum(span(r)) / 2 for r in scored]
        ax.plot(mids, [r["p_negative"] for r in scored], color="grey", lw=0.8, alpha=0.7)
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(("time in call (min)" if scale == 60.0 else "time in call (s)") if timed else "segment index")
    ax.set_ylabel("p_negative (caller)")
    gold_note = "" if gold else " (no gold labels)"
    ax.set_title(f"{title}: p_negative per caller turn{gold_note}", fontsize=10, wrap=True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def plot_trajectory(path: Path, records: Sequence[Dict[str, Any]], *, threshold: float, title: str,
                    gold: Optional[Dict[int, int]] = None) -> Path:
    """PNG of `trajectory_figure` (written atomically)."""
    fig = trajectory_figure(records, threshold=threshold, title=title, gold=gold)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


# ----------------------------------------------------------------------------- the output folder

class PredictionWriter:
    """segments.csv/jsonl, calls.csv/jsonl, skipped.csv (+ plots/): appended and flushed per call."""

    def __init__(self, out_dir: Path, *, bundle, options: Dict[str, Any], live: bool, log: Callable):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.seg_columns = segment_columns(bundle.taxonomy.labels, live=live)
        run = {"bundle": str(bundle.path), "bundle_id": bundle.id, **options}
        self.done = self._resume(run, log)
        self._files = {}
        for name, columns in (("segments.csv", self.seg_columns), ("calls.csv", CALL_COLUMNS),
                              ("skipped.csv", SKIPPED_COLUMNS), ("segments.jsonl", None), ("calls.jsonl", None)):
            path = self.out_dir / name
            fresh = not path.is_file() or path.stat().st_size == 0
            if columns is not None and not fresh:
                _check_header(path, columns)
            handle = open(path, "a", encoding="utf-8", newline="")
            if columns is not None and fresh:
                csv.writer(handle).writerow(columns)
            self._files[name] = handle
        self._flush()

    def _resume(self, run: Dict[str, Any], log: Callable) -> set:
        """Calls finished by an earlier run into this folder (same bundle + options); partial rows dropped."""
        run_path = self.out_dir / RUN_FILE
        done: set = set()
        outputs = ("segments.csv", "segments.jsonl", "calls.csv", "calls.jsonl", "skipped.csv")
        if not run_path.is_file() and any((self.out_dir / name).exists() for name in outputs):
            raise CtxemoError(f"{self.out_dir} holds prediction files but no {RUN_FILE}; choose another --out")
        if run_path.is_file():
            previous = json.loads(run_path.read_text(encoding="utf-8"))
            changed = [k for k in run if k != "bundle" and previous.get(k) != run[k]]  # where it lies may change
            if changed:
                raise CtxemoError(f"{self.out_dir} holds predictions made with another bundle or options "
                                  f"({', '.join(changed)}); choose another --out or remove that folder")
            if (self.out_dir / "calls.csv").is_file():
                with open(self.out_dir / "calls.csv", encoding="utf-8", newline="") as handle:
                    done = {row["call_id"] for row in csv.DictReader(handle)}
            if done:
                log(f"[predict] resuming in {self.out_dir}: {len(done)} call(s) already done")
        # Rows of calls that did not finish (a crash between writes) are dropped; the call is redone.
        for name in ("segments.csv", "skipped.csv", "calls.csv"):
            _filter_csv(self.out_dir / name, done)
        for name in ("segments.jsonl", "calls.jsonl"):
            _filter_jsonl(self.out_dir / name, done)
        tmp = run_path.with_name(f".{RUN_FILE}.tmp")
        tmp.write_text(json_text(run) + "\n", encoding="utf-8")
        os.replace(tmp, run_path)
        return done

    def _flush(self) -> None:
        for handle in self._files.values():
            handle.flush()
            os.fsync(handle.fileno())

    def _csv_rows(self, name: str, columns: Sequence[str], rows: Iterable[Dict[str, Any]]) -> None:
        writer = csv.writer(self._files[name])
        for row in rows:
            writer.writerow([csv_value(c, row.get(c)) for c in columns])

    def _jsonl(self, name: str, rows: Iterable[Dict[str, Any]]) -> None:
        for row in rows:
            self._files[name].write(json_text(row, indent=None) + "\n")

    def write_call(self, records: List[Dict[str, Any]], summary: Dict[str, Any],
                   skipped: List[Dict[str, Any]]) -> None:
        """One finished call; calls.csv is written last, so its row marks the call complete."""
        self._csv_rows("segments.csv", self.seg_columns, records)
        self._jsonl("segments.jsonl", records)
        self._csv_rows("skipped.csv", SKIPPED_COLUMNS, skipped)
        self._jsonl("calls.jsonl", [summary])
        self._flush()
        self._csv_rows("calls.csv", CALL_COLUMNS, [summary])
        self._flush()
        self.done.add(summary["call_id"])

    def write_skipped(self, rows: List[Dict[str, Any]]) -> None:
        self._csv_rows("skipped.csv", SKIPPED_COLUMNS, rows)
        self._flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


def _check_header(path: Path, columns: Sequence[str]) -> None:
    """A folder resumed by another ctxemo version must not get rows of other columns under its header."""
    with open(path, encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle), [])
    if header != list(columns):
        raise CtxemoError(f"{path}: its columns differ from what this ctxemo writes ({len(header)} vs {len(columns)}; "
                          "written by another version?); choose another --out or remove that folder")


def _filter_csv(path: Path, keep_calls: set) -> None:
    if not path.is_file():
        return
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    column = rows[0].index("call_id")
    kept = [rows[0]] + [r for r in rows[1:] if r and r[column] in keep_calls]
    if len(kept) != len(rows):
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows(kept)
        os.replace(tmp, path)


def _filter_jsonl(path: Path, keep_calls: set) -> None:
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("call_id") in keep_calls:
                kept.append(line)
        except ValueError:  # a line cut short by a crash
            continue
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)


def skip_row(call_id: str, source: str, reason: str, *, segment_index=None, start=None, end=None, role=None,
             channel=None) -> Dict[str, Any]:
    """A row of skipped.csv: a whole input (no segment) or one segment of a call (its role, and the
    recording channel it came from when cut from a whole-call recording), and why."""
    rnd = lambda v: None if v is None or np.isnan(v) else round(float(v), 3)  # noqa: E731
    return {"call_id": call_id, "source": source, "segment_index": segment_index, "start": rnd(start),
            "end": rnd(end), "role": role, "channel": channel, "reason": reason}
