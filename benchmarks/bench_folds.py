"""How evenly caller-grouped folds share the labels: ctxemo's folds against scikit-learn's
StratifiedGroupKFold on the binary label and against the rule ctxemo used before issue 15.

Synthetic corpora (the issue's repro: 1-3 calls per caller, 12-20 turns) at several caller counts,
several corpus seeds each; per fold the share of caller segments that are negative / carry each fine
label. Spread = standard deviation (ddof 0) of that share across folds: `binary` for the negative
label, `fine` the mean over the fine labels present. Figures are means over the seeds.
Target (issue 15): ctxemo's binary spread within 1.5x of StratifiedGroupKFold's, fine spread no worse
than the previous rule's.

    python benchmarks/bench_folds.py                       # 14, 60, 105 callers, 8 seeds, 5 folds
    python benchmarks/bench_folds.py --calls 28 --seeds 2  # one small size
"""
from __future__ import annotations

import argparse
from typing import Optional

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ctxemo.data.splits import caller_folds, fold_prevalence, prevalence_spread
from ctxemo.data.synthetic import CorpusSpec, sample_corpus_params

# 28 / 120 / 210 calls give 14 / 60 / 105 callers at 1-3 calls per caller.
DEFAULT_CALLS = (28, 120, 210)


def corpus(n_calls: int, seed: int):
    """(caller id per caller segment, [segments, 1 + labels] negative then fine labels, label names)."""
    spec = CorpusSpec(n_calls=n_calls, seed=seed, calls_per_caller=(1, 3), min_turns=12, max_turns=20)
    params = sample_corpus_params(spec)
    caller = params.is_caller
    labels = np.column_stack([params.negative[caller], params.fine[caller]]).astype(int)
    return np.asarray(params.caller_id)[caller], labels, ["negative", *spec.labels]


def previous_rule(groups: np.ndarray, labels: np.ndarray, n_folds: int, seed: int):
    """The fold rule before issue 15 (kept here only to measure against): iterative stratification that
    places the callers of the rarest label still open first, one label column at a time, then balances
    sizes with the callers that carry no label."""
    caller_ids, caller_of_row = np.unique(groups, return_inverse=True)
    sizes = np.bincount(caller_of_row)
    counts = np.zeros((len(caller_ids), labels.shape[1]))
    np.add.at(counts, caller_of_row, labels)
    rng = np.random.default_rng(seed)
    label_demand = np.tile(counts.sum(0) / n_folds, (n_folds, 1))
    size_demand = np.full(n_folds, sizes.sum() / n_folds)
    fold_of = np.full(len(caller_ids), -1)
    tiebreak = rng.random(len(caller_ids))

    def place(caller: int, label: Optional[int]) -> None:
        primary = label_demand[:, label] if label is not None else size_demand
        fold = np.lexsort((rng.random(n_folds), -size_demand, -primary))[0]
        fold_of[caller] = fold
        label_demand[fold] -= counts[caller]
        size_demand[fold] -= sizes[caller]

    while True:
        open_callers = fold_of < 0
        remaining = counts[open_callers].sum(0)
        if not np.any(remaining > 0):
            break
        rarest = int(np.argmin(np.where(remaining > 0, remaining, np.inf)))
        carriers = np.flatnonzero(open_callers & (counts[:, rarest] > 0))
        carriers = carriers[np.lexsort((tiebreak[carriers], -sizes[carriers], -counts[carriers, rarest]))]
        for caller in carriers:
            place(caller, rarest)
    rest = np.flatnonzero(fold_of < 0)
    for caller in rest[np.lexsort((tiebreak[rest], -sizes[rest]))]:
        place(caller, None)
    return [np.flatnonzero(fold_of[caller_of_row] == f) for f in range(n_folds)]


def spreads(folds, labels, names):
    return prevalence_spread(fold_prevalence(folds, labels, names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=list(DEFAULT_CALLS))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    rules = {
        "ctxemo": lambda g, y, seed: caller_folds(g, y, n_folds=args.folds, seed=seed),
        "StratifiedGroupKFold": lambda g, y, seed: [
            test for _, test in StratifiedGroupKFold(args.folds, shuffle=True, random_state=seed).split(y, y[:, 0], g)],
        "previous rule": lambda g, y, seed: previous_rule(g, y, args.folds, seed),
    }
    print(f"{args.folds} folds, mean over {args.seeds} corpus seeds; spread = std across folds of the positive share")
    print("| callers | segments | rule | binary spread | fine spread | binary vs SGKF | fine vs previous |")
    print("|---|---|---|---|---|---|---|")
    for n_calls in args.calls:
        figures = {name: [] for name in rules}
        n_callers, n_rows = [], []
        for seed in range(args.seeds):
            groups, labels, names = corpus(n_calls, seed)
            n_callers.append(len(set(groups)))
            n_rows.append(len(groups))
            for name, rule in rules.items():
                s = spreads(rule(groups, labels, seed), labels, names)
                figures[name].append((s["binary_spread"], s["fine_spread"]))
        mean = {name: np.mean(v, axis=0) for name, v in figures.items()}
        for name in rules:
            b, f = mean[name]
            ratio_b = b / mean["StratifiedGroupKFold"][0]
            ratio_f = f / mean["previous rule"][1]
            print(f"| {np.mean(n_callers):.0f} | {np.mean(n_rows):.0f} | {name} | {b:.4f} | {f:.4f} | "
                  f"{ratio_b:.2f}x | {ratio_f:.2f}x |")


if __name__ == "__main__":
    main()
