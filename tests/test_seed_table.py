"""`ctxemo report --table seed`: cv runs in the seed study's layout, one row per encoder, binary columns
from the binary-only run and fine columns from the fine-only run (else the joint run)."""
import pytest
from omegaconf import OmegaConf
from test_report import corpus, write_arm  # noqa: F401 (fixture: a hand-made corpus)

from ctxemo.cli import main
from ctxemo.errors import CtxemoError
from ctxemo.reports.run_folder import fold_summary
from ctxemo.reports.seed_table import seed_rows
from ctxemo.reports.tables import format_entry


def cv_run(folder, corpus, *, name, source, binary_weight=1.0, fine_weight=1.0, noise=0.3, seed=0,  # noqa: F811
           context="identity"):
    write_arm(folder, corpus, noise=noise, seed=seed)
    cfg = OmegaConf.load(folder / "config.yaml")
    cfg.name, cfg.encoder.family, cfg.encoder.source = name, "hubert", source
    cfg.loss.binary_weight, cfg.loss.fine_weight = binary_weight, fine_weight
    cfg.context.kind = context
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    return folder


def test_one_row_per_encoder_with_each_task_from_its_own_run(tmp_path, corpus, capsys):  # noqa: F811
    runs = [cv_run(tmp_path / "a", corpus, name="enc-a", source="org/a", noise=0.4, seed=1),
            cv_run(tmp_path / "a-bin", corpus, name="enc-a-binary", source="org/a", fine_weight=0.0, noise=0.1, seed=2),
            cv_run(tmp_path / "a-fine", corpus, name="enc-a-fine", source="org/a", binary_weight=0.0, noise=0.2,
                   seed=3),
            cv_run(tmp_path / "b", corpus, name="enc-b", source="org/b", noise=0.3, seed=4, context="transformer")]
    header, rows = seed_rows(runs)
    assert header[0] == "encoder" and header[-1] == "tasks" and len(rows) == 2
    by_name = {r[0]: dict(zip(header, r)) for r in rows}
    a, b = by_name["enc-a"], by_name["enc-b + transformer"]  # the context stage is named unless isolated
    binary, fine, joint_b = fold_summary(runs[1]), fold_summary(runs[2]), fold_summary(runs[3])
    f1 = binary["binary_f1"]
    assert a["binary: F1 (negative)"].startswith(format_entry(f1) + " (pooled ")
    fw = fine["fine_weighted_f1"]
    assert a["fine: weighted F1"].startswith(format_entry(fw))
    assert a["tasks"] == "binary from binary; fine from fine" and b["tasks"] == "binary from joint; fine from joint"
    assert b["fine: macro F1"] == format_entry(joint_b["fine_macro_f1"])
    out = tmp_path / "tables" / "seed"
    assert main(["report", "--table", "seed", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| enc-a |" in printed and (out.with_suffix(".csv")).is_file() and out.with_suffix(".md").is_file()


def test_two_runs_of_the_same_task_are_refused(tmp_path, corpus):  # noqa: F811
    runs = [cv_run(tmp_path / "x", corpus, name="enc-a", source="org/a"),
            cv_run(tmp_path / "y", corpus, name="enc-a-again", source="org/a")]
    with pytest.raises(CtxemoError, match="both the joint task"):
        seed_rows(runs)
