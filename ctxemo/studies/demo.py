"""`ctxemo demo`: synthesise a hotline corpus, then run isolated vs contextual on the same folds."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

from ctxemo.config import load_config
from ctxemo.errors import ConfigError, CtxemoError
from ctxemo.io import read_json
from ctxemo.reports.html_report import write_report
from ctxemo.runinfo import KEPT_ON_OVERWRITE, RunFolder
from ctxemo.studies.ablation import run_ablation

DEMO_CONFIG = Path(__file__).parents[1] / "configs" / "demo.yaml"
DEMO_CALLS = 60


def corpus_settings(corpus_dir: Path) -> Dict | None:
    """{"calls", "seed"} of the synthetic corpus at `corpus_dir` (its corpus.json), None if there is none."""
    try:
        meta = read_json(corpus_dir / "corpus.json")
    except (OSError, ValueError):
        return None
    return {"calls": meta.get("spec", {}).get("n_calls"), "seed": meta.get("seed")}


def ensure_corpus(corpus_dir: Path, *, n_calls: int, seed: int, progress: bool = True, log=print) -> Path:
    """The synthetic corpus at `corpus_dir`, generated unless a complete one is already there."""
    from ctxemo.data.synthetic import generate_corpus

    manifest = corpus_dir / "manifest.csv"
    if manifest.is_file():
        log(f"[demo] reusing corpus {manifest}")
        return manifest
    log(f"[demo] synthesising {n_calls} calls into {corpus_dir}")
    return Path(generate_corpus(corpus_dir, n_calls=n_calls, seed=seed, progress=progress))


def _check_enough_callers(n_calls: int, folds: int) -> None:
    """Refuse, before anything is synthesised or cleared, a corpus with fewer callers than cv.folds (the
    caller-independent folds would refuse it only after the corpus had been written and embedded).
    The caller count depends on the number of calls only, not on the seed."""
    from itertools import count

    from ctxemo.data.synthetic import CorpusSpec, caller_count

    callers = caller_count(CorpusSpec(n_calls=n_calls))
    if callers < folds:
        enough = next(n for n in count(n_calls) if caller_count(CorpusSpec(n_calls=n)) >= folds)
        raise ConfigError(f"--calls {n_calls} gives {callers} callers, fewer than the {folds} caller-independent "
                          f"folds of cv.folds; pass --calls {enough} or more, or cv.folds={max(callers, 2)}")


def run_demo(out_dir: str | Path = "runs/demo", *, n_calls: int = DEMO_CALLS, seed: int = 0,
             overrides: Sequence[str] = (), progress: bool = True, overwrite: bool = False, log=print) -> Dict:
    """Run the demo study; returns the ablation result (also written to out_dir/summary.json).

    The same guard as the config-driven commands: a folder holding a demo of another config, corpus size or
    seed is refused unless `overwrite`, which starts it clean (the corpus is kept only if it is the one asked for).
    """
    out_dir = Path(out_dir)
    corpus_dir = out_dir / "corpus"
    cfg = load_config([DEMO_CONFIG], [f"data.manifest={corpus_dir / 'manifest.csv'}", f"out_dir={out_dir}",
                                      f"seed={seed}", *overrides])
    _check_enough_callers(n_calls, int(cfg.cv.folds))
    wanted, found = {"calls": n_calls, "seed": seed}, corpus_settings(corpus_dir)
    same_corpus = found is None or found == wanted
    if not same_corpus and not overwrite:
        raise CtxemoError(f"{out_dir} holds a demo on {found['calls']} calls (seed {found['seed']}), not the "
                          f"{n_calls} calls (seed {seed}) asked for; choose another --out, or pass --overwrite to "
                          f"start {out_dir} clean")
    folder = RunFolder(out_dir, cfg, overwrite=overwrite, log=log,
                       keep=KEPT_ON_OVERWRITE + (("corpus",) if same_corpus else ()))
    folder.clear()  # before the corpus is (re)generated inside the folder
    ensure_corpus(corpus_dir, n_calls=n_calls, seed=seed, progress=progress, log=log)
    result = run_ablation(cfg, out_dir, folder=folder, command="demo", progress=progress, log=log)
    log(f"[demo] results in {out_dir}/summary.json and summary.md")
    log(f"[demo] report: {write_report(out_dir)} (open it in a browser; it loads nothing from elsewhere)")
    return result
