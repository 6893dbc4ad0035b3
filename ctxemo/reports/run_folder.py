"""`ctxemo report RUN_DIR`: rebuild a run folder's tables, caller-level bootstrap and plots from its
per-fold files (fold*/metrics.json, fold*/predictions.csv), for a cv folder (one configuration) or an
ablation / demo folder (one cv folder per arm). Outputs hold ids and numbers only.

Legend: n = pooled out-of-fold test segments, c = fine labels.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ctxemo.errors import CtxemoError
from ctxemo.evaluation.evaluate import headline
from ctxemo.evaluation.metrics import (
    auroc,
    bootstrap_interval,
    decision_f1,
    f1_counts,
    f1_from_counts,
    paired_bootstrap,
    sign_flip_test,
    summarize_folds,
)
from ctxemo.io import read_json
from ctxemo.reports.tables import format_p, markdown_table

FOLD_DIR = re.compile(r"^fold(\d+)$")
BOOTSTRAP_METRICS = ("binary_f1", "fine_weighted_f1")
N_BOOT = 1000
TOP_PAIRS = 10
BOOTSTRAP_HEADING = "## Caller-level paired bootstrap"


# ----------------------------------------------------------------------------- run folder layout

def fold_dirs(arm_dir: Path) -> Dict[int, Path]:
    """{fold index: folder} of the finished folds (those with metrics.json), in fold order."""
    found = {}
    for child in Path(arm_dir).iterdir() if Path(arm_dir).is_dir() else ():
        match = FOLD_DIR.match(child.name)
        if match and (child / "metrics.json").is_file():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def _read_config(folder: Path) -> Optional[DictConfig]:
    path = Path(folder) / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def arm_dirs(run_dir: Path) -> Dict[str, Path]:
    """Arm subfolders of an ablation folder, in the order of its config (else of its summary, else by name)."""
    run_dir = Path(run_dir)
    present = {p.name: p for p in sorted(run_dir.iterdir()) if p.is_dir() and fold_dirs(p)}
    order: List[str] = []
    cfg = _read_config(run_dir)
    if cfg is not None and OmegaConf.select(cfg, "ablation.arms"):
        order = list(cfg.ablation.arms.keys())
    elif (run_dir / "summary.json").is_file():
        order = list(read_json(run_dir / "summary.json").get("arms", {}))
    ranked = [a for a in order if a in present] + [a for a in present if a not in order]
    return {a: present[a] for a in ranked}


def detect_kind(run_dir: Path) -> str:
    """'cv' when run_dir holds fold*/metrics.json itself, 'ablation' when its subfolders do."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CtxemoError(f"{run_dir}: no such run folder")
    if fold_dirs(run_dir):
        return "cv"
    if arm_dirs(run_dir):
        return "ablation"
    raise CtxemoError(f"{run_dir}: neither a cv run (fold*/metrics.json) nor an ablation (<arm>/fold*/metrics.json)")


def run_arms(run_dir: Path) -> Dict[str, Path]:
    """{arm: folder}: an ablation's arm folders, or a cv folder as one arm named by its config's `name`."""
    run_dir = Path(run_dir)
    if detect_kind(run_dir) == "cv":
        cfg = _read_config(run_dir)
        name = OmegaConf.select(cfg, "name", default=None) if cfg is not None else None
        return {str(name or run_dir.name): run_dir}
    return arm_dirs(run_dir)


def _reference(run_dir: Path, arms: Sequence[str]) -> str:
    cfg = _read_config(run_dir)
    ref = OmegaConf.select(cfg, "ablation.reference", default="") if cfg is not None else ""
    if not ref and (run_dir / "summary.json").is_file():
        ref = read_json(run_dir / "summary.json").get("reference", "")
    return ref if ref in arms else arms[0]


def fold_summary(arm_dir: Path, folds: Optional[Sequence[int]] = None) -> Dict:
    """{metric: {mean, std, folds}} from fold*/metrics.json (all finished folds, or `folds`), as run_cv builds it."""
    dirs = fold_dirs(arm_dir)
    chosen = [k for k in dirs if folds is None or k in folds]
    return summarize_folds([headline(read_json(dirs[k] / "metrics.json")) for k in chosen])


# ----------------------------------------------------------------------------- pooled predictions

