"""A synthetic Mandarin-hotline-like corpus where context provably helps: real wav files + manifest.

Each caller has an acoustic baseline that differs between people more than emotions move it;
each call's emotion persists and drifts along the call. So one segment alone is ambiguous,
while the call's mean (the caller's baseline) and the neighbouring turns (persistence) inform it.
`sample_corpus_params` exposes the true generative parameters so this can be checked directly.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ctxemo import __version__
from ctxemo.config import DEFAULT_LABELS
from ctxemo.data.synthetic_voice import (  # noqa: F401  (write_call_recordings is part of this API)
    ChannelParams,
    VoiceParams,
    synthesize_segment,
    write_call_recordings,
    write_csv_atomic,
)
from ctxemo.io import write_json

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("call_id", "segment_index", "audio", "caller_id", "role", "duration_sec", "negative", "labels")

# The acoustic cues, in the order of `CorpusParams.acoustic` columns. The sampler works in
# standardised units ("z": 1 = the spread of caller baselines); `_to_physical` maps z to these.
ACOUSTIC_DIMS = ("log_f0", "pitch_var_st", "level_dbfs", "log_rate", "voicing_logit", "brightness")
_Z_CENTER = np.array([np.log(153.0), 2.0, -26.0, np.log(4.3), 1.6, 0.0])
_Z_SCALE = np.array([np.log(260.0 / 90.0) / np.sqrt(12.0), 0.6, 3.5, 0.2, 0.6, 1.0])

# Shift shared by every negative segment (z units): quieter, slower, lower and flatter, darker, breathier.
NEGATIVE_SHIFT = np.array([-0.35, -0.35, -0.45, -0.4, -0.3, -0.3])
# Label-specific shifts (z units) on top: each label moves a few cues. Arousal labels (anxiety,
# fear, resentment) partly undo the common shift, as in real speech.
LABEL_SHIFTS: Dict[str, Tuple[float, ...]] = {
    #               f0    f0var energy rate  voicing bright
    "despair":      (-0.2, -0.5, -0.6,  -0.2, -0.5,  -0.3),
    "sadness":      (-0.3, -0.3, -0.3,  -0.3,  0.0,  -0.3),
    "pain":         (0.0,   0.5,  0.0,  -0.2, -0.7,   0.4),
    "guilt":        (-0.2,  0.0, -0.5,  -0.4,  0.0,   0.0),
    "confusion":    (0.2,   0.6,  0.0,  -0.5,  0.0,   0.0),
    "helplessness": (0.0,  -0.2, -0.4,  -0.3, -0.4,   0.0),
    "resentment":   (0.1,   0.3,  0.7,   0.2,  0.0,   0.6),
    "fear":         (0.7,   0.3,  0.0,   0.5, -0.4,   0.2),
    "numbness":     (-0.1, -0.8, -0.3,  -0.3,  0.0,  -0.2),
    "anxiety":      (0.5,   0.3,  0.1,   0.6,  0.0,   0.1),
    "grievance":    (0.0,   0.5,  0.3,   0.0,  0.0,   0.3),
}
# How often each label leads an emotional episode: skewed like real annotations (sadness common, fear rare).
LABEL_WEIGHTS: Dict[str, float] = {
    "sadness": 0.36, "helplessness": 0.13, "anxiety": 0.12, "confusion": 0.10, "despair": 0.09,
    "grievance": 0.07, "pain": 0.06, "resentment": 0.05, "guilt": 0.04, "numbness": 0.025, "fear": 0.016,
}
# Labels that tend to co-occur (a secondary label is drawn with these pairs boosted).
_AFFINITY = [("sadness", "despair"), ("sadness", "helplessness"), ("sadness", "pain"), ("sadness", "guilt"),
             ("anxiety", "fear"), ("anxiety", "confusion"), ("helplessness", "confusion"),
             ("resentment", "grievance"), ("numbness", "despair"), ("pain", "despair")]


@dataclass(frozen=True)
class CorpusSpec:
    """Everything that determines a corpus (with `sample_rate`, written to corpus.json).

    The defaults are tuned on the true parameters (caller-grouped logistic regression, see
    tests/test_synthetic.py): a caller turn alone gives binary F1 ~0.61, relative to its call's
    mean ~0.70, plus its neighbours ~0.73. Calls are short (~10 caller turns), so callers are kept
    similar in overall distress (`distress_kappa`) and most calls drift (`drift_range`): otherwise
    many calls would be wholly negative or wholly calm, and the call mean would absorb the
    emotional state instead of measuring the caller's baseline.
    """

    n_calls: int = 48
    seed: int = 0
    calls_per_caller: Union[int, Tuple[int, int]] = (1, 3)  # an int means exactly that many
    min_turns: int = 12
    max_turns: int = 30
    caller_turn_sec: Tuple[float, float] = (0.8, 3.0)  # log-uniform range of caller turn durations
    operator_turn_sec: Tuple[float, float] = (0.8, 2.4)
    labels: Tuple[str, ...] = tuple(DEFAULT_LABELS)
    n_operators: int = 4
    negative_share: float = 0.42  # mean of callers' stationary negative share (~0.5 of turns come out negative)
    distress_kappa: float = 20.0  # Beta concentration of callers' negative shares (high = similar callers)
    drift_range: Tuple[float, float] = (0.4, 1.0)  # change of negative share from call start to end (+ = calms)
    calm_down_prob: float = 0.75  # share of calls whose drift calms the caller (the rest escalate)
    stay_prob: float = 0.85  # P(state unchanged from one caller turn to the next) in a balanced call
    episode_change_prob: float = 0.08  # per negative turn: the dominant emotion set is redrawn
    second_label_prob: float = 0.45  # an emotional episode carries a second label
    emotion_strength: float = 0.65  # multiplies every emotion shift (NEGATIVE_SHIFT, LABEL_SHIFTS)
    segment_noise: float = 0.33  # per-turn spread of the cues around the speaker's state (z units)
    call_offset: float = 0.25  # per-call shift of a caller's baseline: line, mood of the day (z units)
    operator_reflect: float = 0.15  # operators soften and slow down after a negative caller turn (z units)
    ensure_all_labels: bool = True  # a small corpus still shows every label at least once

    def __post_init__(self) -> None:
        # Lists arrive from YAML/CLI; store tuples so specs compare, hash and serialise the same.
        cpc = self.calls_per_caller
        cpc = (int(cpc), int(cpc)) if isinstance(cpc, (int, np.integer)) else tuple(int(v) for v in cpc)
        object.__setattr__(self, "calls_per_caller", cpc)
        object.__setattr__(self, "labels", tuple(self.labels))
        for name in ("caller_turn_sec", "operator_turn_sec", "drift_range"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.n_calls < 1 or self.seed < 0 or self.n_operators < 1:
            raise ValueError(f"need n_calls >= 1, seed >= 0, n_operators >= 1; got {self.n_calls}, {self.seed}, "
                             f"{self.n_operators}")
        if len(cpc) != 2 or not 1 <= cpc[0] <= cpc[1]:
            raise ValueError(f"calls_per_caller must be a positive int or (lo, hi) with 1 <= lo <= hi: {cpc}")
        if not 2 <= self.min_turns <= self.max_turns:
            raise ValueError(f"need 2 <= min_turns <= max_turns, got {self.min_turns}, {self.max_turns}")
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be a non-empty list of distinct names: {list(self.labels)}")
        if not 0.0 < self.negative_share < 1.0 or not 0.0 <= self.stay_prob <= 1.0:
            raise ValueError("negative_share must lie in (0, 1) and stay_prob in [0, 1]")


@dataclass
class CorpusParams:
    """The true generative parameters, one row per segment in manifest order."""

    spec: CorpusSpec
    call_id: List[str]
    caller_id: List[str]
    segment_index: np.ndarray  # int64 [n]
    role: List[str]  # "caller" | "operator"
    n_samples: np.ndarray  # int64 [n] at `sample_rate`
    sample_rate: int
    negative: np.ndarray  # int64 [n]
    fine: np.ndarray  # int64 [n, c] in `spec.labels` order
    acoustic: np.ndarray  # float64 [n, len(ACOUSTIC_DIMS)] physical cues the audio is made from
    baseline_z: np.ndarray  # float64 [n, 6] speaker baseline (+ call offset), z units
    emotion_z: np.ndarray  # float64 [n, 6] shift caused by the emotional state, z units
    voices: List[VoiceParams] = field(repr=False, default_factory=list)
    channels: List[ChannelParams] = field(repr=False, default_factory=list)  # caller's line or operator's headset

    @property
    def duration_sec(self) -> np.ndarray:
        return self.n_samples / float(self.sample_rate)

    @property
    def is_caller(self) -> np.ndarray:
        return np.array([r == "caller" for r in self.role], dtype=bool)

    def call_rows(self) -> List[np.ndarray]:
        """Row indices of each call (rows are grouped by call and ordered by segment_index)."""
        starts = [0] + [i for i in range(1, len(self.call_id)) if self.call_id[i] != self.call_id[i - 1]]
        return [np.arange(a, b) for a, b in zip(starts, starts[1:] + [len(self.call_id)])]

    def label_string(self, row: int) -> str:
        return ";".join(name for name, on in zip(self.spec.labels, self.fine[row]) if on)


def _label_tables(labels: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label lead weights [c], shift vectors [c, 6] and secondary-label affinity [c, c].

    Known names use the tables above; other taxonomies get Zipf-like weights in list order and
    a fixed pseudo-random sparse shift per name (crc32, so it never depends on Python's hash seed).
    """
    c = len(labels)
    weights = np.array([LABEL_WEIGHTS.get(name, 0.3 / (i + 1)) for i, name in enumerate(labels)])
    shifts = np.zeros((c, len(ACOUSTIC_DIMS)))
    for i, name in enumerate(labels):
        if name in LABEL_SHIFTS:
            shifts[i] = LABEL_SHIFTS[name]
        else:
            g = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
            dims = g.choice(len(ACOUSTIC_DIMS), size=3, replace=False)
            shifts[i, dims] = g.choice([-1.0, 1.0], size=3) * g.uniform(0.3, 0.7, size=3)
    affinity = np.ones((c, c))
    index = {name: i for i, name in enumerate(labels)}
    for a, b in _AFFINITY:
        if a in index and b in index:
            affinity[index[a], index[b]] = affinity[index[b], index[a]] = 4.0
    np.fill_diagonal(affinity, 0.0)
    return weights / weights.sum(), shifts, affinity


