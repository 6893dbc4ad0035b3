"""What `data.telephone_share` buys on real speech: models trained with a share of telephone-band
training segments, scored on the test callers' audio as recorded (wideband) and through the telephone line.

Corpus: ../shared/realspeech/emodb-calls (EmoDB pseudo-calls, 10 speakers), leave-one-caller-out (the
project's caller-grouped folds), arms of experiments/configs/real_speech.yaml, audio through
`encoder.family=opensmile` (ComParE 2016 functionals by default, cached under --out/cache/). For each arm,
`data.telephone_share` and seed, every fold's model is trained once, the way every CV fold trains it
(`train_fold_model`: inner cross-fitting, thresholds tuned on the training callers' out-of-fold
predictions), and scores the held-out caller's audio four ways:

    wideband               the wavs as recorded (16 kHz)
    telephone              the same wavs through `simulate_telephone` (300-3400 Hz, 8 kHz, mu-law) in memory:
                           the features of `data.telephone_share=1`, which passes every row through the line
                           in `read_segment`, exactly as the telephone share of the training audio is read
    telephone, 8-kHz wav   the simulated line written as a G.711 call is stored (16-bit PCM at 8 kHz, under
                           --out/telephone-wavs) and read by the pipeline like any file (resampled to 16 kHz)
    telephone, 16-kHz wav  the same written as 16-bit PCM at 16 kHz

The two file conditions are there because openSMILE's functionals of band-limited audio depend on what
the empty band above 4 kHz holds (the simulation's own resampling in memory, the pipeline's resampler on
an 8-kHz file, the 16-bit noise floor of a 16-kHz file): on one EmoDB clip 47-67% of the ComParE features
differ by more than 1% between them, against 3% for half an LSB of noise on the wideband clip.

Per arm, share and condition it prints pooled out-of-fold binary F1, AUROC, fine weighted F1, the share of
segments flagged negative against the gold negative share, the false-alarm rate (flagged among the
non-negative segments) and the mean p_negative, mean ± std over seeds, beside the training prior (the
trivial predictor: audio ignored, so one row for both conditions).

    python benchmarks/bench_telephone.py                    # isolated arm, shares 0 0.5 1, seeds 0 1 2
    python benchmarks/bench_telephone.py --arms isolated contextual --shares 0 0.5
    python benchmarks/bench_telephone.py --smoke            # 4 callers, 1 fold, 2 epochs, eGeMAPS (the test)

Finished (arm, share, seed) runs are kept under --out/runs, so a killed run resumes. Results: --out/results.json.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REALSPEECH = REPO.parent / "shared" / "realspeech"
CONFIG = REPO / "experiments" / "configs" / "real_speech.yaml"
CORPUS = "emodb-calls"
# Test audio -> (the data.telephone_share that reads it, the rate of its telephone wav copies; None: no copies)
TEST_AUDIO = {"wideband": (0.0, None), "telephone": (1.0, None), "telephone, 8-kHz wav": (0.0, 8000),
              "telephone, 16-kHz wav": (0.0, 16000)}
SMOKE_CALLERS, SMOKE_CALLS_PER_CALLER = 4, 2
SMOKE_OVERRIDES = ["cv.only_folds=[0]", "train.epochs=2", "encoder.feature_set=egemaps"]


# ----------------------------------------------------------------------------- inputs


def manifest_rows(path: Path) -> List[Dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def audio_file(manifest: Path, row: Dict[str, str]) -> Path:
    """A manifest row's audio file (relative paths are relative to the manifest, as in ctxemo's contract)."""
    return (manifest.parent / row["audio"]).resolve()


def write_manifest(path: Path, rows: List[Dict[str, str]]) -> Path:
    from ctxemo.reports.tables import write_csv

    return write_csv(path, list(rows[0]), [[r[c] for c in rows[0]] for r in rows])


def smoke_manifest(source: Path, out: Path, *, callers: int = SMOKE_CALLERS,
                   calls_per_caller: int = SMOKE_CALLS_PER_CALLER) -> Path:
    """A small copy of `source`: the first calls of the first callers, audio paths made absolute (the copy
    lives elsewhere). Enough for one leave-one-caller-out fold with cross-fitting, in seconds."""
    rows = manifest_rows(source)
    kept_callers = sorted({r["caller_id"] for r in rows})[:callers]
    calls: Dict[str, List[str]] = {}
    for r in rows:
        if r["caller_id"] in kept_callers and r["call_id"] not in calls.setdefault(r["caller_id"], []):
            calls[r["caller_id"]].append(r["call_id"])
    kept_calls = {c for caller in kept_callers for c in calls[caller][:calls_per_caller]}
    picked = [{**r, "audio": str(audio_file(source, r))} for r in rows if r["call_id"] in kept_calls]
    return write_manifest(out / "smoke-manifest.csv", picked)


def telephone_copies(source: Path, folder: Path, *, rate: int, sample_rate: int) -> Path:
    """Every audio file of the manifest `source` through `simulate_telephone` (at the pipeline's
    `sample_rate`), written as 16-bit wavs at `rate` under `folder/<rate>/<speaker>/<file>`, and a copy of
    the manifest that names them (same rows, same order). Files already there are kept, so the feature
    cache, which knows a file by size and mtime, reuses their rows on a rerun."""
    import soundfile as sf

    from ctxemo.data.audio import read_audio, resample
    from ctxemo.data.telephone import simulate_telephone

    rows = manifest_rows(source)
    copies = []
    for r in rows:
        src = audio_file(source, r)
        dest = folder / str(rate) / src.parent.name / src.name
        if not dest.is_file():
            line = simulate_telephone(read_audio(src, target_sr=sample_rate), sample_rate)
            if rate != sample_rate:
                line = resample(line, orig_sr=sample_rate, target_sr=rate)
            dest.parent.mkdir(parents=True, exist_ok=True)
            # 16-bit PCM holds [-1, 1]: the simulation's small overshoot (resampling after the codec) is clipped,
            # as a real line's codec would.
            sf.write(dest, np.clip(line, -1.0, 1.0), rate, subtype="PCM_16")
        copies.append({**r, "audio": str(dest)})
    return write_manifest(folder / f"manifest-{rate}.csv", copies)


def base_config(manifest: Path, out: Path, overrides: Sequence[str]):
    from ctxemo.config import load_config

    return load_config([CONFIG], [f"data.manifest={manifest}", f"out_dir={out}", "encoder.family=opensmile",
                                  "encoder.feature_set=compare", *overrides])


def features_at_share(cfg, share: float, out: Path, *, progress: bool, manifest: Optional[Path] = None):
    """The corpus (cfg's manifest, or `manifest`) with every row's functionals as `data.telephone_share=share`
    embeds them (cached under out/cache/<manifest>)."""
    from ctxemo.config import load_config
    from ctxemo.embedding.corpus import load_corpus

    overrides = [f"data.telephone_share={share}", *([f"data.manifest={manifest}"] if manifest else [])]
    # One cache root per manifest: a cache folder keeps the rows of the last manifest it embedded, so the
    # wav copies (same fingerprint as the wideband corpus) would otherwise evict the corpus on every run.
    cache_root = out / "cache" / (manifest.stem if manifest else "corpus")
    return load_corpus(load_config(overrides=overrides, base=cfg), cache_root=cache_root, progress=progress)


def features_of_test_audio(cfg, corpora: Dict[float, object], out: Path, *, progress: bool) -> Dict[str, np.ndarray]:
    """{test audio: features [N, D] aligned to cfg's manifest rows} for every TEST_AUDIO entry."""
    feats = {}
    for name, (share, rate) in TEST_AUDIO.items():
        if rate is None:
            feats[name] = corpora[share].feats
            continue
        copy = telephone_copies(Path(cfg.data.manifest), out / "telephone-wavs", rate=rate,
                                sample_rate=int(cfg.data.sample_rate))
        data = features_at_share(cfg, share, out, progress=progress, manifest=copy)
        original = corpora[share].manifest
        if list(data.manifest.call_id) != list(original.call_id) or \
                list(data.manifest.segment_index) != list(original.segment_index):
            raise SystemExit(f"[bench_telephone] {copy}: rows are not those of {cfg.data.manifest}")
        feats[name] = data.feats
    return feats


# ----------------------------------------------------------------------------- one run


def arm_config(cfg, arm: str, *, share: float, seed: int):
    """`cfg` with the arm's overrides from real_speech.yaml (the same arms real_speech.py runs), the share, the seed."""
    from ctxemo.config import load_config

    arms = {name: list(items) for name, items in cfg.ablation.arms.items()}
    if arm not in arms:
        raise SystemExit(f"[bench_telephone] unknown arm {arm!r}; {CONFIG.name} has: {', '.join(arms)}")
    return load_config(overrides=[*arms[arm], f"data.telephone_share={share}", f"seed={seed}"], base=cfg)


def fold_scores(cfg, train_data, test_feats: Dict[str, np.ndarray], test_rows: np.ndarray, *, fold: int):
    """Train one fold's model on its training callers (`train_data`'s features) and score the test rows
    under every condition's features. Returns ({condition: SegmentScores}, binary threshold, prior scores)."""
    from ctxemo.data.datasets import build_call_items
    from ctxemo.evaluation.evaluate import decision_thresholds
    from ctxemo.evaluation.scoring import SegmentScores
    from ctxemo.taxonomy import Taxonomy
    from ctxemo.training.crossfit import train_fold_model

    manifest, taxonomy = train_data.manifest, Taxonomy.from_config(cfg.taxonomy)
    train_rows = np.setdiff1d(np.arange(len(manifest)), test_rows)
    with tempfile.TemporaryDirectory(prefix="bench-telephone-") as fold_dir:  # member checkpoints only
        model = train_fold_model(cfg, train_data, train_rows, taxonomy=taxonomy, fold=fold, fold_dir=Path(fold_dir),
                                 progress=False)
    threshold = decision_thresholds(model.oof, taxonomy, tune=cfg.cv.tune_thresholds).binary
    scores = {name: model.score(build_call_items(manifest, feats, rows=test_rows,
                                                 use_operator_turns=cfg.data.use_operator_turns))
              for name, feats in test_feats.items()}
    # The trivial predictor on the same segments: the training callers' shares, whatever the audio.
    train_callers = train_rows[manifest.is_caller[train_rows]]
    some = next(iter(scores.values()))
    prior = SegmentScores(some.rows, np.full(len(some.rows), float(manifest.negative[train_callers].mean())),
                          np.tile(manifest.fine[train_callers].mean(axis=0), (len(some.rows), 1)),
                          some.negative, some.fine)
    return scores, threshold, prior


def pool(parts: Sequence[tuple], manifest, *, multilabel: bool):
    """Pooled out-of-fold predictions from (SegmentScores, binary threshold) per fold, as
    ctxemo.reports.run_folder pools a CV's predictions.csv (fine decision: argmax for single-label)."""
    from ctxemo.reports.run_folder import Pooled
    from ctxemo.training.crossfit import concat_scores

    scores = concat_scores([s for s, _ in parts])
    column = lambda values: np.asarray(values, dtype=object)[scores.rows]  # noqa: E731 - manifest columns are lists
    decided = np.concatenate([(s.p_negative >= t).astype(int) for s, t in parts])
    pred_fine = ((scores.p_fine >= 0.5).astype(int) if multilabel
                 else np.eye(scores.p_fine.shape[1], dtype=int)[scores.p_fine.argmax(1)])
    return Pooled(labels=list(manifest.taxonomy.labels), multilabel=multilabel, call_id=column(manifest.call_id),
                  segment_index=np.asarray(manifest.segment_index)[scores.rows], caller_id=column(manifest.caller_id),
                  p_negative=scores.p_negative, pred_negative=decided, negative=scores.negative,
                  p_fine=scores.p_fine, pred_fine=pred_fine, gold_fine=scores.fine)


def condition_figures(pooled) -> Dict[str, float]:
    """Pooled figures (pooled_metrics, flagged share, false-alarm rate, mean p_negative) and the gold
    negative share they are read against."""
    from ctxemo.reports.run_folder import pooled_metrics

    figures = {k: float(v) for k, v in pooled_metrics(pooled).items() if k != "n"}
    calm = pooled.negative == 0
    figures.update(flagged_share=float(pooled.pred_negative.mean()), gold_negative_share=float(pooled.negative.mean()),
                   false_alarm_rate=float(pooled.pred_negative[calm].mean()) if calm.any() else float("nan"),
                   mean_p_negative=float(pooled.p_negative.mean()))
    return figures


def run_one(cfg, train_data, test_feats: Dict[str, np.ndarray], folds: List[np.ndarray], selected: Sequence[int],
            path: Path) -> Dict[str, Dict[str, float]]:
    """Every selected fold of one (arm, share, seed): {condition | "prior": figures}, written to `path`
    (read back on a rerun instead of training again, if it holds every condition)."""
    from ctxemo.io import read_json, write_json

    if path.is_file() and set(read_json(path)) == {*test_feats, "prior"}:
        return read_json(path)
    started = time.perf_counter()
    per_condition: Dict[str, list] = {name: [] for name in test_feats}
    priors = []
    for k in selected:
        scores, threshold, prior = fold_scores(cfg, train_data, test_feats, folds[k], fold=k)
        for name, s in scores.items():
            per_condition[name].append((s, threshold))
        priors.append((prior, 0.5))
    multilabel = bool(cfg.taxonomy.multilabel)
    result = {name: condition_figures(pool(parts, train_data.manifest, multilabel=multilabel))
              for name, parts in per_condition.items()}
    result["prior"] = condition_figures(pool(priors, train_data.manifest, multilabel=multilabel))
    write_json(path, result)  # atomic: a killed run never leaves half a file
    # Printed here, in the worker: a line per run as it finishes, serial or parallel.
    print(f"[bench_telephone] {path.stem} done in {time.perf_counter() - started:.0f} s", flush=True)
    return result


# ----------------------------------------------------------------------------- the table


def cell(values: Sequence[float]) -> str:
    """Percent, mean ± std over seeds (one seed: the value)."""
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def table(results: Dict[str, Dict[str, List[Dict[str, float]]]]) -> str:
    """{"<arm> | share <s>": {condition: [figures per seed]}} -> one markdown table, the prior row last."""
    header = ("| arm | telephone_share | test audio | binary F1 | AUROC | fine weighted F1 | flagged negative "
              "(gold) | false alarms | mean p_negative | seeds |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    prior = None
    for run, by_condition in results.items():
        arm, share = run.split(" | share ")
        for condition in TEST_AUDIO:
            runs = by_condition[condition]
            gold = runs[0]["gold_negative_share"]
            lines.append(f"| {arm} | {share} | {condition} | {cell([r['binary_f1'] for r in runs])} | "
                         f"{cell([r['binary_auroc'] for r in runs])} | {cell([r['fine_weighted_f1'] for r in runs])} | "
                         f"{cell([r['flagged_share'] for r in runs])} ({100 * gold:.1f}) | "
                         f"{cell([r['false_alarm_rate'] for r in runs])} | "
                         f"{cell([r['mean_p_negative'] for r in runs])} | {len(runs)} |")
        prior = by_condition["prior"][0]
    if prior is not None:
        lines.append(f"| training prior (trivial) | - | either | {cell([prior['binary_f1']])} | "
                     f"{cell([prior['binary_auroc']])} | {cell([prior['fine_weighted_f1']])} | "
                     f"{cell([prior['flagged_share']])} ({100 * prior['gold_negative_share']:.1f}) | "
                     f"{cell([prior['false_alarm_rate']])} | {cell([prior['mean_p_negative']])} | - |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=["isolated"],
                        help="arms of real_speech.yaml (isolated, contextual, ...)")
    parser.add_argument("--shares", nargs="+", type=float, default=[0.0, 0.5, 1.0], help="data.telephone_share values")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1, help="processes running (arm, share, seed) runs side by side")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_telephone")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_CALLERS} callers x {SMOKE_CALLS_PER_CALLER} "
                        "calls, 1 fold, 2 epochs, eGeMAPS: a quick check")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (reported with the table)")
    args = parser.parse_args(argv)
    if not REALSPEECH.is_dir():
        sys.exit(f"real-speech corpora not found at {REALSPEECH} (expected ../shared/realspeech beside the repo)")
    from ctxemo.data.splits import make_folds
    from ctxemo.studies.cv import selected_folds
    from ctxemo.training.workers import run_jobs

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = REALSPEECH / f"{CORPUS}.csv"
    extra = list(args.overrides)
    if args.smoke:
        manifest = smoke_manifest(manifest, args.out)
        extra = [*SMOKE_OVERRIDES, f"cv.folds={SMOKE_CALLERS}", *extra]
    cfg = base_config(manifest, args.out, extra)
    progress = not args.quiet
    # Every share's training features, and each test condition's: embedded once (cached).
    shares = sorted(set(args.shares) | {share for share, _ in TEST_AUDIO.values()})
    corpora = {s: features_at_share(cfg, s, args.out, progress=progress) for s in shares}
    test_feats = features_of_test_audio(cfg, corpora, args.out, progress=progress)
    plans = []
    for arm in args.arms:
        for share in args.shares:
            for seed in args.seeds:
                run_cfg = arm_config(cfg, arm, share=share, seed=seed)
                folds = make_folds(corpora[share].manifest, n_folds=int(run_cfg.cv.folds), seed=seed)
                selected = selected_folds(run_cfg, corpora[share], folds)  # raises before any training
                path = args.out / "runs" / f"{arm}-share{share:g}-seed{seed}.json"
                plans.append(((arm, share, seed), partial(run_one, run_cfg, corpora[share], test_feats, folds,
                                                          selected, path)))

    outcomes = run_jobs([job for _, job in plans], workers=args.workers)
    results: Dict[str, Dict[str, List[Dict[str, float]]]] = {}
    for ((arm, share, _), _job), outcome in zip(plans, outcomes, strict=True):
        by_condition = results.setdefault(f"{arm} | share {share:g}", {})
        for name, figures in outcome.items():
            by_condition.setdefault(name, []).append(figures)
    text = table(results)
    elapsed = time.perf_counter() - started
    print(f"\n{text}\n\nfeatures: opensmile {cfg.encoder.feature_set}; folds: {len(selected)} of {cfg.cv.folds} "
          f"(caller-grouped); overrides: {' '.join(extra) or '(none)'}; {elapsed:.0f} s")
    from ctxemo.io import write_json

    report = {"results": results, "feature_set": str(cfg.encoder.feature_set), "overrides": extra,
              "seeds": args.seeds, "shares": args.shares, "arms": args.arms, "seconds": elapsed}
    write_json(args.out / "results.json", report)
    return report


if __name__ == "__main__":
    main()