@dataclass
class Pooled:
    """Out-of-fold test predictions of one arm, pooled over its folds."""

    labels: List[str]
    multilabel: bool
    call_id: np.ndarray  # [n] str
    segment_index: np.ndarray  # [n] int
    caller_id: Optional[np.ndarray]  # [n] str, when predictions.csv carries it
    p_negative: np.ndarray  # [n]
    pred_negative: np.ndarray  # [n] 0/1, decided with the fold's tuned threshold
    negative: np.ndarray  # [n] gold 0/1
    p_fine: np.ndarray  # [n, c]
    pred_fine: np.ndarray  # [n, c] 0/1: fold thresholds (multi-label) or one-hot argmax (multi-class)
    gold_fine: np.ndarray  # [n, c] 0/1

    def keys(self) -> List[Tuple[str, int]]:
        return list(zip(self.call_id.tolist(), self.segment_index.tolist()))

    def take(self, idx: np.ndarray) -> "Pooled":
        """The rows `idx`, in that order."""
        fields = ("call_id", "segment_index", "caller_id", "p_negative", "pred_negative", "negative", "p_fine",
                  "pred_fine", "gold_fine")
        values = [getattr(self, f) for f in fields]
        return Pooled(self.labels, self.multilabel, *(None if v is None else v[idx] for v in values))

    def fine_rows(self) -> np.ndarray:
        """bool [n]: rows that fine metrics score. Multi-class: only rows with a gold label (an unlabelled
        row has no class; the objective skips them in training too)."""
        return np.ones(len(self.call_id), bool) if self.multilabel else self.gold_fine.sum(1) > 0


def load_predictions(arm_dir: Path, *, folds: Optional[Sequence[int]] = None) -> Optional[Pooled]:
    """Pool fold*/predictions.csv of an arm (or of the given folds). None when no fold has predictions."""
    cfg = _read_config(arm_dir)
    multilabel = bool(OmegaConf.select(cfg, "taxonomy.multilabel", default=True)) if cfg is not None else True
    columns: Dict[str, list] = {}
    pred_fine: List[np.ndarray] = []
    labels: Optional[List[str]] = None
    for k, folder in fold_dirs(arm_dir).items():
        path = folder / "predictions.csv"
        if (folds is not None and k not in folds) or not path.is_file():
            continue
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        header = list(rows[0].keys()) if rows else []
        fold_labels = [h[2:] for h in header if h.startswith("p_") and h != "p_negative"]
        if not rows:
            continue
        if labels is not None and fold_labels != labels:
            raise CtxemoError(f"{path}: label columns differ from the other folds")
        labels = fold_labels
        p = np.array([[float(r[f"p_{name}"]) for name in labels] for r in rows], dtype=float).reshape(len(rows), -1)
        if multilabel:
            cut = (read_json(folder / "metrics.json").get("thresholds") or {}).get("fine")
            pred_fine.append((p >= np.asarray(0.5 if cut is None else cut, dtype=float)).astype(int))
        else:
            pred_fine.append(np.eye(len(labels), dtype=int)[p.argmax(1)])
        for name in ("call_id", "segment_index", "p_negative", "pred_negative", "negative", "gold_labels"):
            columns.setdefault(name, []).extend(r[name] for r in rows)
        columns.setdefault("caller_id", []).extend(r.get("caller_id") for r in rows)
        columns.setdefault("p_fine", []).append(p)
    if labels is None:
        return None
    index = {name: i for i, name in enumerate(labels)}
    gold = np.zeros((len(columns["call_id"]), len(labels)), dtype=int)
    for i, text in enumerate(columns["gold_labels"]):
        for name in filter(None, text.split(";")):
            gold[i, index[name]] = 1
    callers = columns["caller_id"]
    return Pooled(
        labels=labels, multilabel=multilabel,
        call_id=np.array(columns["call_id"], dtype=object),
        segment_index=np.array(columns["segment_index"], dtype=int),
        caller_id=None if any(c in (None, "") for c in callers) else np.array(callers, dtype=object),
        p_negative=np.array(columns["p_negative"], dtype=float),
        pred_negative=np.array(columns["pred_negative"], dtype=int),
        negative=np.array(columns["negative"], dtype=int),
        p_fine=np.concatenate(columns["p_fine"]), pred_fine=np.concatenate(pred_fine), gold_fine=gold,
    )


POOLED_METRICS = ("binary_f1", "binary_auroc", "fine_weighted_f1")


