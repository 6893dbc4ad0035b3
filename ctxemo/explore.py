"""Data wrangling behind the notebooks: a corpus's label statistics, a run folder's pooled out-of-fold
predictions as arrays, per-call trajectories, and errors binned by position in the call and duration.

Everything here returns numbers, ids and label names (plus audio clips on explicit request), so that a
notebook only calls, displays and plots. Figures live in `ctxemo.reports.explore_plots`.

Legend: n = segments (manifest rows or pooled predictions), c = fine labels, k = callers, b = bins.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from ctxemo.data.manifest import Manifest, load_manifest
from ctxemo.errors import CtxemoError
from ctxemo.io import read_json
from ctxemo.reports.curves import (  # noqa: F401 (the notebooks' API)
    call_trajectory,
    pick_calls,
    pr_curve,
    pr_curves,
    prevalence,
)
from ctxemo.reports.tables import format_p
from ctxemo.taxonomy import Taxonomy

if TYPE_CHECKING:  # reports.run_folder imports torch; the corpus half of this module does not need it
    from ctxemo.reports.run_folder import Pooled

# ----------------------------------------------------------------------------- corpus

def read_manifest(path: str | Path, *, config: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> Manifest:
    """A manifest for exploration: validated, taxonomy from a YAML config (default: the 11 hotline labels).

    Audio files are neither required nor checked here (a corpus of precomputed features has none);
    `segment_durations` and `segment_audio` read them when present.

    Args:
        path: manifest `.csv` or `.jsonl`.
        config: a YAML config whose `taxonomy` to use (e.g. the one you train with).
        overrides: `key=value` overrides for that config, e.g. ``["taxonomy.multilabel=false"]``.
    """
    from ctxemo.config import load_config

    cfg = load_config([config] if config else [], overrides)
    return load_manifest(path, Taxonomy.from_config(cfg.taxonomy), require_audio=False, check_audio_exists=False)


def label_names(manifest: Manifest) -> List[str]:
    """["negative", *fine labels]: the column order of `label_matrix` and of the tables below."""
    return ["negative", *manifest.taxonomy.labels]


def label_matrix(manifest: Manifest, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """int [n, 1 + c]: negative then each fine label, for `rows` (default: the caller segments)."""
    rows = np.flatnonzero(manifest.is_caller) if rows is None else np.asarray(rows)
    return manifest.label_matrix()[rows]


def label_table(manifest: Manifest) -> Tuple[List[str], List[list]]:
    """Per label (negative first): caller segments carrying it, their share, and callers with at least one.

    Returns:
        (header, rows) for `ctxemo.reports.tables.markdown_table`.
    """
    rows = np.flatnonzero(manifest.is_caller)
    matrix = label_matrix(manifest, rows)
    callers = np.array(manifest.caller_id, dtype=object)[rows]
    out = []
    for j, name in enumerate(label_names(manifest)):
        on = matrix[:, j] > 0
        out.append([name, int(on.sum()), f"{on.mean():.3f}" if len(on) else "n/a", len(set(callers[on]))])
    return ["label", "caller segments", "share", "callers"], out


def cooccurrence(fine: np.ndarray) -> np.ndarray:
    """int [c, c]: segments carrying both labels; the diagonal is each label's count.

    Example:
        >>> cooccurrence(np.array([[1, 1, 0], [1, 0, 0]])).tolist()
        [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    """
    on = (np.asarray(fine) > 0).astype(np.int64)
    return on.T @ on


def conditional_cooccurrence(counts: np.ndarray) -> np.ndarray:
    """float [c, c]: P(column label | row label) = counts[i, j] / counts[i, i]; NaN for an absent row label."""
    counts = np.asarray(counts, dtype=float)
    diag = np.diag(counts)[:, None]
    return np.divide(counts, diag, out=np.full_like(counts, np.nan), where=diag > 0)


def segment_durations(manifest: Manifest) -> np.ndarray:
    """float [n] seconds per manifest row: end - start where both are given, else the audio file's length
    (header only, nothing decoded); NaN where neither is available."""
    out = manifest.end_sec - manifest.start_sec
    for i in np.flatnonzero(np.isnan(out)):
        if not manifest.audio[i]:
            continue
        try:
            info = sf.info(str(manifest.audio_path(i)))
        except Exception:  # missing or unreadable file: the duration is unknown, not an error here
            continue
        start = 0.0 if np.isnan(manifest.start_sec[i]) else manifest.start_sec[i]
        end = info.frames / info.samplerate if np.isnan(manifest.end_sec[i]) else manifest.end_sec[i]
        out[i] = end - start
    return out


def call_positions(manifest: Manifest) -> np.ndarray:
    """float [n] in [0, 1]: where each row sits in its call, by segment order over all of the call's segments
    (0 = first, 1 = last; a one-segment call gets 0.5)."""
    out = np.zeros(len(manifest))
    for rows in manifest.calls():
        out[rows] = np.linspace(0.0, 1.0, len(rows)) if len(rows) > 1 else 0.5
    return out


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """int [n]: bin of each value for `edges` [b + 1]; the last bin includes its right edge, values outside
    the edges go to the nearest end bin, NaN gives -1."""
    x, edges = np.asarray(x, dtype=float), np.asarray(edges, dtype=float)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    return np.where(np.isnan(x), -1, idx)


def binned_mean(x: np.ndarray, y: np.ndarray, *, edges: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean of `y` per bin of `x`.

    Args:
        x: [n] values binned by `edges` [b + 1] (see `bin_index`).
        y: [n] or [n, m] values averaged per bin.
    Returns:
        (mean [b] or [b, m], NaN for an empty bin; count [b]).

    Example:
        >>> m, n = binned_mean(np.array([0.1, 0.2, 0.9]), np.array([1.0, 0.0, 1.0]), edges=np.array([0, 0.5, 1]))
        >>> m.tolist(), n.tolist()
        ([0.5, 1.0], [2, 1])
    """
    y = np.asarray(y, dtype=float)
    idx = bin_index(x, edges)
    b = len(edges) - 1
    count = np.array([np.sum(idx == k) for k in range(b)])
    mean = np.full((b,) + y.shape[1:], np.nan)
    for k in range(b):
        if count[k]:
            mean[k] = y[idx == k].mean(axis=0)
    return mean, count


def quantile_edges(x: np.ndarray, bins: int) -> np.ndarray:
    """float [<= bins + 1]: edges that split the finite values of `x` into about equal-count bins
    (repeated quantiles are merged, so heavily tied data may give fewer bins)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.array([0.0, 1.0])
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    return edges if len(edges) > 1 else np.array([edges[0], edges[0] + 1e-9])


def position_profile(manifest: Manifest, *, bins: int = 5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Share of caller segments carrying each label (negative first) along the call.

    Returns:
        (edges [b + 1] of the relative position, shares [b, 1 + c], caller segments per bin [b]).
    """
    rows = np.flatnonzero(manifest.is_caller)
    edges = np.linspace(0.0, 1.0, bins + 1)
    shares, count = binned_mean(call_positions(manifest)[rows], label_matrix(manifest, rows), edges=edges)
    return edges, shares, count


def caller_profiles(manifest: Manifest) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Each caller's share of caller segments per label (negative first), most negative caller first.

    Returns:
        (caller ids [k], shares [k, 1 + c], caller segments per caller [k]).
    """
    rows = np.flatnonzero(manifest.is_caller)
    callers = np.array(manifest.caller_id, dtype=object)[rows]
    matrix = label_matrix(manifest, rows).astype(float)
    ids = sorted(set(callers.tolist()))
    shares = np.stack([matrix[callers == c].mean(0) for c in ids]) if ids else np.zeros((0, matrix.shape[1]))
    count = np.array([int(np.sum(callers == c)) for c in ids])
    order = np.lexsort((np.arange(len(ids)), -shares[:, 0])) if ids else np.arange(0)
    return [ids[i] for i in order], shares[order], count[order]


def corpus_overview(manifest: Manifest, durations: Optional[np.ndarray] = None) -> Dict[str, object]:
    """Headline counts of a corpus: calls, callers, segments, caller share, negative share, hours of audio."""
    caller = manifest.is_caller
    out: Dict[str, object] = {
        "calls": len(manifest.calls()), "callers": len(set(manifest.caller_id)), "segments": len(manifest),
        "caller segments": int(caller.sum()),
        "negative share of caller segments": round(float(manifest.negative[caller].mean()), 3) if caller.any() else None,
        "caller segments per call (median)": float(np.median([caller[r].sum() for r in manifest.calls()])),
    }
    if durations is not None and np.isfinite(durations).any():
        out["audio hours"] = round(float(np.nansum(durations)) / 3600, 3)
        out["caller segment sec (median)"] = round(float(np.nanmedian(durations[caller])), 2) if caller.any() else None
    return out


def segment_audio(manifest: Manifest, row: int, *, sample_rate: int = 16000) -> np.ndarray:
    """float32 [t]: the audio of one manifest row (cropped to start/end when given), mono at `sample_rate`."""
    from ctxemo.data.audio import (
        read_audio,  # torch-backed resampling: imported only when audio is wanted
    )

    def sec(v: float) -> Optional[float]:
        return None if np.isnan(v) else float(v)

    return read_audio(manifest.audio_path(row), start_sec=sec(manifest.start_sec[row]),
                      end_sec=sec(manifest.end_sec[row]), target_sr=sample_rate)


# ----------------------------------------------------------------------------- run folders

def ensure_run(run_dir: str | Path, *, config: Optional[str | Path] = None, overrides: Sequence[str] = (),
               n_calls: Optional[int] = None, seed: int = 0, progress: bool = False, log=print) -> Dict:
    """The comparison of a finished ablation folder, running it first when `run_dir/summary.json` is absent.

    Without `config` the run is the demo study (`ctxemo.studies.demo.run_demo`: synthetic corpus of `n_calls`
    calls in `run_dir/corpus`, isolated vs contextual); with it, `config` + `overrides` must define
    `ablation.arms` (e.g. experiments/configs/ablation/context.yaml data.manifest=...). A half-finished
    folder resumes. Returns summary.json's content.
    """
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        log(f"[explore] loading {run_dir}")
        return read_json(run_dir / "summary.json")
    if config is None:
        from ctxemo.studies.demo import DEMO_CALLS, run_demo

        return run_demo(run_dir, n_calls=n_calls or DEMO_CALLS, seed=seed, overrides=overrides, progress=progress,
                        log=log)
    from ctxemo.config import load_config
    from ctxemo.runinfo import start_run
    from ctxemo.studies.ablation import run_ablation

    cfg = load_config([config], list(overrides))
    start_run(run_dir, cfg, command="ablate")
    return run_ablation(cfg, run_dir, progress=progress, log=log)


def load_arms(run_dir: str | Path) -> Dict[str, Pooled]:
    """Every arm's out-of-fold test predictions (all fold*/predictions.csv), pooled into arrays.

    Args:
        run_dir: an ablation / demo folder (one subfolder per arm) or a cv folder (one arm, named by
            its config's `name`).
    Returns:
        {arm: ctxemo.reports.run_folder.Pooled} in the config's arm order; arms without predictions are left out.
    """
    from ctxemo.reports.run_folder import load_predictions, run_arms

    pooled = {arm: load_predictions(folder) for arm, folder in run_arms(Path(run_dir)).items()}
    return {arm: p for arm, p in pooled.items() if p is not None}


def run_manifest(run_dir: str | Path) -> Manifest:
    """The manifest a run was trained on (its config's `data.manifest`, with the run's taxonomy)."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    candidates = [run_dir / "config.yaml", *sorted(run_dir.glob("*/config.yaml"))]
    for path in candidates:
        if path.is_file():
            cfg = OmegaConf.load(path)
            manifest = OmegaConf.select(cfg, "data.manifest", default=None)
            if manifest:
                taxonomy = Taxonomy(labels=tuple(cfg.taxonomy.labels), multilabel=bool(cfg.taxonomy.multilabel),
                                    negative_labels=tuple(cfg.taxonomy.negative_labels))
                return load_manifest(manifest, taxonomy, require_audio=False, check_audio_exists=False)
    raise CtxemoError(f"{run_dir}: no config.yaml naming data.manifest")


def paired_rows(summary: Dict, metrics: Optional[Sequence[str]] = None) -> Tuple[List[str], List[list]]:
    """Per arm and metric vs the reference, in %: per-fold values, mean paired difference, paired t-test
    and Wilcoxon p (from summary.json's "paired").

    Returns:
        (header, rows) for `ctxemo.reports.tables.markdown_table`.
    """
    reference = summary["reference"]
    metrics = list(metrics or summary["metrics"])
    rows = []
    for arm, tests in summary["paired"].items():
        for name in metrics:
            if name not in tests:
                continue
            ref_folds = summary["arms"][reference][name]["folds"]
            arm_folds = summary["arms"][arm][name]["folds"]
            t = tests[name]
            rows.append([arm, name, " ".join(f"{100 * v:.1f}" for v in ref_folds),
                         " ".join(f"{100 * v:.1f}" for v in arm_folds), f"{100 * t['mean_diff']:+.2f}",
                         format_p(t.get("p_ttest")), format_p(t.get("p_wilcoxon"))])
    return ["arm", "metric", f"{reference} per fold", "arm per fold", "Δ mean", "p (t-test)", "p (Wilcoxon)"], rows


def align_to_manifest(pooled: Pooled, manifest: Manifest) -> np.ndarray:
    """int [n]: the manifest row of each pooled prediction, matched on (call_id, segment_index)."""
    where = {(c, int(s)): i for i, (c, s) in enumerate(zip(manifest.call_id, manifest.segment_index))}
    try:
        return np.array([where[(c, int(s))] for c, s in zip(pooled.call_id, pooled.segment_index)], dtype=np.int64)
    except KeyError as exc:
        raise CtxemoError(f"prediction {exc.args[0]} is not in manifest {manifest.path}") from None


def binary_errors(pooled: Pooled) -> np.ndarray:
    """int [n]: 1 where the binary decision (fold-tuned threshold) disagrees with the gold label."""
    return (pooled.pred_negative != pooled.negative).astype(np.int64)


def worst_errors(pooled: Pooled, n: int = 5) -> np.ndarray:
    """int [<= n]: rows of the most confident binary mistakes (largest |p_negative - gold| among errors)."""
    wrong = np.flatnonzero(binary_errors(pooled))
    margin = np.abs(pooled.p_negative[wrong] - pooled.negative[wrong])
    return wrong[np.argsort(-margin, kind="stable")][:n]


def describe_segments(pooled: Pooled, idx: np.ndarray, *, manifest: Optional[Manifest] = None,
                      top: int = 2) -> Tuple[List[str], List[list]]:
    """A table of pooled rows `idx`: ids, gold vs predicted, the `top` most probable fine labels and, with
    `manifest`, the audio path (relative to the manifest's folder) and crop.

    Returns:
        (header, rows) for `ctxemo.reports.tables.markdown_table`.
    """
    header = ["call_id", "segment_index", "gold negative", "p_negative", "decided", "gold labels",
              f"top {top} predicted"]
    where = align_to_manifest(pooled.take(np.asarray(idx, dtype=np.int64)), manifest) if manifest is not None else None
    if manifest is not None:
        header += ["audio", "start–end (s)"]
    rows = []
    for k, i in enumerate(np.asarray(idx, dtype=np.int64)):
        gold = ";".join(name for name, on in zip(pooled.labels, pooled.gold_fine[i]) if on) or "-"
        best = np.argsort(-pooled.p_fine[i], kind="stable")[:top]
        row = [pooled.call_id[i], int(pooled.segment_index[i]), int(pooled.negative[i]), f"{pooled.p_negative[i]:.2f}",
               int(pooled.pred_negative[i]), gold, ", ".join(f"{pooled.labels[j]} {pooled.p_fine[i, j]:.2f}" for j in best)]
        if where is not None:
            r = where[k]
            crop = "" if np.isnan(manifest.start_sec[r]) else f"{manifest.start_sec[r]:.2f}–{manifest.end_sec[r]:.2f}"
            row += [manifest.audio[r] or "-", crop or "whole file"]
        rows.append(row)
    return header, rows
