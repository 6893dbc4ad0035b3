"""How much caller-grouping changes the figures: `cv.protocol=caller` (no caller on both sides) against
`cv.protocol=segment` (the seed study's segment-level split, callers on both sides), same config, same
seeds. Pooled out-of-fold predictions; binary F1, its seed-weighted form, AUROC, fine weighted F1 and the
seed study's multi-label score (mean over labels of each label's support-weighted binary F1).

    python benchmarks/protocol_gap.py --corpus realspeech --seeds 0 1 2        # EmoDB pseudo-calls, eGeMAPS
    python benchmarks/protocol_gap.py --corpus synthetic --seeds 0 1 2         # ctxemo synth, demo config
    python benchmarks/protocol_gap.py --corpus synthetic --protocols segment   # one protocol (run two at once)

Results: --out/<corpus>/<protocol>/seed<k>/ (cv run folders; finished folds are kept) and a table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

REPO = Path(__file__).resolve().parents[1]
REALSPEECH = REPO.parent / "shared" / "realspeech"
CORPORA = {
    # corpus: (config, overrides, arms)
    "realspeech": (REPO / "experiments" / "configs" / "real_speech.yaml",
                   [f"data.manifest={REALSPEECH / 'emodb-calls.csv'}",
                    f"data.features={REALSPEECH / 'emodb-calls.egemaps.npy'}"],
                   {"isolated": ["context.kind=identity"]}),
    "synthetic": (REPO / "ctxemo" / "configs" / "demo.yaml", [],
                  {"isolated": ["context.kind=identity"], "contextual": ["context.kind=transformer"]}),
}
METRICS = ("binary_f1", "binary_seed_weighted_f1", "binary_auroc", "fine_weighted_f1", "fine_seed_label_weighted_f1")


def pooled_scores(run_dir: Path) -> Dict[str, float]:
    from ctxemo.reports.run_folder import load_predictions

    p = load_predictions(run_dir)
    keep = p.fine_rows()
    gold, pred = p.gold_fine[keep], p.pred_fine[keep]
    present = np.flatnonzero(gold.sum(0) > 0)
    return {
        "binary_f1": f1_score(p.negative, p.pred_negative, zero_division=0),
        "binary_seed_weighted_f1": f1_score(p.negative, p.pred_negative, average="weighted", zero_division=0),
        "binary_auroc": roc_auc_score(p.negative, p.p_negative),
        "fine_weighted_f1": f1_score(gold, pred, average="weighted", zero_division=0),
        "fine_seed_label_weighted_f1": float(np.mean([
            f1_score(gold[:, k], pred[:, k], labels=[0, 1], average="weighted", zero_division=0) for k in present])),
    }


def synthetic_manifest(out: Path) -> Path:
    from ctxemo.cli import main

    manifest = out / "synthetic-corpus" / "manifest.csv"
    if not manifest.is_file() and main(["synth", "--out", str(manifest.parent), "--calls", "48"]) != 0:
        sys.exit("[protocol_gap] ctxemo synth failed")
    return manifest


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=list(CORPORA), default="realspeech")
    parser.add_argument("--protocols", nargs="+", default=["caller", "segment"], choices=["caller", "segment"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "protocol_gap")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    from ctxemo.cli import main as ctxemo

    config, overrides, arms = CORPORA[args.corpus]
    if args.corpus == "synthetic":
        overrides = [f"data.manifest={synthetic_manifest(args.out)}", f"out_dir={args.out / 'synthetic-cache'}"]
    started = time.perf_counter()
    rows: List[List[str]] = []
    for arm, arm_overrides in arms.items():
        for protocol in args.protocols:
            values = {m: [] for m in METRICS}
            for seed in args.seeds:
                run_dir = args.out / args.corpus / arm / protocol / f"seed{seed}"
                argv = ["cv", str(config), "--out", str(run_dir), "--quiet", *overrides, *arm_overrides,
                        f"cv.protocol={protocol}", f"seed={seed}", *args.overrides]
                print(f"[protocol_gap] {args.corpus} {arm} {protocol} seed {seed}", flush=True)
                if ctxemo(argv) != 0:
                    sys.exit(f"[protocol_gap] ctxemo cv failed for {args.corpus} / {arm} / {protocol} / seed {seed}")
                for m, v in pooled_scores(run_dir).items():
                    values[m].append(v)
            rows.append([args.corpus, arm, protocol, *(f"{100 * np.mean(values[m]):.1f} ± {100 * np.std(values[m]):.1f}"
                                                       for m in METRICS)])
    print("\n| corpus | arm | protocol | " + " | ".join(METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nseeds {args.seeds}; mean ± std over seeds, pooled out-of-fold, in %; "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
