"""The one rule for short segments, used by every path that embeds audio (embed/cv/ablate/train through
the cache, end-to-end training, `predict` on manifests and recordings, `LiveSession.push`):

    a segment shorter than `data.min_segment_sec` is zero-padded up to that length and scored like any
    other segment (its `duration` stays its real length, so the timing features see the truth).

Why pad rather than skip: the models are trained and cross-validated on padded short segments, so scoring
them the same way at prediction time is what makes `predict` on a manifest give the figures CV gave (when
`predict` skipped them, every later segment's context differed). What counts as a turn in a whole-call
recording is a separate, earlier decision of the segmenter (`SegmenterConfig.min_segment_sec`: shorter
speech bursts are not turns and go to skipped.csv), taken the same way offline and live.
"""
from __future__ import annotations


def min_segment_samples(min_segment_sec: float, sample_rate: int) -> int:
    """Samples a segment is zero-padded up to (at least 1).

    >>> min_segment_samples(0.1, 16000), min_segment_samples(0.0, 16000)
    (1600, 1)
    """
    return max(int(round(float(min_segment_sec) * int(sample_rate))), 1)
