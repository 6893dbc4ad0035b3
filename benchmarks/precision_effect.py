"""What `encoder.precision=bfloat16` does to the embeddings of real speech and to what a probe learns from
them: the EmoDB pseudo-calls (../shared/realspeech) embedded by a base-size random-init encoder at float32 and
at bfloat16, per encoder seed.

Prints, per family and seed: the rows' cosine to their float32 twin (min / median), and a logistic-regression
probe's pooled out-of-fold binary AUROC and F1 (leave-one-caller-out, standardised features, balanced
classes, threshold 0.5) on each, with the paired difference; then mean +- std over the seeds. Random weights
make a weak encoder, so the probe's absolute level is not the point: whether bf16 moves it is.

    python benchmarks/precision_effect.py                        # wav2vec2, seeds 0 1 2
    python benchmarks/precision_effect.py --families wav2vec2 whisper --seeds 0
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import BASE_CONFIGS, _config  # noqa: E402  (the same base-size configs as the speed figures)

REALSPEECH = Path(__file__).resolve().parents[2] / "shared" / "realspeech"
PRECISIONS = ("float32", "bfloat16")


def probe_scores(feats: np.ndarray, negative: np.ndarray, callers: np.ndarray) -> Dict[str, float]:
    """Pooled out-of-fold binary AUROC and F1 of a logistic regression, one caller held out per fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.model_selection import LeaveOneGroupOut
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    p = np.empty(len(negative))
    for train, test in LeaveOneGroupOut().split(feats, negative, callers):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000))
        p[test] = model.fit(feats[train], negative[train]).predict_proba(feats[test])[:, 1]
    return {"auroc": float(roc_auc_score(negative, p)), "f1": float(f1_score(negative, p >= 0.5))}


def embed(family: str, precision: str, seed: int, rows: List, cache: Path) -> np.ndarray:
    from ctxemo.embedding.cache import embed_manifest

    cfg = _config(family, cache_layers="weighted", precision=precision)
    cfg.seed = seed
    return embed_manifest(cfg, rows, cache_dir=cache, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["wav2vec2"], choices=sorted(BASE_CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="encoder random-init seeds")
    parser.add_argument("--corpus", default="emodb-calls", choices=["emodb-calls", "emodb-isolated"])
    parser.add_argument("--cache", type=Path, default=None, help="embedding cache (default: a temporary folder)")
    args = parser.parse_args()
    manifest = REALSPEECH / f"{args.corpus}.csv"
    if not manifest.is_file():
        sys.exit(f"[precision_effect] {manifest} not found (expected ../shared/realspeech beside the repo)")
    import pandas as pd
    import torch

    torch.set_num_threads(2)
    table = pd.read_csv(manifest, dtype={"caller_id": str})
    rows = [(REALSPEECH / audio, None, None) for audio in table["audio"]]
    negative, callers = table["negative"].to_numpy(int), table["caller_id"].to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        for family in args.families:
            per_seed = []
            for seed in args.seeds:
                start = time.perf_counter()
                feats = {prec: embed(family, prec, seed, rows, cache) for prec in PRECISIONS}
                a, b = feats["float32"], feats["bfloat16"]
                cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
                scores = {prec: probe_scores(f, negative, callers) for prec, f in feats.items()}
                per_seed.append(scores)
                print(f"{family} seed {seed}: {len(rows)} rows, cosine bf16 vs fp32 min {cosine.min():.6f} median "
                      f"{np.median(cosine):.6f} | probe AUROC fp32 {scores['float32']['auroc']:.4f} bf16 "
                      f"{scores['bfloat16']['auroc']:.4f} | F1 fp32 {scores['float32']['f1']:.4f} bf16 "
                      f"{scores['bfloat16']['f1']:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
            for metric in ("auroc", "f1"):
                diffs = [s["bfloat16"][metric] - s["float32"][metric] for s in per_seed]
                fp32 = [s["float32"][metric] for s in per_seed]
                print(f"{family} {metric}: fp32 {np.mean(fp32):.4f} +- {np.std(fp32):.4f}, bf16 - fp32 "
                      f"{np.mean(diffs):+.4f} +- {np.std(diffs):.4f} over {len(per_seed)} seed(s)", flush=True)


if __name__ == "__main__":
    main()