def caller_count(spec: CorpusSpec) -> int:
    """How many callers a corpus of `spec` has: fixed by n_calls and the mean calls per caller (known before
    anything is synthesised, so a study can refuse a corpus too small for its folds up front)."""
    lo, hi = spec.calls_per_caller
    return max(1, int(np.ceil(spec.n_calls / ((lo + hi) / 2.0))))


def _allocate_calls(spec: CorpusSpec, rng: np.random.Generator) -> np.ndarray:
    """Caller index of each call (caller_count callers)."""
    lo, hi = spec.calls_per_caller
    n_callers = caller_count(spec)
    counts = np.full(n_callers, lo)
    # Shrink lo if n_calls is too small to give every caller `lo` calls.
    while counts.sum() > spec.n_calls:
        counts[np.argmax(counts)] -= 1
    while counts.sum() < spec.n_calls:
        open_ = np.flatnonzero(counts < hi)
        counts[rng.choice(open_) if len(open_) else rng.integers(n_callers)] += 1
    counts = counts[counts > 0]
    return rng.permutation(np.repeat(np.arange(len(counts)), counts))


def _speaker_baseline(rng: np.random.Generator) -> Tuple[np.ndarray, float]:
    """A speaker's baseline in z units and vocal-tract scale. Pitch is log-uniform over 90-260 Hz."""
    z = rng.normal(0.0, 1.0, len(ACOUSTIC_DIMS))
    z[0] = (rng.uniform(np.log(90.0), np.log(260.0)) - _Z_CENTER[0]) / _Z_SCALE[0]
    # Higher voices tend to have shorter vocal tracts: couple formants loosely to pitch.
    formant_scale = float(np.clip(1.0 + 0.06 * z[0] + rng.normal(0.0, 0.05), 0.8, 1.25))
    return z, formant_scale


