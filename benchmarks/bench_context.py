"""Benchmark the context stage at the seed study's scale: 5-fold CV of isolated vs contextual on cached
embeddings, with wall time and peak memory, and how both grow with the corpus size.

Corpus (synthetic, written to a temporary folder as a precomputed-features manifest + `.npy`): at 1x,
105 callers, 20,630 caller segments, 1024-d features, 1-3 calls per caller of 70-200 segments each.
Planted signal as in docs/design.md: a per-caller baseline larger than the emotion cues, negative episodes
that persist along a call, and a weak direction per fine label.

Each size runs in a fresh process, so peak memory is that size's own: `resource.getrusage` maxrss of
the worker (the whole process: Python, torch, features, models), and the growth over the RSS the
worker had after its imports.

    python benchmarks/bench_context.py                     # 1x: the seed scale, both arms, 5 folds, serial then
                                                           # cv.workers = the cores, and the ratio of the two
    python benchmarks/bench_context.py train.epochs=3 train.patience=100 --scales 0.25 0.5 1 2 4  # growth
    python benchmarks/bench_context.py train.epochs=3 --scales 0.05 --folds 2   # a smoke run

With a fixed number of epochs (as in the growth line above) the time per epoch per segment is the
number to compare across sizes; with early stopping, the epochs run also vary with the data.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

SEED_CALLERS, SEED_SEGMENTS, SEED_DIM = 105, 20_630, 1024
CALL_LEN = (70, 200)  # caller segments per call
ROOT = Path(__file__).resolve().parent.parent
ARMS = {"isolated": ["context.kind=identity"], "contextual": ["context.kind=transformer"]}
# The seed taxonomy's labels (ctxemo.config.DEFAULT_LABELS) and a skewed label distribution.
LABEL_PROBS = np.array([0.05, 0.35, 0.05, 0.04, 0.1, 0.15, 0.05, 0.01, 0.03, 0.12, 0.05])


def call_lengths(n_callers: int, n_segments: int, rng: np.random.Generator) -> List[List[int]]:
    """Per caller, the lengths of their calls: 1-3 calls of 70-200 segments, summing to n_segments."""
    calls = [list(rng.integers(CALL_LEN[0], CALL_LEN[1] + 1, size=rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1])))
             for _ in range(n_callers)]
    flat = np.array([n for c in calls for n in c], dtype=float)
    flat = np.clip(np.round(flat * n_segments / flat.sum()), CALL_LEN[0], CALL_LEN[1]).astype(int)
    # Spread the rounding remainder one segment at a time over calls that still have room.
    while (gap := n_segments - flat.sum()) != 0:
        room = np.flatnonzero(flat < CALL_LEN[1]) if gap > 0 else np.flatnonzero(flat > CALL_LEN[0])
        pick = rng.choice(room, size=min(abs(gap), len(room)), replace=False)
        flat[pick] += np.sign(gap)
    out, i = [], 0
    for c in calls:
        out.append(flat[i:i + len(c)].tolist())
        i += len(c)
    return out


def make_corpus(folder: Path, *, scale: float, dim: int = SEED_DIM, seed: int = 0) -> Dict[str, Any]:
    """Write manifest.jsonl + feats.npy for `scale` x the seed corpus; returns its sizes."""
    from ctxemo.config import DEFAULT_LABELS

    rng = np.random.default_rng(seed)
    n_callers = max(2, round(SEED_CALLERS * scale))
    n_segments = round(SEED_SEGMENTS * scale)
    lengths = call_lengths(n_callers, n_segments, rng)
    neg_dir = rng.normal(0, 1, dim) / np.sqrt(dim)  # unit-ish directions in a 1024-d space
    label_dirs = rng.normal(0, 1, (len(DEFAULT_LABELS), dim)) / np.sqrt(dim)
    feats = np.empty((n_segments, dim), np.float32)
    lines, row = [], 0
    for caller, calls in enumerate(lengths):
        baseline = rng.normal(0, 1.5, dim)  # the caller's own voice: varies more than the cues
        for k, n in enumerate(calls):
            negative = np.zeros(n, bool)
            state = rng.random() < 0.4
            for i in range(n):  # emotion persists: a state flips rarely
                state = state ^ (rng.random() < 0.05)
                negative[i] = state
            label = rng.choice(len(DEFAULT_LABELS), p=LABEL_PROBS / LABEL_PROBS.sum())
            cue = negative[:, None] * (2.5 * neg_dir + 2.0 * label_dirs[label])
            feats[row:row + n] = baseline + cue + rng.normal(0, 1.0, (n, dim))
            t = np.cumsum(rng.uniform(1.0, 8.0, n))
            for i in range(n):
                lines.append(json.dumps({
                    "call_id": f"p{caller:04d}_c{k}", "segment_index": i, "caller_id": f"p{caller:04d}",
                    "role": "caller", "start": round(float(t[i]) - 0.8, 2), "end": round(float(t[i]), 2),
                    "labels": [DEFAULT_LABELS[label]] if negative[i] else []}))
            row += n
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.jsonl").write_text("\n".join(lines), encoding="utf-8")
    np.save(folder / "feats.npy", feats)
    return {"callers": n_callers, "calls": sum(len(c) for c in lengths), "segments": n_segments, "dim": dim}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(job: Dict[str, Any]) -> Dict[str, Any]:
    """One size in a fresh process: load the corpus, then each arm's CV on the same folds."""
    start = time.perf_counter()
    import torch

    torch.set_num_threads(job["threads"])
    from ctxemo.config import load_config
    from ctxemo.embedding.corpus import load_corpus
    from ctxemo.studies.cv import plan_cv, plan_workers, run_plans

    # One-time costs, paid once per command whatever the corpus size: the first optimizer pulls in
    # torch._dynamo (seconds). Timed apart so that the first arm is not charged for them.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    startup_s = time.perf_counter() - start
    rss_after_imports = _rss_mb()
    folder = Path(job["folder"])
    runs = folder / f"runs-w{job['workers']}"
    common = [f"data.manifest={folder / 'manifest.jsonl'}", f"data.features={folder / 'feats.npy'}",
              f"out_dir={runs}", "train.device=cpu", f"cv.folds={job['folds']}", f"cv.workers={job['workers']}",
              *job["overrides"]]
    cfg = load_config([job["config"]] if job["config"] else [], common)
    start = time.perf_counter()
    data = load_corpus(cfg, progress=False)
    out: Dict[str, Any] = {"startup_s": startup_s, "load_s": time.perf_counter() - start, "arms": {},
                           "workers": plan_workers(cfg)}
    # Both arms' folds in one pool, as `ctxemo ablate` runs them (cv.workers processes of one thread).
    plans = [plan_cv(load_config(overrides=overrides, base=cfg), runs / arm, data=data,
                     folds_path=runs / "folds.json", progress=False) for arm, overrides in ARMS.items()]
    start = time.perf_counter()
    summaries = run_plans(plans, workers=out["workers"], progress=False)  # cv.workers=0 resolved to the cores
    out["cv_s"] = time.perf_counter() - start
    for arm, summary in zip(ARMS, summaries):
        epochs = [json.loads((runs / arm / f"fold{k}" / "metrics.json").read_text())["epochs_run"]
                  for k in range(job["folds"])]
        out["arms"][arm] = {"epochs": epochs, "binary_f1": summary["binary_f1"]["mean"],
                            "binary_auroc": summary["binary_auroc"]["mean"],
                            "fine_macro_f1": summary["fine_macro_f1"]["mean"],
                            "folds": {k: v["folds"] for k, v in summary.items()}}
    # Parallel folds run in forked workers: their peak is the largest child's (joined when the pool closed).
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out.update(peak_rss_mb=_rss_mb(), rss_after_imports_mb=rss_after_imports, worker_peak_rss_mb=children_mb)
    return out