def pooled_metrics(pooled: Pooled, groups: Optional[np.ndarray] = None, *, n_boot: int = N_BOOT,
                   seed: int = 0) -> Dict[str, object]:
    """Headline metrics of the out-of-fold predictions pooled over folds (each fold decided with its own
    tuned thresholds). With few callers per fold (leave-one-caller-out) per-fold F1 is noisy and can be
    undefined; the pooled figure is what the classic references report. With `groups` (caller per row)
    also binary_auroc_ci, the 95% caller-bootstrap interval of the AUROC, and chance_level: whether that
    interval includes 0.5 (such an arm's F1 gains are no evidence of a working model)."""
    keep = pooled.fine_rows()
    out: Dict[str, object] = {
        "binary_f1": decision_f1(pooled.negative, pooled.pred_negative),
        "binary_auroc": auroc(pooled.negative, pooled.p_negative),
        "fine_weighted_f1": (decision_f1(pooled.gold_fine[keep], pooled.pred_fine[keep], average="weighted")
                             if pooled.gold_fine[keep].any() else float("nan")),  # no fine labels: absent, not 0
        "n": int(len(pooled.negative))}
    if groups is not None:
        low, high = bootstrap_interval(pooled.negative, pooled.p_negative, groups, metric_fn=auroc, n_boot=n_boot,
                                       seed=seed)
        out["binary_auroc_ci"] = [low, high]
        out["chance_level"] = bool(np.isfinite(low) and low <= 0.5 <= high)
    return out


def caller_groups(pooled: Pooled, arm_dir: Path) -> Tuple[np.ndarray, str]:
    """([n] bootstrap group per row, "caller_id" | "call_id").

    The caller comes from predictions.csv when it has the column, else from the manifest named in the
    arm's config.yaml; without either, calls are resampled instead (reported as such).
    """
    if pooled.caller_id is not None:
        return pooled.caller_id, "caller_id"
    manifest = arm_manifest(arm_dir)
    if manifest is not None:
        caller_of = dict(zip(manifest.call_id, manifest.caller_id))
        if all(c in caller_of for c in pooled.call_id):
            return np.array([caller_of[c] for c in pooled.call_id], dtype=object), "caller_id"
    return pooled.call_id, "call_id"


def arm_manifest(arm_dir: Path):
    """The manifest named in the arm's config.yaml (ids, roles, times, labels; audio not checked), or None
    when the config names none, the file is gone or no longer reads."""
    cfg = _read_config(arm_dir)
    manifest_path = OmegaConf.select(cfg, "data.manifest", default=None) if cfg is not None else None
    if not manifest_path or not Path(manifest_path).is_file():
        return None
    from ctxemo.data.manifest import load_manifest
    from ctxemo.taxonomy import Taxonomy

    try:
        return load_manifest(manifest_path, Taxonomy.from_config(cfg.taxonomy), require_audio=False,
                             check_audio_exists=False)
    except CtxemoError:
        return None


# ----------------------------------------------------------------------------- metrics on pooled rows

def pair_counts(pooled: Pooled) -> np.ndarray:
    """[c, c] (gold, predicted) confusion counts, as metrics.fine_metrics defines its confused pairs."""
    keep = pooled.fine_rows()
    y, pred = pooled.gold_fine[keep], pooled.pred_fine[keep]
    if pooled.multilabel:
        missed, spurious = (y == 1) & (pred == 0), (pred == 1) & (y == 0)
        return missed.astype(int).T @ spurious.astype(int)
    return y.astype(int).T @ pred.astype(int)


def align(a: Pooled, b: Pooled) -> Tuple[np.ndarray, np.ndarray]:
    """Row indices into a and b of the segments both arms scored, in a's order."""
    where_b = {key: i for i, key in enumerate(b.keys())}
    ia = [i for i, key in enumerate(a.keys()) if key in where_b]
    return np.array(ia, dtype=int), np.array([where_b[key] for key in a.keys() if key in where_b], dtype=int)


def bootstrap_arm(ref: Pooled, arm: Pooled, groups: np.ndarray, *, n_boot: int = N_BOOT,
                  seed: int = 0) -> Dict[str, Dict]:
    """Caller-level paired bootstrap of pooled binary F1 and fine weighted F1, arm minus reference.

    Args:
        ref, arm: pooled predictions of the two arms, already aligned row by row.
        groups: [n] caller (or call) per row.
    Returns:
        {metric: metrics.paired_bootstrap's dict + n_rows}.
    """
    keep = ref.fine_rows()
    groups = np.asarray(groups)
    inputs = {"binary_f1": (ref.negative, ref.pred_negative, arm.pred_negative, groups, "binary"),
              "fine_weighted_f1": (ref.gold_fine[keep], ref.pred_fine[keep], arm.pred_fine[keep], groups[keep],
                                   "weighted")}
    out = {}
    for name, (gold, pred_a, pred_b, rows_groups, average) in inputs.items():
        out[name] = paired_bootstrap(gold, pred_a, pred_b, rows_groups, metric_fn=partial(decision_f1, average=average),
                                     n_boot=n_boot, seed=seed)
        out[name]["n_rows"] = int(len(rows_groups))
        # The exact test beside it: swaps whole callers' predictions between the arms.
        flip = sign_flip_test(f1_counts(gold, pred_a, rows_groups), f1_counts(gold, pred_b, rows_groups),
                              partial(f1_from_counts, average=average), seed=seed)
        out[name].update(p_sign_flip=flip["p"], sign_flip_exact=flip["exact"], sign_flip_min_p=flip["min_p"])
    return out


