
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from omegaconf import OmegaConf

from ctxemo.evaluation.evaluate import HEADLINE, TRIVIAL
from ctxemo.evaluation.metrics import paired_test
from ctxemo.io import write_json, write_text
from ctxemo.reports import plots
from ctxemo.reports.run_folder import (
    BOOTSTRAP_HEADING,
    N_BOOT,
    POOLED_METRICS,
    TOP_PAIRS,
    Pooled,
    _read_config,
    _reference,
    align,
    arm_dirs,
    bootstrap_comparison,
    bootstrap_markdown,
    bootstrap_text,
    caller_groups,
    detect_kind,
    fold_dirs,
    fold_summary,
    load_predictions,
    pair_counts,
    pooled_metrics,
)
from ctxemo.reports.tables import (
    comparison_markdown,
    markdown_table,
    print_comparison,
    write_csv,
    write_summary_tables,
)


def write_comparison(run_dir: Path, summaries: Dict[str, Dict], *, reference: str, log=print,
                     metrics: Optional[List[str]] = None) -> Dict:
    """Paired tests vs `reference` on the per-fold values; writes summary.json, summary.csv, summary.md."""
    metrics = metrics or [m for m in HEADLINE if m in summaries[reference]]
    paired = {
        arm: {name: paired_test(summaries[reference][name]["folds"], summary[name]["folds"])
              for name in summaries[reference] if name in summary and not name.startswith(TRIVIAL)}
        for arm, summary in summaries.items() if arm != reference
    }
    result = {"reference": reference, "metrics": metrics, "arms": summaries, "paired": paired}
    write_json(run_dir / "summary.json", result)
    write_text(run_dir / "summary.md", comparison_markdown(summaries, paired, reference=reference, metrics=metrics))
    write_csv(run_dir / "summary.csv", ["arm", "metric", "mean", "std", "mean_diff_vs_ref", "p_ttest", "p_wilcoxon"],
              [[arm, name, s["mean"], s["std"],
                paired.get(arm, {}).get(name, {}).get("mean_diff", ""),
                paired.get(arm, {}).get(name, {}).get("p_ttest", ""),
                paired.get(arm, {}).get(name, {}).get("p_wilcoxon", "")]
               for arm, summary in summaries.items() for name, s in summary.items()])
    log(print_comparison(summaries, paired, reference=reference, metrics=metrics))
    return result


def finish_comparison(run_dir: Path, result: Dict, *, log: Callable[[str], None] = print, n_boot: int = N_BOOT,
                      seed: int = 0, make_plots: bool = True) -> Dict:
    """Complete an ablation's comparison (after ablation.write_comparison): the caller-level bootstrap goes
    into summary.json under "bootstrap", summary.md (a second table) and bootstrap.csv; then the plots.

    Args:
        result: write_comparison's return value ({"reference", "metrics", "arms", "paired"}).
    Returns:
        `result` with "bootstrap" added.
    """
    run_dir = Path(run_dir)
    arms = list(result["arms"])
    folds = _common_folds(run_dir, arms)
    predictions = {arm: load_predictions(run_dir / arm, folds=folds) for arm in arms}  # read once, used twice
    boot = bootstrap_comparison(run_dir, arms, reference=result["reference"], n_boot=n_boot, seed=seed, folds=folds,
                                pooled=predictions)
    pooled = {arm: pooled_metrics(p, caller_groups(p, run_dir / arm)[0], n_boot=n_boot, seed=seed)
              for arm, p in predictions.items() if p is not None}
    result = dict(result, bootstrap=boot, pooled=pooled)
    write_json(run_dir / "summary.json", result)
    if pooled:
        log(pooled_text(pooled))
    md_path = run_dir / "summary.md"
    previous = md_path.read_text(encoding="utf-8") if md_path.is_file() else ""
    previous = previous.split(BOOTSTRAP_HEADING)[0].rstrip("\n")
    pooled_md = "\n" + pooled_text(pooled) if pooled else ""
    write_text(md_path, (previous + "\n\n" if previous else "") + bootstrap_markdown(boot) + pooled_md)
    write_csv(run_dir / "bootstrap.csv",
              ["arm", "metric", "reference", "value_reference", "value_arm", "diff", "ci_low", "ci_high", "p",
               "p_sign_flip", "n_boot", "n_groups", "n_rows", "grouped_by"],
              [[arm, name, boot["reference"], t["metric_a"], t["metric_b"], t["diff"], t["ci_low"], t["ci_high"],
                t["p"], t["p_sign_flip"], t["n_boot"], t["n_groups"], t["n_rows"], boot["grouped_by"]]
               for arm, tests in boot["arms"].items() for name, t in tests.items()])
    if boot["arms"]:
        log(bootstrap_text(boot))
    if make_plots:
        for path in write_plots(run_dir, {arm: run_dir / arm for arm in arms}, result["arms"],
                                reference=result["reference"], folds=folds):
            log(f"wrote {path}")
    return result


