"""Live scoring: push a call's segments as they end and get each one's prediction at once.

The context model must be causal: segment i is scored from the `context.window` segments ending at
it, exactly as `forward_windowed` scores it offline, so live and offline results agree. Only those
last `window` embeddings are kept, so the cost of a new segment does not grow with the call.
"""
from __future__ import annotations

import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from ctxemo.data.audio import resample
from ctxemo.data.datasets import time_features
from ctxemo.data.manifest import ROLES
from ctxemo.data.pcm import pcm_to_float
from ctxemo.data.telephone import BAND_MIN_SAMPLES
from ctxemo.errors import AudioError, ConfigError
from ctxemo.inference.bundle import Bundle, load_bundle
from ctxemo.inference.outputs import segment_record, summarize_call


def check_live_capable(bundle: Bundle) -> None:
    """Raise ConfigError unless the bundle's context model can score causally (segment by segment)."""
    ctx = bundle.cfg.context
    if ctx.kind != "identity" and not ctx.causal:
        raise ConfigError(
            f"{bundle.path}: live scoring needs a causal context model, but this bundle was trained with "
            f"context.causal=false (kind={ctx.kind}): each segment's score depends on later segments. "
            "Train a bundle with context.causal=true (and context.window=N to bound the cost per segment), "
            "or score whole recordings offline without --live")


def _load_any(folder: Path) -> Bundle:
    """A bundle folder, or an ONNX export of one (it holds export.json)."""
    from ctxemo.inference.onnx_bundle import EXPORT_FILE, load_onnx_bundle

    return load_onnx_bundle(folder) if (folder / EXPORT_FILE).is_file() else load_bundle(folder)