# ----------------------------------------------------------------------------- ablation comparison

def bootstrap_comparison(run_dir: Path, arms: Sequence[str], *, reference: str, n_boot: int = N_BOOT,
                         seed: int = 0, folds: Optional[Sequence[int]] = None,
                         pooled: Optional[Dict[str, Optional[Pooled]]] = None) -> Dict:
    """Paired caller-level bootstrap of every arm against `reference` on their pooled out-of-fold predictions.

    Returns:
        {"grouped_by", "n_boot", "seed", "metrics", "reference", "arms": {arm: {metric: {...}}}}; arms
        without predictions are left out. `pooled`: the arms' predictions if the caller already read them.
    """
    run_dir = Path(run_dir)
    pooled = pooled if pooled is not None else {arm: load_predictions(run_dir / arm, folds=folds) for arm in arms}
    result = {"reference": reference, "metrics": list(BOOTSTRAP_METRICS), "n_boot": n_boot, "seed": seed,
              "grouped_by": None, "arms": {}}
    ref = pooled.get(reference)
    if ref is None:
        return result
    for arm in arms:
        if arm == reference or pooled[arm] is None:
            continue
        ia, ib = align(ref, pooled[arm])
        if ia.size == 0:
            continue
        ref_rows, arm_rows = ref.take(ia), pooled[arm].take(ib)
        if not (np.array_equal(ref_rows.negative, arm_rows.negative)
                and np.array_equal(ref_rows.gold_fine, arm_rows.gold_fine)):
            raise CtxemoError(f"{run_dir}: arms {reference!r} and {arm!r} disagree on gold labels of the same segments")
        groups, grouped_by = caller_groups(ref_rows, run_dir / reference)
        result["grouped_by"] = grouped_by
        result["arms"][arm] = bootstrap_arm(ref_rows, arm_rows, groups, n_boot=n_boot, seed=seed)
    return result


def bootstrap_markdown(boot: Dict) -> str:
    unit = "callers" if boot["grouped_by"] == "caller_id" else "calls (no caller ids found)"
    rows = []
    for arm, tests in boot["arms"].items():
        row = [arm]
        for name in boot["metrics"]:
            t = tests[name]
            row.append(f"{100 * t['metric_b']:.2f} vs {100 * t['metric_a']:.2f}: Δ {100 * t['diff']:+.2f} "
                       f"[{100 * t['ci_low']:+.2f}, {100 * t['ci_high']:+.2f}], {_p_cells(t)}")
        rows.append(row)
    note = (f"{BOOTSTRAP_HEADING} (pooled out-of-fold predictions)\n\n"
            f"Each metric on all test segments of all folds pooled, arm vs `{boot['reference']}`, in %; Δ with "
            f"95% interval and two-sided p from {boot['n_boot']} resamples of {unit} (a resampled caller brings "
            "all their segments), and p_flip from the paired sign-flip test that swaps whole callers' "
            "predictions between the two arms (exact up to 16 callers). Complements the per-fold paired t-test "
            "above.\n\n")
    withheld = next((t["p_withheld"] for tests in boot["arms"].values() for t in tests.values()
                     if t.get("p_withheld")), None)
    if withheld:
        note += f"p_boot not reported: {withheld}.\n\n"
    return note + markdown_table(["arm", *boot["metrics"]], rows)


def _p_cells(test: Dict) -> str:
    """'p_boot=…, p_flip=…' for one metric; p_flip names its floor when exact and the floor is large."""
    p_boot = "n/a" if test.get("p_withheld") else format_p(test["p"])
    floor = test.get("sign_flip_min_p")
    limit = f" (min {format_p(floor)})" if floor is not None and np.isfinite(floor) and floor >= 0.01 else ""
    return f"p_boot={p_boot}, p_flip={format_p(test.get('p_sign_flip'))}{limit}"


def bootstrap_text(boot: Dict) -> str:
    lines = [f"caller-level paired bootstrap vs {boot['reference']} (pooled out-of-fold, {boot['n_boot']} resamples "
             f"of {boot['grouped_by'] or 'callers'}):"]
    for arm, tests in boot["arms"].items():
        cells = [f"{name} Δ {100 * t['diff']:+.2f} [{100 * t['ci_low']:+.2f}, {100 * t['ci_high']:+.2f}] "
                 f"{_p_cells(t)}" for name, t in tests.items()]
        lines.append(f"  {arm}: " + "; ".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


# ----------------------------------------------------------------------------- entry point

