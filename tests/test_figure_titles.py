"""No clipped titles: every figure the package draws (run folder plots, notebook figures, prediction
trajectories, report figures) is drawn with long names (many arms, long call ids) and each axes title and
suptitle must lie inside the figure's canvas. Also: prediction trajectories of a long call are in minutes,
with operator turns, a gold overlay and a legend."""
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ctxemo.evaluation.metrics import calibration_bins
from ctxemo.inference.outputs import trajectory_figure
from ctxemo.reports import explore_plots, plots, report_figures

ARMS = ["isolated", "transformer_causal_window16_operator_turns", "call_norm_with_time_features", "smooth_hmm",
        "linear_probe", "prior"]
LABELS = ["despair", "sadness", "anxiety", "anger", "fear", "shame", "guilt", "loneliness", "helplessness",
          "hopelessness", "irritability"]
LONG_CALL = "caller-2026-11-30-hotline-line-3-shift-night-call-000417-continued-after-transfer"


def title_overflows(fig: Figure):
    """(text, bbox) of every title or suptitle that reaches outside the figure's canvas."""
    canvas = FigureCanvasAgg(fig)  # the canvas savefig uses
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title]
    bad = []
    for text in texts:
        if not text.get_text() or not text.get_visible():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            bad.append((text.get_text(), box.bounds, (width, height)))
    return bad


def _records(n_turns=60, seconds=22 * 60):
    """A 22-minute call: alternating caller and operator turns; every 5th caller turn negative."""
    edges = np.linspace(0, seconds, n_turns + 1)
    out = []
    for i in range(n_turns):
        caller = i % 2 == 0
        p = float(0.5 + 0.45 * np.sin(i / 5)) if caller else None
        out.append({"segment_index": i, "start": float(edges[i]), "end": float(edges[i + 1] - 1),
                    "role": "caller" if caller else "operator", "p_negative": p,
                    "pred_negative": None if p is None else int(p >= 0.5)})
    return out


def _run_plots(tmp_path, monkeypatch):
    """The run-folder plots (which save to files), caught as figures."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    scores = {arm: {g: (0.5, 0.1) for g in ["negative", *LABELS]} for arm in ARMS}
    plots.per_label_f1(tmp_path / "a.png", scores, groups=["negative", *LABELS], support={g: 10 for g in LABELS})
    rng = np.random.default_rng(0)
    counts = {arm: rng.integers(0, 9, (len(LABELS), len(LABELS))) for arm in ARMS}
    plots.confusion_pairs(tmp_path / "b.png", counts, labels=LABELS)
    plots.per_call_scatter(tmp_path / "c.png", rng.random(30), rng.random(30), x_name=ARMS[0], y_name=ARMS[1],
                           negative_share=rng.random(30))
    return figures


def _explore_figures():
    rng = np.random.default_rng(1)
    c = len(LABELS)
    names = ["negative", *LABELS]
    trajectory = {"segment_index": np.arange(40), "p_negative": rng.random(40), "negative": rng.integers(0, 2, 40),
                  "pred_negative": rng.integers(0, 2, 40)}
    curve = (np.linspace(1, 0.2, 20), np.linspace(0, 1, 20), 0.6)
    return [
        explore_plots.label_frequencies(names, rng.integers(1, 500, c + 1), total=2000),
        explore_plots.cooccurrence_heatmap(rng.random((c, c)), LABELS, title="P(column label | row label) among "
                                           "caller segments carrying the row label, all calls of the corpus"),
        explore_plots.duration_histogram({"negative": rng.random(50) * 9, "calm": rng.random(50) * 5}),
        explore_plots.position_profile(np.linspace(0, 1, 6), rng.random((5, c + 1)), rng.integers(5, 50, 5), names),
        explore_plots.caller_profiles([f"caller-{k}" for k in range(12)], rng.random((12, c + 1)), [20] * 12, names),
        explore_plots.trajectories({LONG_CALL: {arm: trajectory for arm in ARMS}}),
        explore_plots.pr_curves({arm: {n: curve for n in names} for arm in ARMS}, {n: 0.2 for n in names}),
        explore_plots.binned_rates([("position in the call", np.linspace(0, 1, 6),
                                     {arm: (rng.random(5), rng.integers(1, 9, 5)) for arm in ARMS})]),
    ]


def _report_figures():
    rng = np.random.default_rng(2)
    curve = (np.linspace(0, 1, 20), np.linspace(0, 1, 20) ** 0.5, 0.7)
    y, p = rng.integers(0, 2, 300), rng.random(300)
    folds = [{"fold": k, "n_rows": 90, "n_callers": 4, "positives": {n: 9 + k for n in ["negative", *LABELS]},
              "positive_share": {n: 0.1 + 0.02 * k for n in ["negative", *LABELS]}} for k in range(5)]
    return [
        report_figures.confusion_matrices({arm: rng.integers(0, 50, (2, 2)) for arm in ARMS},
                                          ["not negative", "negative"], title="Binary confusion, all folds pooled"),
        report_figures.confusion_matrices({arm: rng.integers(0, 50, (len(LABELS), len(LABELS))) for arm in ARMS},
                                          LABELS, title="Fine labels: gold vs predicted, all folds pooled"),
        report_figures.roc_pr_curves({arm: curve for arm in ARMS}, {arm: curve for arm in ARMS}, prevalence=0.3),
        report_figures.reliability_diagram({arm: calibration_bins(y, p) for arm in ARMS}, {arm: 0.05 for arm in ARMS}),
        report_figures.fold_prevalence(folds),
    ]


def test_every_figure_title_fits(tmp_path, monkeypatch):
    records = _records()
    figures = _run_plots(tmp_path, monkeypatch) + _explore_figures()
    figures.append(trajectory_figure(records, threshold=0.5, title=LONG_CALL,
                                     gold={r["segment_index"]: i % 2 for i, r in enumerate(records)}))
    figures.append(trajectory_figure(records, threshold=0.5, title="c1"))
    figures += _report_figures()
    assert len(figures) == 18  # 3 run-folder plots, 8 notebook figures, 2 trajectories, 5 report figures
    clipped = [(k, bad) for k, fig in enumerate(figures) if (bad := title_overflows(fig))]
    assert not clipped, clipped


def test_long_call_trajectory_in_minutes_with_operators_gold_and_legend():
    records = _records()
    fig = trajectory_figure(records, threshold=0.4, title="c1", gold={0: 1, 2: 1})
    ax = fig.axes[0]
    assert ax.get_xlabel() == "time in call (min)"
    assert ax.get_xlim()[1] == pytest.approx(22, abs=2)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"operator turn", "gold: negative", "threshold 0.40"} <= set(legend)
    assert any(name.startswith("caller turn") for name in legend)
    short = trajectory_figure(_records(n_turns=10, seconds=100), threshold=0.5, title="c2")
    assert short.axes[0].get_xlabel() == "time in call (s)"
    assert "gold: negative" not in [t.get_text() for t in short.axes[0].get_legend().get_texts()]
    assert "no gold labels" in short.axes[0].get_title()
