"""`ctxemo evaluate BUNDLE MANIFEST [--features F] [--out DIR]`: score a labelled held-out manifest with a
trained bundle and write what a CV fold writes, `metrics.json` and `predictions.csv`, in the same format
(the bundle's own thresholds; gold labels beside the decisions), so the held-out figures read like a fold.

Segments are prepared and scored exactly as `ctxemo predict` does (ctxemo.inference.predict); segments it
cannot score (unreadable or too short audio) are counted in metrics.json and listed in skipped.csv.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Union

import numpy as np

from ctxemo.data.manifest import load_manifest
from ctxemo.errors import CtxemoError, ManifestError
from ctxemo.evaluation.evaluate import HEADLINE, evaluate, headline
from ctxemo.evaluation.scoring import SegmentScores
from ctxemo.inference.bundle import Bundle, load_bundle
from ctxemo.inference.predict import SkipInput, prepare_manifest, score_prepared
from ctxemo.io import write_json
from ctxemo.reports.tables import write_csv, write_predictions

HELD_OUT_FOLD = "held_out"  # the `fold` column of predictions.csv


def evaluate_bundle(bundle: Union[Bundle, str, Path], manifest_path: Union[str, Path], out_dir: Union[str, Path], *,
                    features: Optional[Union[str, Path]] = None, log: Callable[[str], None] = print) -> Dict:
    """Score every caller segment of a labelled manifest and write metrics.json, predictions.csv (and
    skipped.csv when a segment could not be scored) under out_dir.

    Returns:
        the metrics dict written to metrics.json (evaluate's binary / fine metrics, thresholds, counts).
    Raises:
        CtxemoError naming the manifest: unreadable, features that do not fit, no labelled caller segment.
    """
    bundle = load_bundle(bundle) if not isinstance(bundle, Bundle) else bundle
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    try:
        manifest = load_manifest(manifest_path, bundle.taxonomy, require_audio=features is None,
                                 check_audio_exists=False)
        calls = list(prepare_manifest(bundle, manifest_path, features=Path(features) if features else None))
    except (SkipInput, ManifestError) as exc:
        raise CtxemoError(str(exc)) from None
    row_of = {(c, int(i)): r for r, (c, i) in enumerate(zip(manifest.call_id, manifest.segment_index))}
    rows, p_negative, p_fine, skipped = [], [], [], []
    for call in calls:
        skipped += call.skipped
        if not call.segments:
            continue
        for record in score_prepared(bundle, call):
            if record["p_negative"] is None:  # operator turns: context only, never scored
                continue
            rows.append(row_of[(record["call_id"], record["segment_index"])])
            p_negative.append(record["p_negative"])
            p_fine.append([record[f"p_{name}"] for name in bundle.taxonomy.labels])
    if not rows:
        raise CtxemoError(f"{manifest_path}: no caller segment could be scored (see the skipped reasons)")
    rows = np.array(rows, dtype=np.int64)
    scores = SegmentScores(rows, np.array(p_negative, dtype=float), np.array(p_fine, dtype=float).reshape(len(rows), -1),
                           manifest.negative[rows], manifest.fine[rows])
    thresholds = bundle.thresholds
    metrics = evaluate(scores, taxonomy=bundle.taxonomy, binary_threshold=thresholds.binary,
                       fine_thresholds=thresholds.fine, fine_labelled=bool(manifest.fine[rows].any()))
    metrics.update(fold=HELD_OUT_FOLD, n_test_calls=len({manifest.call_id[r] for r in rows}),
                   n_scored_segments=int(len(rows)), n_skipped_segments=len(skipped),
                   thresholds={"binary": thresholds.binary,
                               "fine": None if thresholds.fine is None else list(map(float, thresholds.fine))})
    write_predictions(out_dir / "predictions.csv", scores, manifest=manifest, fold=HELD_OUT_FOLD,
                      binary_threshold=thresholds.binary, fine_thresholds=thresholds.fine)
    if skipped:
        columns = list(skipped[0])
        write_csv(out_dir / "skipped.csv", columns, [[row.get(c) for c in columns] for row in skipped])
    write_json(out_dir / "metrics.json", metrics)
    flat = headline(metrics)
    log("held-out: " + ", ".join(f"{name} {100 * flat[name]:.2f}" for name in HEADLINE
                                 if name in flat and np.isfinite(flat[name]))
        + f" ({len(rows)} caller segments, {len(skipped)} skipped); results in {out_dir}")
    return metrics