def _draw_channel(rng: np.random.Generator, *, headset: bool) -> ChannelParams:
    """A caller's phone line (narrow, coloured, noisy) or an operator's headset (wide, clean)."""
    if headset:
        return ChannelParams(low_hz=float(rng.uniform(60.0, 120.0)), high_hz=float(rng.uniform(6000.0, 7500.0)),
                             tilt=float(rng.uniform(-0.1, 0.2)), noise_dbfs=float(rng.uniform(-75.0, -65.0)))
    return ChannelParams(low_hz=float(rng.uniform(100.0, 320.0)), high_hz=float(rng.uniform(3200.0, 7000.0)),
                         tilt=float(rng.uniform(-0.4, 0.6)), noise_dbfs=float(rng.uniform(-70.0, -55.0)))


def _plant_missing_labels(calls: List[Tuple[List[str], np.ndarray]], rng: np.random.Generator) -> None:
    """Add each label that never occurs to one randomly chosen negative episode (in place).

    Rare labels (fear) can be absent from a small corpus by chance; a label with no example
    cannot be evaluated, so it is planted where a real annotator could plausibly have seen it.
    """
    counts = sum(fine.sum(0) for _, fine in calls)
    for label in np.flatnonzero(counts == 0):
        episodes = []  # (call, first turn, end turn) of each run of negative caller turns
        for ci, (_, fine) in enumerate(calls):
            neg = np.concatenate([[False], fine.any(1), [False]])
            edges = np.flatnonzero(neg[1:] != neg[:-1])
            episodes += [(ci, int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
        if not episodes:
            return
        ci, a, b = episodes[int(rng.integers(len(episodes)))]
        calls[ci][1][a:min(b, a + 3), label] = 1


def _to_physical(z: np.ndarray) -> np.ndarray:
    return _Z_CENTER + _Z_SCALE * z


def _voice(acoustic: np.ndarray, formant_scale: float) -> VoiceParams:
    log_f0, pitch_var, level, log_rate, voicing_logit, brightness = acoustic
    return VoiceParams(
        f0_hz=float(np.clip(np.exp(log_f0), 60.0, 450.0)),
        pitch_var_st=float(np.clip(pitch_var, 0.2, 6.0)),
        level_dbfs=float(np.clip(level, -45.0, -12.0)),
        rate_syl=float(np.clip(np.exp(log_rate), 1.5, 9.0)),
        voicing=float(1.0 / (1.0 + np.exp(-voicing_logit))),
        brightness=float(brightness),
        formant_scale=formant_scale,
    )


def _caller_states(
    n: int, pi: float, spec: CorpusSpec, weights: np.ndarray, affinity: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """[n, c] fine labels of one call's caller turns from the latent emotion process.

    A two-state Markov chain (negative or not) whose stationary share drifts from pi + d/2 to
    pi - d/2 along the call; stay probability `spec.stay_prob` when balanced. While negative, a
    dominant set of 1-2 labels holds and is redrawn rarely; it is often resumed after a calm spell.
    """
    c = len(weights)
    drift = rng.uniform(*spec.drift_range) * (1.0 if rng.random() < spec.calm_down_prob else -1.0)
    move = 2.0 * (1.0 - spec.stay_prob)
    fine = np.zeros((n, c), dtype=np.int64)

    def draw_set() -> List[int]:
        first = int(rng.choice(c, p=weights))
        chosen = [first]
        if c > 1 and rng.random() < spec.second_label_prob:
            w = weights * affinity[first]
            chosen.append(int(rng.choice(c, p=w / w.sum())))
        return chosen

    target = np.clip(pi + drift * (0.5 - np.arange(n) / max(n - 1, 1)), 0.03, 0.97)
    negative = rng.random() < target[0]
    dominant: Optional[List[int]] = None
    for t in range(n):
        if t > 0:
            p_leave = move * (1.0 - target[t]) if negative else move * target[t]
            if rng.random() < p_leave:
                negative = not negative
                if negative and dominant is not None and rng.random() > 0.6:
                    dominant = None  # a new episode with new emotions
        if not negative:
            continue
        if dominant is None or rng.random() < spec.episode_change_prob:
            dominant = draw_set()
        current = list(dominant)
        if len(current) > 1 and rng.random() < 0.15:
            current = current[:1]
        if rng.random() < 0.05:
            current.append(int(rng.choice(c, p=weights)))
        fine[t, current] = 1
    return fine


def sample_corpus_params(spec: CorpusSpec = CorpusSpec(), *, sample_rate: int = 16000) -> CorpusParams:
    """Draw every latent and acoustic parameter of a corpus (no audio): the ground truth.

    `generate_corpus` synthesises exactly these parameters, so statistics computed here hold for
    the written corpus. Deterministic in `spec`.

    Args:
        spec: the corpus's size, taxonomy and generative knobs (see `CorpusSpec`).
        sample_rate: Hz; fixes each turn's length in samples.
    Returns:
        CorpusParams with one row per segment, grouped by call, in manifest order.
    """
    rng = np.random.default_rng([spec.seed, 0])
    weights, shifts, affinity = _label_tables(spec.labels)
    d = len(ACOUSTIC_DIMS)

    call_caller = _allocate_calls(spec, rng)
    n_callers = int(call_caller.max()) + 1
    callers = [_speaker_baseline(rng) for _ in range(n_callers)]
    kappa = spec.distress_kappa
    caller_pi = rng.beta(spec.negative_share * kappa, (1.0 - spec.negative_share) * kappa, n_callers)
    operators = [_speaker_baseline(rng) for _ in range(spec.n_operators)]
    operator_channels = [_draw_channel(rng, headset=True) for _ in range(spec.n_operators)]

    # Latent emotion of every call first, so missing labels can be planted before acoustics.
    calls = []
    for ci in range(spec.n_calls):
        n_turns = int(rng.integers(spec.min_turns, spec.max_turns + 1))
        caller_first = rng.random() < 0.4  # the operator usually answers first
        roles = ["caller" if (t % 2 == 0) == caller_first else "operator" for t in range(n_turns)]
        pi = float(np.clip(caller_pi[call_caller[ci]] + rng.normal(0.0, 0.08), 0.03, 0.97))
        fine_caller = _caller_states(roles.count("caller"), pi, spec, weights, affinity, rng)
        calls.append((roles, fine_caller))
    if spec.ensure_all_labels:
        _plant_missing_labels(calls, rng)

    rows: Dict[str, list] = {k: [] for k in ("call_id", "caller_id", "segment_index", "role", "n_samples",
                                            "fine", "acoustic", "baseline_z", "emotion_z", "voices", "channels")}
    for ci, (roles, fine_caller) in enumerate(calls):
        call_id = f"call{ci:04d}"
        caller_z, caller_formants = callers[call_caller[ci]]
        call_z = caller_z + rng.normal(0.0, spec.call_offset, d)
        op = int(rng.integers(spec.n_operators))
        line = _draw_channel(rng, headset=False)
        k = 0
        last_caller_negative = False
        for t, role in enumerate(roles):
            if role == "caller":
                labels = fine_caller[k]
                k += 1
                emotion = np.zeros(d)
                if labels.any():
                    emotion = spec.emotion_strength * (
                        NEGATIVE_SHIFT + shifts[labels.astype(bool)].sum(0) / np.sqrt(labels.sum()))
                base, formants, noise = call_z, caller_formants, spec.segment_noise
                last_caller_negative = bool(labels.any())
                lo, hi = spec.caller_turn_sec
                channel = line
            else:
                labels = np.zeros(len(spec.labels), dtype=np.int64)
                emotion = np.zeros(d)
                if last_caller_negative:  # softer, slower, flatter: context an operator turn carries
                    emotion = spec.operator_reflect * np.array([0.0, -0.5, -1.0, -1.0, 0.0, -0.3])
                (base, formants), noise = operators[op], spec.segment_noise
                lo, hi = spec.operator_turn_sec
                channel = operator_channels[op]
            z = base + emotion + rng.normal(0.0, noise, d)
            acoustic = _to_physical(z)
            seconds = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            rows["call_id"].append(call_id)
            rows["caller_id"].append(f"caller{call_caller[ci]:03d}")
            rows["segment_index"].append(t)
            rows["role"].append(role)
            rows["n_samples"].append(int(round(seconds * sample_rate)))
            rows["fine"].append(labels)
            rows["acoustic"].append(acoustic)
            rows["baseline_z"].append(base)
            rows["emotion_z"].append(emotion)
            rows["voices"].append(_voice(acoustic, formants))
            rows["channels"].append(channel)
    fine = np.asarray(rows["fine"], dtype=np.int64)
    return CorpusParams(
        spec=spec, call_id=rows["call_id"], caller_id=rows["caller_id"],
        segment_index=np.asarray(rows["segment_index"], dtype=np.int64), role=rows["role"],
        n_samples=np.asarray(rows["n_samples"], dtype=np.int64), sample_rate=sample_rate,
        negative=fine.any(axis=1).astype(np.int64), fine=fine,
        acoustic=np.asarray(rows["acoustic"]), baseline_z=np.asarray(rows["baseline_z"]),
        emotion_z=np.asarray(rows["emotion_z"]), voices=rows["voices"], channels=rows["channels"],
    )


def _segment_rng(seed: int, call_number: int, segment_index: int) -> np.random.Generator:
    """Each turn's audio has its own stream: it depends on its parameters only, not on the others."""
    return np.random.default_rng([seed, 1, call_number, segment_index])


def generate_corpus(
    out_dir: str | Path,
    *,
    n_calls: int = CorpusSpec.n_calls,
    seed: int = CorpusSpec.seed,
    calls_per_caller: Union[int, Tuple[int, int]] = CorpusSpec.calls_per_caller,
    min_turns: int = CorpusSpec.min_turns,
    max_turns: int = CorpusSpec.max_turns,
    labels: Sequence[str] = CorpusSpec.labels,
    n_operators: int = CorpusSpec.n_operators,
    sample_rate: int = 16000,
    spec: Optional[CorpusSpec] = None,
    progress: bool = False,
) -> Path:
    """Synthesise a corpus: one 16-bit wav per turn, `corpus.json`, and `manifest.csv` written last.

    Layout: `<out_dir>/audio/<call_id>/<segment_index>.wav`, manifest columns
    call_id, segment_index, audio, caller_id, role, duration_sec, negative, labels.
    A manifest left by an earlier run is removed first, so an interrupted run never looks complete.

    Args:
        out_dir: folder to write (created if needed).
        n_calls, seed, calls_per_caller, min_turns, max_turns, labels, n_operators: the most used
            `CorpusSpec` fields (leave them at their defaults when passing `spec`).
        sample_rate: Hz of the written audio.
        spec: every generative knob at once (see `CorpusSpec`).
        progress: show a tqdm bar over calls.
    Returns:
        Path of manifest.csv.

    Example:
        >>> import tempfile
        >>> manifest = generate_corpus(tempfile.mkdtemp(), n_calls=2, seed=0, progress=False)
        >>> manifest.name
        'manifest.csv'
    """
    fields = dict(n_calls=n_calls, seed=seed, calls_per_caller=calls_per_caller, min_turns=min_turns,
                  max_turns=max_turns, labels=tuple(labels), n_operators=n_operators)
    if spec is not None and CorpusSpec(**fields) != CorpusSpec():
        raise ValueError("generate_corpus: pass either `spec` or individual fields such as n_calls, not both")
    if spec is None:
        spec = CorpusSpec(**fields)
    params = sample_corpus_params(spec, sample_rate=sample_rate)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_NAME
    manifest_path.unlink(missing_ok=True)

    rows = []
    call_rows = params.call_rows()
    for number, call in enumerate(tqdm(call_rows, desc="synth calls", unit="call", disable=not progress)):
        call_id = params.call_id[call[0]]
        (out / "audio" / call_id).mkdir(parents=True, exist_ok=True)
        for r in call:
            seg = int(params.segment_index[r])
            wave = synthesize_segment(params.voices[r], params.channels[r], n_samples=int(params.n_samples[r]),
                                      sample_rate=sample_rate, rng=_segment_rng(spec.seed, number, seg))
            rel = f"audio/{call_id}/{seg}.wav"
            sf.write(out / rel, wave, sample_rate, subtype="PCM_16")
            rows.append({
                "call_id": call_id, "segment_index": seg, "audio": rel, "caller_id": params.caller_id[r],
                "role": params.role[r], "duration_sec": f"{params.n_samples[r] / sample_rate:.6f}",
                "negative": int(params.negative[r]), "labels": params.label_string(r),
            })

    caller = params.is_caller
    spec_dict = asdict(spec)
    spec_dict["labels"] = list(spec.labels)
    write_json(out / "corpus.json", {
        "generator": "ctxemo.data.synthetic.generate_corpus",
        "ctxemo_version": __version__,
        "seed": spec.seed,
        "sample_rate": sample_rate,
        "spec": spec_dict,
        "acoustic_dims": list(ACOUSTIC_DIMS),
        "summary": {
            "calls": len(call_rows),
            "callers": len(set(params.caller_id)),
            "segments": len(rows),
            "caller_segments": int(caller.sum()),
            "negative_share_of_caller_segments": round(float(params.negative[caller].mean()), 4),
            "label_counts": {name: int(n) for name, n in zip(spec.labels, params.fine.sum(0))},
            "total_audio_sec": round(float(params.n_samples.sum()) / sample_rate, 3),
        },
    })
    write_csv_atomic(manifest_path, MANIFEST_COLUMNS, rows)
    return manifest_path

