"""The posterior-smoothing context route (`context.kind: smooth`): the isolated arm's probabilities of a
call's segments, smoothed along the call by a hidden Markov model whose persistence is learned.

Persistence is the second thing a call carries (docs/design.md): emotion drifts slowly, so a segment's
neighbours are evidence about it. The classic way averages neighbouring posteriors with fixed weights,
which helps where emotion persists and hurts badly where it does not. Here the labels form a Markov chain
along the caller's segments with transitions T = s I + (1 - s) 1 p^T: with probability s the label stays,
otherwise it is drawn afresh from p. The stay probability s is *learned* from the gold label sequences of
the training calls (the observed share of consecutive caller segments with the same label, corrected for
chance); p is the isolated model's mean predicted probability over its out-of-fold predictions of the
training callers, so the emission of a segment is its isolated probability over p (the model's own prior).
Forward-backward gives each segment's posterior given the whole call (forward only when causal: live
scoring). Where order carries nothing, s is ~0, T's rows are all p, and the posterior is the isolated
probability again: the route cannot cost what it cannot find.

Binary and multi-label fine labels are two-state chains each; single-label fine labels one chain over
the c labels. Legend: n = scored segments, c = states.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ctxemo.data.manifest import Manifest
from ctxemo.evaluation.scoring import SegmentScores
from ctxemo.taxonomy import Taxonomy

EPS = 1e-6  # probabilities are clipped to at least this before they become emissions


def call_sequences(scores: SegmentScores, manifest: Manifest) -> List[np.ndarray]:
    """Index arrays into `scores`, one per call, in segment order (the scored segments only)."""
    calls: Dict[str, List[int]] = {}
    for i, row in enumerate(scores.rows):
        calls.setdefault(manifest.call_id[row], []).append(i)
    return [np.array(sorted(m, key=lambda i: manifest.segment_index[scores.rows[i]]), dtype=np.int64)
            for m in calls.values()]


def stay_probability(labels: np.ndarray, sequences: List[np.ndarray]) -> float:
    """s of T = s I + (1 - s) 1 p^T from gold labels [n] (ints): the same-label rate r of consecutive
    segments is s + (1 - s) q with q = sum of squared label frequencies, so s = (r - q) / (1 - q), >= 0.

    >>> round(stay_probability(np.array([0, 0, 0, 1, 1, 1]), [np.arange(6)]), 6)  # 4 of 5 stay, q = 0.5
    0.6
    """
    pairs = [(labels[seq[:-1]], labels[seq[1:]]) for seq in sequences if len(seq) > 1]
    if not pairs:
        return 0.0
    same = sum(int((a == b).sum()) for a, b in pairs)
    rate = same / sum(len(a) for a, _ in pairs)
    seen = labels[np.concatenate(sequences)]
    freq = np.unique(seen, return_counts=True)[1] / len(seen)
    q = float((freq ** 2).sum())
    return float(max(0.0, (rate - q) / (1.0 - q))) if q < 1.0 else 0.0


def forward_step(alpha: Optional[np.ndarray], probs: np.ndarray, prior: np.ndarray, stay: float) -> np.ndarray:
    """The filtered posterior [c] of the next segment from the previous one's (None at the call's start)
    and the segment's isolated probabilities [c]. T = stay I + (1 - stay) 1 p^T, so alpha T needs no matrix."""
    emission = np.clip(probs, EPS, None) / prior
    carried = prior if alpha is None else stay * alpha + (1.0 - stay) * prior
    out = carried * emission
    return out / out.sum()


def forward_backward(probs: np.ndarray, prior: np.ndarray, stay: float, *, causal: bool) -> np.ndarray:
    """Posteriors [n, c] of one call's segments from isolated probabilities [n, c].

    >>> p = np.array([[0.9, 0.1], [0.4, 0.6], [0.9, 0.1]])
    >>> forward_backward(p, np.array([0.5, 0.5]), 0.0, causal=False).round(2).tolist() == p.tolist()
    True
    >>> int(forward_backward(p, np.array([0.5, 0.5]), 0.8, causal=False)[1].argmax())  # the middle one follows its call
    0
    """
    n, c = probs.shape
    alpha = np.empty((n, c))
    for t in range(n):
        alpha[t] = forward_step(alpha[t - 1] if t else None, probs[t], prior, stay)
    if causal:
        return alpha
    transition = stay * np.eye(c) + (1.0 - stay) * np.tile(prior, (c, 1))
    emission = np.clip(probs, EPS, None) / prior
    beta = np.ones((n, c))
    for t in range(n - 2, -1, -1):
        beta[t] = transition @ (emission[t + 1] * beta[t + 1])
        beta[t] /= beta[t].sum()
    post = alpha * beta
    return post / post.sum(1, keepdims=True)


@dataclass
class Chain:
    """One label chain: its learned stay probability and the isolated model's mean probabilities."""

    stay: float
    prior: List[float]


