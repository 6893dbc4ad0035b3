"""The real-speech benchmark's smoke run (benchmarks/real_speech.py --smoke): every arm and baseline through
`ctxemo ablate` on the real EmoDB pseudo-calls (one fold, two epochs), beside the classic references
computed in the same run. The full run and its figures: benchmarks/README.md "Real speech"."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REALSPEECH = REPO.parent / "shared" / "realspeech"

pytestmark = pytest.mark.skipif(not REALSPEECH.is_dir(), reason=f"real-speech corpora not found at {REALSPEECH}")


def _benchmark():
    spec = importlib.util.spec_from_file_location("real_speech", REPO / "benchmarks" / "real_speech.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_speech_smoke_runs_every_arm_beside_the_references(tmp_path, capsys):
    bench = _benchmark()
    report = bench.main(["--smoke", "--corpora", "emodb-calls", "--paths", "features", "--seeds", "0",
                         "--out", str(tmp_path), "--quiet"])
    arms = report["results"]["emodb-calls"]["features"]
    assert list(arms) == ["isolated", "call_norm", "contextual", "smooth", "linear_probe", "prior"]
    for arm, metrics in arms.items():
        assert all(np.isfinite(v[0]) and 0.0 <= v[0] <= 1.0 for v in metrics.values()), arm
    assert arms["linear_probe"]["binary_auroc"][0] > 0.6  # eGeMAPS carries emotion: the probe must find some
    refs = report["references"]["emodb-calls"]
    assert refs["LR isolated"]["binary_f1"] == pytest.approx(0.803, abs=0.002)  # reference.py's published figure
    out = capsys.readouterr().out
    assert "LR smooth (classic reference)" in out and "| emodb-calls | features | smooth |" in out
    assert json.loads((tmp_path / "results.json").read_text())["overrides"][:2] == ["cv.only_folds=[0]", "train.epochs=2"]
