"""Temperature scaling of the alert probability (`train.calibrate: temperature`).

Why: an operator reads p_negative as a risk, but a model trained with a focal or class-balanced loss is
not calibrated: its probabilities are pushed towards 0 and 1 (or squeezed towards the middle). One
temperature T rescales the binary logit, p' = sigmoid(logit(p) / T), which keeps the ranking (AUROC, AP)
and, after re-tuning, the decisions, but makes the probabilities honest. T is fitted by log-likelihood on
the inner validation callers' out-of-fold predictions (the rows thresholds are tuned on), never on a test
fold; the fold's thresholds are then tuned on the calibrated probabilities. Only p_negative is rescaled:
it is the figure alerts are raised on; fine-label probabilities are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional

import numpy as np
from scipy.optimize import minimize_scalar

from ctxemo.evaluation.scoring import SegmentScores

EPS = 1e-6  # probabilities are clipped into [EPS, 1 - EPS] before the logit
LOG_T_BOUNDS = (-4.0, 4.0)  # T between ~0.02 and ~55: wider would only fit noise on a handful of callers


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class TemperatureScaler:
    """p' = sigmoid(logit(p) / temperature); temperature 1 is the identity."""

    temperature: float = 1.0

    @classmethod
    def fit(cls, y: np.ndarray, p: np.ndarray) -> "TemperatureScaler":
        """The temperature that maximises the log-likelihood of 0/1 outcomes y [n] under p [n]; 1 when y
        holds one class (nothing to calibrate against)."""
        y = np.asarray(y, dtype=float).reshape(-1)
        z = _logit(p).reshape(-1)
        if y.size == 0 or np.unique(y).size < 2:
            return cls(1.0)

        def nll(log_t: float) -> float:
            s = z / np.exp(log_t)
            # -log p(y | s) with the stable softplus form: log(1 + e^s) - y s
            return float(np.mean(np.logaddexp(0.0, s) - y * s))

        best = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded")
        return cls(float(np.exp(best.x)))

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, same shape as p (NaN stays NaN)."""
        p = np.asarray(p, dtype=float)
        if self.temperature == 1.0:
            return p
        return 1.0 / (1.0 + np.exp(-_logit(p) / self.temperature))

    def apply_scores(self, scores: SegmentScores) -> SegmentScores:
        return replace(scores, p_negative=self.apply(scores.p_negative))

    def state(self) -> Dict[str, object]:
        """What a fold folder (calibration.json) and a bundle (bundle.json "calibration") keep."""
        return {"kind": "temperature", "temperature": self.temperature}

    @classmethod
    def from_state(cls, state: Optional[Dict[str, object]]) -> Optional["TemperatureScaler"]:
        if not state:
            return None
        if state.get("kind") != "temperature":
            raise ValueError(f"unknown calibration kind {state.get('kind')!r}")
        return cls(float(state["temperature"]))


def fit_calibration(kind: str, oof: SegmentScores) -> Optional[TemperatureScaler]:
    """The calibrator `train.calibrate` asks for, fitted on inner-validation scores; None for `none`."""
    if kind == "none":
        return None
    if kind == "temperature":
        return TemperatureScaler.fit(oof.negative, oof.p_negative)
    raise ValueError(f"unknown train.calibrate {kind!r}")