def pooled_text(pooled: Dict[str, Dict[str, object]]) -> str:
    """The pooled out-of-fold table (per arm: binary F1, AUROC with its caller-bootstrap interval, fine
    weighted F1, in %); arms whose AUROC interval includes 0.5 are marked."""
    rows = []
    for arm, m in pooled.items():
        cells = [f"{100 * m[k]:.2f}" for k in POOLED_METRICS]
        low, high = m.get("binary_auroc_ci", (None, None))
        if low is not None:
            cells[POOLED_METRICS.index("binary_auroc")] += f" [{100 * low:.1f}, {100 * high:.1f}]"
        rows.append([arm + (" (AUROC interval includes 50: chance level)" if m.get("chance_level") else ""), *cells])
    return "pooled out-of-fold predictions (AUROC with 95% caller-bootstrap interval):\n" + markdown_table(
        ["arm", *POOLED_METRICS], rows)


def _common_folds(run_dir: Path, arms: Sequence[str]) -> List[int]:
    sets = [set(fold_dirs(Path(run_dir) / arm)) for arm in arms]
    return sorted(set.intersection(*sets)) if sets else []


def write_plots(run_dir: Path, arms: Dict[str, Path], summaries: Dict[str, Dict], *, reference: Optional[str],
                folds: Optional[Sequence[int]] = None) -> List[Path]:
    """Per-label F1 bars, confused-pair heatmaps (+ confused_pairs.md) and per-call scatters vs the reference."""
    plot_dir = Path(run_dir) / "plots"
    if not any(key.startswith("fine_") for summary in summaries.values() for key in summary):
        return []  # a binary-only corpus (no fine labels): no per-label or confusion plots to draw
    pooled = {arm: p for arm, folder in arms.items() if (p := load_predictions(folder, folds=folds)) is not None}
    labels = next(iter(pooled.values())).labels if pooled else plots.labels_from_summary(summaries)
    scores, support = plots.per_label_inputs(summaries, labels)
    written = [plots.per_label_f1(plot_dir / "per_label_f1.png", scores, groups=["negative", *labels], support=support)]
    if not pooled:
        return written
    counts = {arm: pair_counts(p) for arm, p in pooled.items()}
    written.append(plots.confusion_pairs(plot_dir / "confused_pairs.png", counts, labels=labels, top=TOP_PAIRS))
    gold_support = {arm: p.gold_fine[p.fine_rows()].sum(0) for arm, p in pooled.items()}
    written.append(write_text(Path(run_dir) / "confused_pairs.md",
                              plots.confused_pairs_markdown(counts, gold_support, labels=labels, top=TOP_PAIRS)))
    for arm, p in pooled.items():
        if reference not in pooled or arm == reference:
            continue
        ia, ib = align(pooled[reference], p)
        if ia.size:
            x, y, share = per_call_errors(pooled[reference].take(ia), p.take(ib))
            name = f"per_call_{plots.safe_name(reference)}_vs_{plots.safe_name(arm)}.png"
            written.append(plots.per_call_scatter(plot_dir / name, x, y, x_name=reference, y_name=arm,
                                                  negative_share=share))
    return written


def per_call_errors(ref: Pooled, arm: Pooled) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per call (aligned rows): mean |p_negative - gold| of ref, of arm, and the call's negative share."""
    calls, inverse = np.unique(ref.call_id.astype(str), return_inverse=True)
    count = np.bincount(inverse, minlength=len(calls))

    def mean(values):
        return np.bincount(inverse, weights=values, minlength=len(calls)) / count

    return (mean(np.abs(ref.p_negative - ref.negative)), mean(np.abs(arm.p_negative - arm.negative)),
            mean(ref.negative.astype(float)))


def regenerate(run_dir: Path, *, n_boot: int = N_BOOT) -> str:
    """Rebuild summary.json/.csv/.md, the bootstrap (ablations) and plots/ of a run folder from its fold files.

    Returns:
        The text to print: the table, the bootstrap and the files written.
    """
    run_dir = Path(run_dir)
    lines: List[str] = []
    if detect_kind(run_dir) == "cv":
        summary = fold_summary(run_dir)
        write_json(run_dir / "summary.json", summary)
        write_summary_tables(run_dir, summary, metrics=HEADLINE)
        cfg = _read_config(run_dir)
        name = str(OmegaConf.select(cfg, "name", default=run_dir.name)) if cfg is not None else run_dir.name
        headline_metrics = [m for m in HEADLINE if m in summary]
        lines.append(print_comparison({name: summary}, {}, reference=name, metrics=headline_metrics))
        written = [run_dir / f"summary.{ext}" for ext in ("json", "csv", "md")]
        written += write_plots(run_dir, {name: run_dir}, {name: summary}, reference=None)
        lines += [f"wrote {p}" for p in written]
        return "\n".join(lines)

    from ctxemo.reports.comparison import write_comparison

    arms = arm_dirs(run_dir)
    for arm, folder in arms.items():  # each arm folder is a cv folder: refresh its own tables too
        own = fold_summary(folder)
        write_json(folder / "summary.json", own)
        write_summary_tables(folder, own, metrics=HEADLINE)
    folds = _common_folds(run_dir, list(arms))
    if any(set(fold_dirs(f)) != set(folds) for f in arms.values()):
        lines.append(f"note: comparing on folds {folds}, the finished folds common to every arm")
    summaries = {arm: fold_summary(folder, folds) for arm, folder in arms.items()}
    reference = _reference(run_dir, list(arms))
    result = write_comparison(run_dir, summaries, reference=reference, log=lines.append)
    finish_comparison(run_dir, result, log=lines.append, n_boot=n_boot)
    lines += [f"wrote {run_dir / name}" for name in ("summary.json", "summary.csv", "summary.md", "bootstrap.csv")]
    return "\n".join(lines)