def _flat_epochs(epochs: List[Any]) -> List[int]:
    """Epochs run per fold, or per inner model of each fold with cross-fitting (cv.inner_folds)."""
    return [e for fold in epochs for e in (fold if isinstance(fold, list) else [fold])]


def run_size(scale: float, args) -> List[Dict[str, Any]]:
    """One corpus of `scale`, the same CV once per `--workers` count, each in a fresh process."""
    out = []
    with tempfile.TemporaryDirectory(prefix="bench_context_") as tmp:
        sizes = make_corpus(Path(tmp), scale=scale, dim=args.dim, seed=args.seed)
        for workers in args.workers:
            job = dict(folder=tmp, config=str(args.config) if args.config else None, folds=args.folds,
                       threads=args.threads, overrides=args.overrides, workers=workers)
            # Not a multiprocessing.Pool: its daemonic children may not fork the cv.workers processes.
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                out.append({"scale": scale, **sizes, **pool.submit(worker, job).result()})
    return out


def print_table(results: List[Dict[str, Any]]) -> None:
    """Wall times, epochs, and the cost of one epoch per 1000 segments (flat when time grows linearly)."""
    print(f"\n{'scale':>5} {'callers':>7} {'calls':>5} {'segments':>8} {'workers':>7} | {'startup s':>9} {'load s':>6} "
          f"{'CV s (both arms)':>16} {'total s':>7} | {'epochs':>6} {'ms/epoch/kseg':>13} | "
          f"{'peak RSS MB':>11} {'over imports':>12} {'worker peak':>11}")
    for r in results:
        total = r["startup_s"] + r["load_s"] + r["cv_s"]
        epochs = sum(sum(_flat_epochs(a["epochs"])) for a in r["arms"].values())
        per_epoch = 1e6 * r["cv_s"] / epochs / r["segments"]
        print(f"{r['scale']:>5g} {r['callers']:>7} {r['calls']:>5} {r['segments']:>8} {r['workers']:>7} | "
              f"{r['startup_s']:>9.1f} {r['load_s']:>6.1f} {r['cv_s']:>16.1f} {total:>7.1f} | {epochs:>6} "
              f"{per_epoch:>13.1f} | {r['peak_rss_mb']:>11.0f} {r['peak_rss_mb'] - r['rss_after_imports_mb']:>12.0f} "
              f"{r['worker_peak_rss_mb']:>11.0f}")
    print("\nepochs run per fold, and mean over folds (a check that both arms learn the planted signal):")
    for r in results:
        for arm, a in r["arms"].items():
            print(f"  {r['scale']:>5g}x workers {r['workers']} {arm:10s} epochs {sum(_flat_epochs(a['epochs']))}  "
                  f"binary F1 {a['binary_f1']:.3f}  AUROC {a['binary_auroc']:.3f}  fine macro F1 {a['fine_macro_f1']:.3f}")
    by_scale: Dict[float, List[Dict[str, Any]]] = {}
    for r in results:
        by_scale.setdefault(r["scale"], []).append(r)
    for scale, rows in by_scale.items():
        serial = next((r for r in rows if r["workers"] == 1), None)
        for r in rows:
            if serial is None or r is serial:
                continue
            # As JSON, so that a NaN metric (e.g. AUROC of a fold without positives) equals itself.
            same = all(json.dumps(r["arms"][arm]["folds"]) == json.dumps(serial["arms"][arm]["folds"])
                       for arm in r["arms"])
            print(f"  {scale:g}x: serial / {r['workers']} workers = {serial['cv_s']:.1f} s / {r['cv_s']:.1f} s = "
                  f"{serial['cv_s'] / r['cv_s']:.2f}x (CV time); per-fold metrics identical to serial: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides for both arms")
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0], help="corpus sizes, x the seed corpus")
    parser.add_argument("--config", type=Path, help="YAML config (default: the built-in defaults of ctxemo.config; "
                        "experiments/configs/base.yaml is the study config)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--dim", type=int, default=SEED_DIM)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads of the worker (ctxemo's fit trains on one thread on CPU whatever this "
                             "says; scoring and the rest use these)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE in the worker: idle OpenMP threads sleep instead of spinning "
                             "(on a shared machine, spinning threads starve the working ones)")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 0],
                        help="cv.workers of each run, side by side in this command (0 = one per core); the "
                             "serial/parallel ratio is printed when 1 is among them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every result (with per-fold metrics) here")
    args = parser.parse_args()
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when the spawned worker loads OpenMP
    load = os.getloadavg()[0]
    print(f"context-stage CV: {args.folds} folds x 2 arms (isolated, contextual), cv.workers {args.workers}, config {args.config or 'defaults'} "
          f"{' '.join(args.overrides)}; {args.threads} torch threads on {os.cpu_count()} CPUs, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} "
          f"({platform.processor() or platform.machine()}), load average {load:.1f} at start")
    results = []
    for scale in args.scales:
        for r in run_size(scale, args):
            results.append(r)
            print(f"  {scale:g}x, cv.workers={r['workers']} done: {r['segments']} segments, "
                  f"{r['startup_s'] + r['load_s'] + r['cv_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print_table(results)
    print(f"load average at end {os.getloadavg()[0]:.1f}. startup: imports + first optimizer (once per command); "
          f"ms/epoch/kseg: both arms' CV time / epochs run / thousand segments; peak RSS: getrusage maxrss of the "
          f"worker process, and its growth over the RSS after imports")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
