"""Per-call figures operators ask for (calls.csv): time to the first alert, share of caller speech time
above the threshold, number of changes between negative and not."""
import csv

import pytest

from ctxemo.errors import CtxemoError
from ctxemo.inference.outputs import CALL_COLUMNS, summarize_call


def _record(i, role, start, end, p, threshold=0.5):
    scored = role == "caller"
    return {"segment_index": i, "role": role, "start": start, "end": end, "duration": end - start,
            "p_negative": p if scored else None, "pred_negative": int(p >= threshold) if scored else None}


def test_first_alert_share_and_changes():
    records = [_record(0, "caller", 0.0, 4.0, 0.2), _record(1, "operator", 4.0, 6.0, 0),
               _record(2, "caller", 6.0, 8.0, 0.7), _record(3, "caller", 8.0, 9.0, 0.9),
               _record(4, "operator", 9.0, 12.0, 0), _record(5, "caller", 12.0, 15.0, 0.1),
               _record(6, "caller", 15.0, 17.0, 0.6)]
    out = summarize_call(records, call_id="c", source="x", duration_sec=17.0, n_skipped=0)
    assert out["first_alert_segment"] == 2 and out["time_to_first_alert_sec"] == 8.0  # the end of turn 2
    assert out["negative_changes"] == 3  # not -> neg (turn 2), neg -> not (turn 5), not -> neg (turn 6)
    assert out["negative_share"] == pytest.approx((2 + 1 + 2) / (4 + 2 + 1 + 3 + 2), abs=1e-4)  # speech time
    assert set(CALL_COLUMNS) <= set(out)


def test_a_calm_call_has_no_alert_and_no_changes():
    records = [_record(i, "caller", float(i), i + 1.0, 0.1) for i in range(4)]
    out = summarize_call(records, call_id="c", source="x", duration_sec=4.0, n_skipped=0)
    assert out["first_alert_segment"] is None and out["time_to_first_alert_sec"] is None
    assert out["negative_changes"] == 0 and out["negative_share"] == 0.0


def test_untimed_segments_report_the_alert_segment_without_a_time():
    records = [dict(_record(i, "caller", 0.0, 0.0, p), start=None, end=None, duration=None)
               for i, p in enumerate([0.1, 0.8])]
    out = summarize_call(records, call_id="c", source="x", duration_sec=None, n_skipped=0)
    assert out["first_alert_segment"] == 1 and out["time_to_first_alert_sec"] is None


def test_resuming_a_folder_written_with_other_columns_is_refused(tmp_path):
    from bundle_helpers import random_bundle, tiny_config

    from ctxemo.inference.bundle import load_bundle
    from ctxemo.inference.outputs import PredictionWriter

    bundle = load_bundle(random_bundle(tmp_path / "b", tiny_config(tmp_path, "data.features=x.npy"), d_in=4))
    out = tmp_path / "out"
    PredictionWriter(out, bundle=bundle, options={}, live=False, log=lambda m: None).close()
    with open(out / "calls.csv", "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerow(CALL_COLUMNS[:-4])  # an older layout
    with pytest.raises(CtxemoError, match="calls.csv: its columns differ"):
        PredictionWriter(out, bundle=bundle, options={}, live=False, log=lambda m: None)