def _chain(probs: np.ndarray, labels: np.ndarray, sequences: List[np.ndarray]) -> Chain:
    """probs [n, c] and gold labels [n] of the segments that `sequences` index."""
    rows = np.concatenate(sequences) if sequences else np.arange(len(probs))
    prior = np.clip(probs[rows].mean(0), EPS, None) if len(rows) else np.full(probs.shape[1], 1.0)
    return Chain(stay=stay_probability(labels, sequences), prior=(prior / prior.sum()).tolist())


def _two_state(p: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - p, p], axis=1)


@dataclass
class PosteriorSmoother:
    """Learned chains; `apply` maps isolated SegmentScores to smoothed ones."""

    taxonomy: Taxonomy
    causal: bool
    binary: Chain = None
    fine: List[Chain] = field(default_factory=list)  # one chain (single-label) or one per label

    def fit(self, scores: SegmentScores, manifest: Manifest) -> "PosteriorSmoother":
        """Fit on out-of-fold isolated scores of the training callers (with their gold labels)."""
        seqs = call_sequences(scores, manifest)
        self.binary = _chain(_two_state(scores.p_negative), scores.negative.astype(int), seqs)
        if self.taxonomy.multilabel:
            self.fine = [_chain(_two_state(scores.p_fine[:, j]), scores.fine[:, j].astype(int), seqs)
                         for j in range(self.taxonomy.num_labels)]
        else:
            labelled = scores.fine.sum(1) > 0
            # Unlabelled segments (non-negative, with no fine label) break the chain's label sequence:
            # the stay rate is measured over labelled neighbours only.
            fine_seqs = [seq[labelled[seq]] for seq in seqs]
            fine_seqs = [seq for seq in fine_seqs if len(seq)]
            self.fine = [_chain(scores.p_fine, scores.fine.argmax(1), fine_seqs)]
        return self

    def smooth_call(self, p_negative: np.ndarray, p_fine: np.ndarray, *, causal: Optional[bool] = None):
        """(p_negative [n], p_fine [n, c]) of one call's scored segments in time order, smoothed. Bundles
        and live sessions call it per call (live: causal, so the last segment's value is final)."""
        causal = self.causal if causal is None else causal
        run = lambda p, chain: forward_backward(p, np.asarray(chain.prior), chain.stay, causal=causal)  # noqa: E731
        neg = run(_two_state(np.asarray(p_negative, float)), self.binary)[:, 1]
        p_fine = np.asarray(p_fine, float)
        if self.taxonomy.multilabel:
            fine = np.stack([run(_two_state(p_fine[:, j]), chain)[:, 1] for j, chain in enumerate(self.fine)], axis=1)
        else:
            fine = run(p_fine, self.fine[0])
        return neg, fine

    def apply(self, scores: SegmentScores, manifest: Manifest) -> SegmentScores:
        """Smoothed probabilities of the same segments."""
        p_negative, p_fine = scores.p_negative.copy(), scores.p_fine.copy()
        for seq in call_sequences(scores, manifest):
            p_negative[seq], p_fine[seq] = self.smooth_call(scores.p_negative[seq], scores.p_fine[seq])
        return SegmentScores(scores.rows, p_negative.astype(np.float32), p_fine.astype(np.float32),
                             scores.negative, scores.fine)

    def filter_step(self, state: Optional[list], p_negative: float, p_fine: np.ndarray):
        """Live scoring: (new state, p_negative, p_fine) of the call's next caller segment, from the state
        after the previous one (None at the start). Equals the causal `smooth_call` at that position."""
        state = state or [None, [None] * len(self.fine)]
        neg = forward_step(state[0], _two_state(np.array([p_negative], float))[0], np.asarray(self.binary.prior),
                           self.binary.stay)
        p_fine = np.asarray(p_fine, float)
        if self.taxonomy.multilabel:
            fine_states = [forward_step(a, _two_state(p_fine[[j]])[0], np.asarray(chain.prior), chain.stay)
                           for j, (a, chain) in enumerate(zip(state[1], self.fine))]
            fine = np.array([s[1] for s in fine_states])
        else:
            fine_states = [forward_step(state[1][0], p_fine, np.asarray(self.fine[0].prior), self.fine[0].stay)]
            fine = fine_states[0]
        return [neg, fine_states], float(neg[1]), fine

    @classmethod
    def from_state(cls, state: Dict[str, object], taxonomy: Taxonomy) -> "PosteriorSmoother":
        """The inverse of `state()` (bundles)."""
        return cls(taxonomy, causal=bool(state["causal"]), binary=Chain(**state["binary"]),
                   fine=[Chain(**c) for c in state["fine"]])

    def state(self) -> Dict[str, object]:
        """JSON-ready parameters (for run folders and bundles)."""
        return {"causal": self.causal, "binary": vars(self.binary), "fine": [vars(c) for c in self.fine]}