class LiveSession:
    """One call scored as it goes on.

    Example:
        >>> session = LiveSession("runs/demo-train/bundle")  # doctest: +SKIP
        >>> pred = session.push(wave, sample_rate=8000, role="caller", start_sec=3.2, end_sec=5.0)  # doctest: +SKIP
        >>> pred["p_negative"], pred["pred_negative"], pred["top_labels"]  # doctest: +SKIP

    Args:
        bundle: a loaded Bundle or its folder, or an ONNX export (`OnnxBundle` / a folder written by
            `ctxemo export`), which runs the same session on onnxruntime.
        call_id: written into every record.
    Raises:
        ConfigError: the bundle's context model is bidirectional.
    """

    def __init__(self, bundle: Union[Bundle, str, Path], *, call_id: str = "live"):
        self.bundle = bundle if isinstance(bundle, Bundle) else _load_any(Path(bundle))
        check_live_capable(self.bundle)
        cfg = self.bundle.cfg
        window = int(cfg.context.window)
        if cfg.context.kind in ("identity", "smooth"):
            window = 1  # isolated segments (smooth: the smoother keeps the call's history itself)
        elif window <= 0:
            warnings.warn(f"{self.bundle.path}: context.window=0, so live scoring keeps the whole call as context "
                          "and the cost per segment grows with the call; train with context.window=N to bound it",
                          stacklevel=2)
        self.window = window
        self.call_id = call_id
        self.records: List[Dict[str, Any]] = []
        self.reset()

    def reset(self) -> None:
        """Forget the call: the next push starts a new one."""
        self._tokens: deque = deque(maxlen=self.window if self.window > 0 else None)
        self._smoothing_state = None  # the smoother's filtered posteriors after the last caller segment
        self._positions = 0  # segments that entered the context so far (the next one's position)
        self._last_context_end: Optional[float] = None
        self._clock = 0.0  # end of the latest segment (where a segment without times is placed)
        self.records = []
        self.band_warning: Optional[str] = None  # set by the first caller turn long enough to measure
        self._band_checked = False

    # ------------------------------------------------------------------ pushing segments

    def push(self, segment_audio: np.ndarray, *, sample_rate: int, role: str = "caller",
             start_sec: Optional[float] = None, end_sec: Optional[float] = None) -> Dict[str, Any]:
        """Score one finished segment.

        Args:
            segment_audio: [t] mono samples of one speaker's turn: float in [-1, 1], or integer PCM
                (int16/int32/int8/uint8, scaled by its type's range; other types are refused). A turn
                shorter than data.min_segment_sec is zero-padded and scored (ctxemo.data.short_segments).
            sample_rate: its rate in Hz (resampled to the bundle's rate).
            role: "caller" (scored) or "operator" (context only, if the model was trained with operator turns).
            start_sec, end_sec: where the segment lies in the call; None places it right after the previous one.
        Returns:
            The segment's record (call_id, segment_index, start, end, duration, role, p_negative, negative,
            p_<label>..., top_labels, latency_ms); probabilities are None for operator turns.
        Raises:
            AudioError: not 1-D, empty, holding NaN/Inf samples, or of a sample type without a PCM scale.
        """
        began = time.perf_counter()
        wave = pcm_to_float(segment_audio, where=f"call {self.call_id}: push()")
        if wave.ndim != 1:
            raise AudioError(f"call {self.call_id}: push() takes mono audio [t], got shape {wave.shape}")
        if wave.size == 0:
            raise AudioError(f"call {self.call_id}: empty segment pushed")
        if not np.isfinite(wave).all():
            raise AudioError(f"call {self.call_id}: segment holds NaN or Inf samples")
        duration = len(wave) / float(sample_rate)
        # Once per call (a telephone line stays one), on the first caller segment long enough to measure.
        if role == "caller" and not self._band_checked and len(wave) >= BAND_MIN_SAMPLES:
            self._band_checked = True
            self.band_warning = self.bundle.check_band([wave], sample_rate=int(sample_rate), where=f"call {self.call_id}")
            if self.band_warning:
                warnings.warn(self.band_warning, stacklevel=2)
        wave = resample(wave, orig_sr=int(sample_rate), target_sr=self.bundle.sample_rate)
        embedding = None
        if self._enters_context(role):
            embedding = self.bundle.embed([wave])[0]
        return self._push(embedding, role=role, start_sec=start_sec, end_sec=end_sec, duration=duration,
                          began=began)

    def push_embedding(self, embedding: Optional[np.ndarray], *, role: str = "caller",
                       start_sec: Optional[float] = None, end_sec: Optional[float] = None,
                       duration_sec: Optional[float] = None) -> Dict[str, Any]:
        """As `push`, for a segment already embedded (float [d_in]); needs end_sec or duration_sec."""
        began = time.perf_counter()
        if duration_sec is None:
            if end_sec is None:
                raise ValueError("push_embedding needs end_sec or duration_sec")
            duration_sec = float(end_sec) - float(start_sec if start_sec is not None else self._clock)
        return self._push(embedding, role=role, start_sec=start_sec, end_sec=end_sec, duration=duration_sec,
                          began=began)

    def _enters_context(self, role: str) -> bool:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return role == "caller" or self.bundle.use_operator_turns

    @torch.no_grad()
    def _push(self, embedding, *, role: str, start_sec, end_sec, duration: float, began: float) -> Dict[str, Any]:
        start = float(start_sec) if start_sec is not None else self._clock
        end = float(end_sec) if end_sec is not None else start + duration
        self._clock = max(self._clock, end)
        c = self.bundle.taxonomy.num_labels
        p_negative, p_fine = float("nan"), np.full(c, np.nan)
        if self._enters_context(role):
            if embedding is None:
                raise ValueError("a segment that enters the context needs its embedding")
            # Timing exactly as offline: gap since the previous in-context segment, and duration.
            time_row = time_features(np.array([start]), np.array([end]), previous_end=self._last_context_end)[0]
            if not self.bundle.uses_time:
                time_row = 0.0 * time_row
            self._tokens.append((np.asarray(embedding, np.float32), role, self._positions, time_row))
            self._positions += 1
            self._last_context_end = end
            if role == "caller":
                p_negative, p_fine = self._score_last()
        record = segment_record(self.bundle, call_id=self.call_id, segment_index=len(self.records), start=start,
                                end=end, duration=duration, role=role, p_negative=p_negative, p_fine=p_fine)
        record["latency_ms"] = round(1000.0 * (time.perf_counter() - began), 3)
        self.records.append(record)
        return record

    def _score_last(self):
        """The model over the kept window; the last token's probabilities."""
        feats, roles, positions, times = zip(*self._tokens)
        p_negative, p_fine = self.bundle.score_window(np.stack(feats), roles=roles, positions=np.array(positions),
                                                      time_feats=np.stack(times).astype(np.float32))
        if self.bundle.smoother is None:
            return float(self.bundle.calibrated(p_negative)), p_fine
        # The smoothing route, causal: one forward step per caller segment gives its posterior exactly as
        # the offline forward-backward pass gives the last segment of a call.
        self._smoothing_state, p_negative, p_fine = self.bundle.smoother.filter_step(self._smoothing_state,
                                                                                     p_negative, p_fine)
        # Calibration after smoothing, as offline; the smoother's own state keeps the uncalibrated posterior.
        return float(self.bundle.calibrated(p_negative)), p_fine

    # ------------------------------------------------------------------ the call so far

    def summary(self, *, source: str = "live", n_skipped: int = 0) -> Dict[str, Any]:
        """Per-call figures over the segments pushed so far (see `summarize_call`)."""
        return summarize_call(self.records, call_id=self.call_id, source=source, duration_sec=self._clock,
                              n_skipped=n_skipped)

