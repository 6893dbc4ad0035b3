"""The demo's whole path on a tiny corpus: synth -> embed -> both arms on the same folds -> table."""
import json

from ctxemo.cli import main


def test_demo_writes_summary_for_both_arms(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--calls", "12", "--quiet",
               "cv.folds=2", "train.epochs=2", "context.d_model=16", "context.depth=1", "context.heads=2"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == "isolated" and set(summary["arms"]) == {"isolated", "contextual", "linear_probe", "prior"}
    for arm in summary["arms"].values():
        for metric in ("binary_f1", "fine_weighted_f1", "fine_macro_f1"):
            assert len(arm[metric]["folds"]) == 2 and "mean" in arm[metric] and "std" in arm[metric]
    assert "binary_f1" in summary["paired"]["contextual"]
    # both arms were scored on the same folds
    folds = json.loads((out / "folds.json").read_text())
    assert len(folds["folds"]) == 2
    printed = capsys.readouterr().out
    assert "isolated" in printed and "contextual" in printed and "p=" in printed
    assert (out / "report.html").is_file() and f"report: {out / 'report.html'}" in printed
    run = json.loads((out / "run.json").read_text())
    assert {"argv", "git", "seed", "versions"} <= set(run)
    # a rerun reuses everything (corpus, embeddings, finished folds) and gives the same table
    assert main(["demo", "--out", str(out), "--calls", "12", "--quiet",
                 "cv.folds=2", "train.epochs=2", "context.d_model=16", "context.depth=1", "context.heads=2"]) == 0
    assert json.loads((out / "summary.json").read_text())["arms"] == summary["arms"]
