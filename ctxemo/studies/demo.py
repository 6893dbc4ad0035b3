"""`ctxemo demo`: synthesise a hotline corpus, then run isolated vs contextual on the same folds."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

from ctxemo.config import load_config
from ctxemo.reports.html_report import write_report
from ctxemo.runinfo import start_run
from ctxemo.studies.ablation import run_ablation

DEMO_CONFIG = Path(__file__).parents[1] / "configs" / "demo.yaml"
DEMO_CALLS = 60


def ensure_corpus(corpus_dir: Path, *, n_calls: int, seed: int, progress: bool = True, log=print) -> Path:
    """The synthetic corpus at `corpus_dir`, generated unless a complete one is already there."""
    from ctxemo.data.synthetic import generate_corpus

    manifest = corpus_dir / "manifest.csv"
    if manifest.is_file():
        log(f"[demo] reusing corpus {manifest}")
        return manifest
    log(f"[demo] synthesising {n_calls} calls into {corpus_dir}")
    return Path(generate_corpus(corpus_dir, n_calls=n_calls, seed=seed, progress=progress))


def run_demo(out_dir: str | Path = "runs/demo", *, n_calls: int = DEMO_CALLS, seed: int = 0,
             overrides: Sequence[str] = (), progress: bool = True, log=print) -> Dict:
    """Run the demo study; returns the ablation result (also written to out_dir/summary.json)."""
    out_dir = Path(out_dir)
    manifest = ensure_corpus(out_dir / "corpus", n_calls=n_calls, seed=seed, progress=progress, log=log)
    cfg = load_config([DEMO_CONFIG], [f"data.manifest={manifest}", f"out_dir={out_dir}", f"seed={seed}", *overrides])
    start_run(out_dir, cfg, command="demo")
    result = run_ablation(cfg, out_dir, progress=progress, log=log)
    log(f"[demo] results in {out_dir}/summary.json and summary.md")
    log(f"[demo] report: {write_report(out_dir)} (open it in a browser; it loads nothing from elsewhere)")
    return result
