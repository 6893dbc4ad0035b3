"""The real-speech benchmark: every context arm of ctxemo and its baselines on real emotional speech.

Runs `ctxemo ablate experiments/configs/real_speech.yaml` (the shipped defaults of base.yaml; arms
isolated, call_norm, contextual, smooth; baselines linear_probe and prior) on both corpora of
../shared/realspeech (EmoDB pseudo-calls: `emodb-calls`, where emotion persists along a call, and the
control `emodb-isolated`, where order carries nothing), leave-one-caller-out (10 folds), for each seed
and each input path:
    features  the shipped eGeMAPS functionals (data.features=<corpus>.egemaps.npy)
    audio     the audio through ctxemo's own front-end: encoder.family=opensmile with ComParE 2016
              functionals (6373 per segment; a different feature set from the shipped eGeMAPS, computed
              from the wavs and cached under --out/cache)
and prints one table of pooled out-of-fold figures (mean ± std over seeds) beside the classic references
(eGeMAPS + logistic regression, shared/realspeech/reference.py) computed in the same run.

    python benchmarks/real_speech.py                               # full: 2 corpora x 2 paths x 3 seeds
    python benchmarks/real_speech.py --paths features --seeds 0    # one seed, features only
    python benchmarks/real_speech.py --smoke                       # 1 fold, 2 epochs (what the tests run)

Finished arm-folds are kept, so a killed run resumes (rerun the same command). Results: --out/results.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REALSPEECH = REPO.parent / "shared" / "realspeech"
CONFIG = REPO / "experiments" / "configs" / "real_speech.yaml"
CORPORA = ("emodb-calls", "emodb-isolated")
PATHS = {"features": lambda corpus: [f"data.features={REALSPEECH / f'{corpus}.egemaps.npy'}"],
         "audio": lambda corpus: ["encoder.family=opensmile", "encoder.feature_set=compare"]}
METRICS = ("binary_f1", "binary_auroc", "fine_weighted_f1")


def classic_references(corpus: str) -> Dict[str, Dict[str, float]]:
    """shared/realspeech/reference.py's figures for one corpus, computed now with its own code (imported)."""
    import csv

    spec = importlib.util.spec_from_file_location("realspeech_reference", REALSPEECH / "reference.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    with open(REALSPEECH / f"{corpus}.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    X = np.load(REALSPEECH / f"{corpus}.egemaps.npy")
    calls = np.array([r["call_id"] for r in rows])
    groups = np.array([r["caller_id"] for r in rows])
    yb = np.array([int(r["negative"]) for r in rows])
    yf = np.array([r["labels"] for r in rows])
    out = {}
    for arm, feats, smoothing in [("isolated", X, False), ("call_norm", ref.call_norm(X, calls), False),
                                  ("smooth", X, True)]:
        b, a, f = ref.scores(feats, yb, yf, groups, calls, smoothing)
        out[f"LR {arm}"] = {"binary_f1": b, "binary_auroc": a, "fine_weighted_f1": f}
    return out


def run_one(corpus: str, path: str, seed: int, out: Path, extra: Sequence[str], quiet: bool) -> Dict[str, Dict]:
    """One `ctxemo ablate` run; returns {arm: pooled out-of-fold metrics}."""
    from ctxemo.cli import (
        main,  # imported here: `--help` and the reference figures need no torch
    )

    run_dir = out / corpus / path / f"seed{seed}"
    argv = ["ablate", str(CONFIG), "--out", str(run_dir), f"data.manifest={REALSPEECH / f'{corpus}.csv'}",
            f"seed={seed}", f"out_dir={out}", *PATHS[path](corpus), *extra]
    rc = main(argv + (["--quiet"] if quiet else []))
    if rc != 0:  # ctxemo printed why (a bad override names its key); finished arm-folds stay for a rerun
        sys.exit(f"[real_speech] ctxemo ablate failed (exit {rc}) for {corpus} / {path} / seed {seed}")
    return json.loads((run_dir / "summary.json").read_text())["pooled"]


def summarise(runs: List[Dict[str, Dict]]) -> Dict[str, Dict[str, List[float]]]:
    """{arm: {metric: [value per seed]}}, arms in the order of the first run."""
    arms: Dict[str, Dict[str, List[float]]] = {}
    for pooled in runs:
        for arm, metrics in pooled.items():
            for m in METRICS:
                arms.setdefault(arm, {k: [] for k in METRICS})[m].append(float(metrics[m]))
    return arms


def table(results: Dict, references: Dict) -> str:
    lines = ["| corpus | path | arm | binary F1 | AUROC | fine weighted F1 | seeds |", "|---|---|---|---|---|---|---|"]
    cell = lambda v: f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}" if len(v) > 1 else f"{100 * v[0]:.1f}"  # noqa: E731
    for corpus, by_path in results.items():
        for path, arms in by_path.items():
            for arm, metrics in arms.items():
                lines.append(f"| {corpus} | {path} | {arm} | " + " | ".join(cell(metrics[m]) for m in METRICS)
                             + f" | {len(metrics[METRICS[0]])} |")
        for arm, metrics in references.get(corpus, {}).items():
            lines.append(f"| {corpus} | features | {arm} (classic reference) | "
                         + " | ".join(f"{100 * metrics[m]:.1f}" for m in METRICS) + " | - |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=CORPORA)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "real_speech")
    parser.add_argument("--smoke", action="store_true", help="1 fold, 2 epochs, 2 inner folds: a quick check")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (reported with the table)")
    args = parser.parse_args(argv)
    if not REALSPEECH.is_dir():
        sys.exit(f"real-speech corpora not found at {REALSPEECH} (expected ../shared/realspeech beside the repo)")
    extra = list(args.overrides)
    if args.smoke:
        extra = ["cv.only_folds=[0]", "train.epochs=2", *extra]
    started = time.perf_counter()
    results: Dict[str, Dict] = {}
    for corpus in args.corpora:
        for path in args.paths:
            runs = []
            for seed in args.seeds:
                print(f"[real_speech] {corpus} / {path} / seed {seed}", flush=True)
                runs.append(run_one(corpus, path, seed, args.out, extra, args.quiet))
            results.setdefault(corpus, {})[path] = summarise(runs)
    references = {corpus: classic_references(corpus) for corpus in args.corpora}
    text = table(results, references)
    print(f"\n{text}\n\noverrides: {' '.join(extra) or '(none: the shipped defaults)'}; "
          f"{time.perf_counter() - started:.0f} s")
    from ctxemo.io import write_json

    report = {"results": results, "references": references, "overrides": extra, "seeds": args.seeds}
    write_json(args.out / "results.json", report)  # atomic: a killed run never leaves half a file
    return report


if __name__ == "__main__":
    main()
