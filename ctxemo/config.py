"""Experiment configuration: one dataclass schema, merged as schema <- YAML files <- CLI dotlist.

Defaults live here and only here. Unknown keys, wrong types and values outside a closed set of
choices fail loudly, naming the key and what would have been valid.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from ctxemo.errors import ConfigError

DEFAULT_LABELS = [
    "despair", "sadness", "pain", "guilt", "confusion", "helplessness",
    "resentment", "fear", "numbness", "anxiety", "grievance",
]


@dataclass
class TaxonomyConfig:
    labels: List[str] = field(default_factory=lambda: list(DEFAULT_LABELS))
    multilabel: bool = True  # True: sigmoid per label; False: one label per segment (softmax)
    # Labels that make a segment "negative". Empty means every label does.
    negative_labels: List[str] = field(default_factory=list)


@dataclass
class DataConfig:
    manifest: Optional[str] = None  # CSV or JSONL, see docs/design.md "The data contract"
    features: Optional[str] = None  # float32 .npy [N, D] aligned to manifest rows; skips the encoder
    sample_rate: int = 16000
    channel: int = -1  # -1 mixes channels down; k >= 0 picks channel k
    min_segment_sec: float = 0.1  # shorter segments are zero-padded up to this and scored, on every path (data/short_segments.py)
    use_operator_turns: bool = False  # feed operator turns to the context stage (never scored)
    # Share of segments embedded through a simulated telephone line (8 kHz, 300-3400 Hz, mu-law), a fixed
    # draw per row (data/telephone.py): one model for wideband and telephone calls. 0 = audio as recorded.
    telephone_share: float = 0.0


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=list)  # empty: the family's default


@dataclass
class EncoderConfig:
    # wav2vec2 | hubert | wavlm | data2vec-audio | whisper (HF backbones) | opensmile (classic functionals,
    # two-stage only; pip install ".[opensmile]")
    family: str = "wav2vec2"
    feature_set: str = "egemaps"  # opensmile only: egemaps (eGeMAPS v02, 88) | compare (ComParE 2016, 6373)
    source: Optional[str] = None  # hub id or local folder; None builds from `model_config` (random init)
    revision: Optional[str] = None
    offline: bool = True  # never contact a hub unless this is False and `source` is a hub id
    # HF config fields for a random-init model (e.g. hidden_size); ignored when `source` is set.
    model_config: Dict[str, Any] = field(default_factory=dict)
    layers: str = "weighted"  # weighted | last | an integer index into the hidden states
    pooling: str = "mean"  # mean | attentive_stats
    finetune: str = "frozen"  # frozen | lora | full (the CNN front-end stays frozen in all)
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    normalize_waveform: bool = True  # zero-mean unit-variance per segment (wav2vec2-style)
    whisper_pad_to_30s: bool = False  # True reproduces the seed study's padding
    max_chunk_sec: float = 20.0  # longer segments are encoded in chunks and pooled across them
    batch_size: int = 16
    max_batch_sec: float = 160.0  # total audio seconds per embedding batch (bucketed by length)
    # float32 | bfloat16: the arithmetic of the embedding pass (cache, predict, live; training keeps its own
    # rule). bfloat16 runs the matmuls and convolutions in bf16 (fp32 accumulation; norms, spectra and
    # pooling stay fp32): on a CPU with AVX512-BF16 or AMX 1.8-1.9x the segments/s of float32, on a GPU the
    # tensor cores; embeddings keep cosine >= 0.99998 (benchmarks/README.md, bench_embed.py). On a CPU
    # without native bf16 it is slower: keep float32 there.
    precision: str = "float32"


@dataclass
class ContextConfig:
    kind: str = "transformer"  # identity (isolated) | call_norm | transformer | smooth
    # transformer: the isolated path plus a context correction whose gate starts at 0, so at initialisation
    # the arm *is* the isolated arm and context has to earn its weight (False: the plain transformer).
    residual: bool = True
    d_model: int = 64
    depth: int = 2
    heads: int = 4
    dropout: float = 0.1  # on the input, residual branches and MLP
    attention_dropout: float = 0.0  # on attention weights; > 0 makes CPU attention ~5x slower (context.py)
    causal: bool = False  # True: a segment sees only itself and earlier segments (live use)
    window: int = 0  # segments per window for long calls; 0 = whole call at once
    window_overlap: int = 0  # segments shared by consecutive windows (outputs are stitched)
    use_time: bool = True  # add an embedding of start time / gap since the previous segment


@dataclass
class HeadConfig:
    # head | fine (p_negative = 1 - prod(1 - p_label) over negative labels, or their softmax mass) | mean (the
    # average of the two: the binary head trains on its own loss, the fine labels add their evidence)
    binary_from: str = "mean"
    fine_on_negative_only: bool = False  # fine loss only on segments that are negative
    dropout: float = 0.1


@dataclass
class LossConfig:
    kind: str = "cb_focal"  # cb_focal | focal | bce | weighted_bce
    beta: float = 0.999  # class-balanced effective-number beta (Cui et al. 2019)
    gamma: float = 2.0  # focal exponent
    binary_weight: float = 1.0
    fine_weight: float = 1.0


@dataclass
class TrainConfig:
    mode: str = "two_stage"  # two_stage (context on cached embeddings) | end_to_end
    epochs: int = 40
    batch_calls: int = 8  # calls per batch (end_to_end: windows of window_segments segments per batch)
    bucket_calls: int = 64  # sort each run of this many shuffled calls by length into batches; 0 = off
    lr: float = 2e-3
    encoder_lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    # Early stopping: stop after `patience` epochs without an inner-validation gain of more than
    # `min_delta`. At the seed's scale, 8 / 0.0 spent most late epochs on gains of ~0.001 in the score;
    # 5 / 0.002 ran 23% fewer epochs with the same contextual-arm metrics (benchmarks/README.md).
    patience: int = 5
    min_delta: float = 0.002
    early_stop_metric: str = "score"  # score = mean of binary AP and fine macro AP (threshold-free)
    window_segments: int = 8  # end_to_end: consecutive segments per training window
    tensorboard: bool = False  # per-epoch metrics under <fold dir>/tensorboard (pip install ".[tensorboard]")
    device: str = "auto"  # auto | cpu | cuda
    ensemble: int = 1  # models per inner fold, each from its own seed; probabilities are averaged
    # none | temperature: rescale p_negative by one temperature fitted on the inner validation callers, so
    # that alert probabilities read as risks (training/calibration.py); kept in the bundle, used by predict/live
    calibrate: str = "none"


@dataclass
class CVConfig:
    folds: int = 5
    inner_val_fraction: float = 0.2  # share of training callers held out for early stopping
    tune_thresholds: bool = True  # per-label thresholds tuned on inner validation (else 0.5)
    only_folds: List[int] = field(default_factory=list)  # run a subset of folds (empty = all)
    # Cross-fitting: K caller-disjoint inner folds of the training callers; each inner model early-stops on
    # its held-out callers, thresholds come from the pooled out-of-fold predictions, and the test fold is
    # scored with the average of the K models. 0 = one inner split of inner_val_fraction of the callers.
    # 3 by measurement on EmoDB (benchmarks/README.md "Real speech"): with 8-9 training callers, one
    # split left one caller to pick every threshold.
    inner_folds: int = 3
    # caller: no caller on both sides of any split (the evaluation protocol). segment: every segment is
    # its own group, so a caller's segments land on both sides, as in the seed study's code; opt-in, to
    # reproduce its table and see what caller-grouping changes (experiments/README.md).
    protocol: str = "caller"
    # Folds (and an ablation's arm-folds) run in this many processes of one thread each; 0 = one per
    # available core. Results equal the serial run's (1); on a GPU or under torchrun always 1.
    workers: int = 0


@dataclass
class AblationConfig:
    # arm name -> list of key=value overrides applied on top of this config
    arms: Dict[str, List[str]] = field(default_factory=dict)
    reference: str = ""  # arm that every other arm is compared with (paired test)
    # Baseline arms run beside the configured ones on the same folds, so that no arm is read without
    # them: linear_probe (train.mode=linear_probe) and prior (train.mode=prior, the trivial predictor).
    baselines: List[str] = field(default_factory=lambda: ["linear_probe", "prior"])


@dataclass
class SegmenterConfig:
    """`segmenter.*`: cutting whole-call recordings into turns (data/segmenter.py says how each is used).

    Seconds and dB; the defaults suit telephone speech. Not frozen: OmegaConf makes a frozen schema read-only.
    """

    # silero: a neural VAD per channel (pip install --no-deps silero-vad) decides which candidate turns are
    # speech | energy: every candidate is. Candidates and their boundaries come from the energy thresholds.
    vad: str = "silero"
    # silero: a turn is speech where its probability (0.1-s mean) reaches this. Real speech peaks at >= 0.98;
    # dial, ringback and DTMF tones and clicks stay below 0.5 but reach 0.15-0.42, so a lower value keeps them
    # (benchmarks/README.md "Segmentation", bench_silero_nonspeech.py).
    speech_prob: float = 0.5
    frame_sec: float = 0.02
    hop_sec: float = 0.01
    floor_quantile: float = 0.05  # share of frames assumed to be pauses (noise floor estimate)
    start_db: float = 12.0  # energy: a segment starts where energy rises this far above the channel's floor ...
    stop_db: float = 6.0  # ... and lasts while it stays this far above it
    min_speech_dbfs: float = -55.0  # never start below this level: digital silence + dither is not speech
    # Crosstalk: a channel this much quieter than another speaking channel only hears that one (its leak).
    crosstalk_db: float = 12.0
    # Ownership switches only after the new channel has spoken this long on its own; shorter bursts inside
    # another speaker's turn (leaks, clicks, a backchannel) neither split that turn nor become turns.
    min_turn_sec: float = 0.2
    # At an overlapping turn change the newcomer's turn starts at its first word, up to this long before the
    # earlier speaker's last frame: the earlier turn loses only its overlapped tail, while a short barge-in
    # mostly spoken over would otherwise be cut below min_segment_sec and dropped (0: the earlier speaker
    # keeps the whole overlap). Overlaps at turn changes are mostly under a second.
    barge_in_sec: float = 1.0
    min_silence_sec: float = 0.3  # shorter pauses are bridged (pauses inside a turn) ...
    # ... or, on a channel that carries one speaker (two-channel calls), pauses up to this long: a turn
    # change shows up on the other channel there, so slow speech need not be cut into pieces.
    speaker_min_silence_sec: float = 0.5
    min_segment_sec: float = 0.3  # shorter segments are reported as too short, not scored
    max_segment_sec: float = 15.0  # longer ones are split at their quietest pause
    pad_sec: float = 0.1  # widen each segment by this much (never into a neighbour): onsets are soft
    block_sec: float = 60.0  # recordings are read in blocks of this length (memory flat in call length)

    def __post_init__(self) -> None:
        # Each key's own range comes from RANGES (the one table, also read by validate()); the relations
        # between keys are checked here.
        for key, rule in RANGES.items():
            if key.startswith("segmenter.") and not in_range(getattr(self, key.split(".", 1)[1]), rule):
                raise ValueError(f"{key.split('.', 1)[1]} = {getattr(self, key.split('.', 1)[1])!r} must be {rule}")
        if self.vad not in SEGMENTER_VADS:
            raise ValueError(f"vad must be one of {SEGMENTER_VADS}, got {self.vad!r}")
        if self.hop_sec > self.frame_sec:
            raise ValueError(f"need hop_sec <= frame_sec, got {self.hop_sec}, {self.frame_sec}")
        if self.stop_db > self.start_db:
            raise ValueError(f"stop_db ({self.stop_db}) must not exceed start_db ({self.start_db})")
        if self.min_segment_sec >= self.max_segment_sec:
            raise ValueError(f"need min_segment_sec < max_segment_sec, got {self.min_segment_sec}, "
                             f"{self.max_segment_sec}")


SEGMENTER_VADS = ("silero", "energy")  # data/vad.py


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    out_dir: str = "runs"
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)


def parse_layers(layers: Union[str, int]) -> Union[str, int]:
    """encoder.layers: 'weighted' | 'last' | an int (strings of digits, e.g. from a YAML override, become ints).

    >>> parse_layers("7"), parse_layers("weighted")
    (7, 'weighted')
    """
    if layers in ("weighted", "last"):
        return layers
    try:
        return int(layers)
    except (TypeError, ValueError):
        raise ConfigError(f"config key 'encoder.layers' = {layers!r}: use 'weighted', 'last' or an integer index") from None


# Baseline arms an ablation adds (ablation.baselines): name -> the overrides that make the arm.
BASELINE_MODES = ("linear_probe", "prior")  # train.mode values that are baselines (training.baselines)
# A baseline is never smoothed or given context, whatever the reference arm's context.kind: with a smooth
# reference it would otherwise be "probe + smoothing" (85.5 / 70.1 on emodb-calls, seed 0), not the probe.
BASELINES: Dict[str, List[str]] = {mode: [f"train.mode={mode}", "context.kind=identity"] for mode in BASELINE_MODES}

# Closed sets of values, checked after every merge (a typo must not silently pick a default).
ENCODER_FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")  # models.backbones.FAMILIES
FEATURE_FAMILIES = ("opensmile",)  # fixed feature extractors (embedding.opensmile_features), not backbones
EMBED_PRECISIONS = ("float32", "bfloat16")  # device.embedding_autocast
CONTEXT_KINDS = ("identity", "call_norm", "transformer", "smooth")  # models.context (smooth: training.smoothing)
LOSS_KINDS = ("cb_focal", "focal", "bce", "weighted_bce")  # training.losses
CHOICES: Dict[str, Sequence[str]] = {
    "encoder.family": ENCODER_FAMILIES + FEATURE_FAMILIES,
    "encoder.feature_set": ("egemaps", "compare"),  # embedding.opensmile_features.FEATURE_SETS
    "encoder.pooling": ("mean", "attentive_stats"),
    "encoder.finetune": ("frozen", "lora", "full"),
    "encoder.precision": EMBED_PRECISIONS,
    "context.kind": CONTEXT_KINDS,
    "head.binary_from": ("head", "fine", "mean"),
    "loss.kind": LOSS_KINDS,
    "train.mode": ("two_stage", "end_to_end", *BASELINE_MODES),
    "train.device": ("auto", "cpu", "cuda"),
    "train.early_stop_metric": ("score", "binary_ap", "fine_macro_ap", "loss"),
    "train.calibrate": ("none", "temperature"),  # training.calibration
    "segmenter.vad": SEGMENTER_VADS,
    "cv.protocol": ("caller", "segment"),
}


# Every numeric key's valid range, the one place they are checked (after every merge, like CHOICES).
# Written as the message says it: ">= 1", "> 0", or an interval "[0, 1)" ("[" / "]" closed, "(" / ")" open).
# A new numeric key in the schema gets its line here (tests/test_config.py fails on a numeric key without one).
RANGES: Dict[str, str] = {
    "seed": ">= 0",
    "data.sample_rate": ">= 1",
    "data.channel": ">= -1",  # -1 mixes the channels down
    "data.min_segment_sec": ">= 0",
    "data.telephone_share": "[0, 1]",
    "encoder.lora.rank": ">= 1",
    "encoder.lora.alpha": "> 0",
    "encoder.lora.dropout": "[0, 1)",
    "encoder.max_chunk_sec": "> 0",
    "encoder.batch_size": ">= 1",
    "encoder.max_batch_sec": "> 0",
    "context.d_model": ">= 1",
    "context.depth": ">= 1",
    "context.heads": ">= 1",
    "context.dropout": "[0, 1)",
    "context.attention_dropout": "[0, 1)",
    "context.window": ">= 0",  # 0: the whole call at once
    "context.window_overlap": ">= 0",
    "head.dropout": "[0, 1)",
    "loss.beta": "[0, 1)",
    "loss.gamma": ">= 0",
    "loss.binary_weight": ">= 0",
    "loss.fine_weight": ">= 0",
    "train.epochs": ">= 1",
    "train.batch_calls": ">= 1",
    "train.bucket_calls": ">= 0",  # 0: no length bucketing
    "train.lr": "> 0",
    "train.encoder_lr": ">= 0",
    "train.weight_decay": ">= 0",
    "train.warmup_frac": "[0, 1)",
    "train.grad_clip": ">= 0",  # 0: no clipping
    "train.grad_accum": ">= 1",
    "train.patience": ">= 1",  # 0 would stop before the first epoch
    "train.min_delta": ">= 0",
    "train.window_segments": ">= 1",
    "train.ensemble": ">= 1",
    "cv.folds": ">= 2",
    "cv.inner_val_fraction": "(0, 1)",
    "cv.inner_folds": ">= 0",  # 0: one inner split; 1 is refused in validate()
    "cv.workers": ">= 0",  # 0: one per available core
    "segmenter.speech_prob": "[0, 1]",
    "segmenter.frame_sec": "> 0",
    "segmenter.hop_sec": "> 0",
    "segmenter.floor_quantile": "(0, 1)",
    "segmenter.start_db": ">= 0",
    "segmenter.stop_db": ">= 0",
    "segmenter.min_speech_dbfs": "[-200, 0]",
    "segmenter.crosstalk_db": "> 0",
    "segmenter.min_turn_sec": ">= 0",
    "segmenter.barge_in_sec": ">= 0",
    "segmenter.min_silence_sec": ">= 0",
    "segmenter.speaker_min_silence_sec": ">= 0",
    "segmenter.min_segment_sec": "> 0",
    "segmenter.max_segment_sec": "> 0",
    "segmenter.pad_sec": ">= 0",
    "segmenter.block_sec": ">= 1",
}


def in_range(value: float, rule: str) -> bool:
    """Whether `value` satisfies a RANGES rule (">= 1", "> 0", "[0, 1)", "(0, 1)", "[0, 1]")."""
    rule = rule.strip()
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    low, high = (float(part) for part in rule[1:-1].split(","))
    above = value >= low if rule[0] == "[" else value > low
    below = value <= high if rule[-1] == "]" else value < high
    return above and below


def _valid_keys(schema: DictConfig, dotted: str) -> List[str]:
    """Keys that exist at the parent of `dotted` (for error messages)."""
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            break
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _explain(exc: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        valid = _valid_keys(schema, key)
        return ConfigError(f"{source}: unknown config key '{key}'. Valid keys here: {', '.join(valid)}")
    if isinstance(exc, ValidationError):
        message = str(getattr(exc, "msg", exc)).splitlines()[0]
        return ConfigError(f"{source}: bad value for '{key}': {message}")
    return ConfigError(f"{source}: {exc}")


def validate(cfg: DictConfig) -> None:
    """Check closed choices and cross-field rules that the type schema cannot express."""
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key '{key}' = {value!r} is not one of: {', '.join(choices)}")
    parse_layers(cfg.encoder.layers)
    if cfg.encoder.family in FEATURE_FAMILIES and cfg.train.mode == "end_to_end":
        raise ConfigError(f"config key 'encoder.family' = {cfg.encoder.family!r} is a fixed feature extractor with "
                          "nothing to train: train.mode=end_to_end needs a neural encoder (wav2vec2, hubert, ...); "
                          "use train.mode=two_stage")
    labels = list(cfg.taxonomy.labels)
    if not labels or len(set(labels)) != len(labels):
        raise ConfigError(f"config key 'taxonomy.labels' must be a non-empty list of distinct names: {labels}")
    unknown = [name for name in cfg.taxonomy.negative_labels if name not in labels]
    if unknown:
        raise ConfigError(f"config key 'taxonomy.negative_labels' names unknown labels {unknown}; labels: {labels}")
    for key, rule in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if not in_range(value, rule):  # NaN fails every rule
            raise ConfigError(f"config key '{key}' = {value!r} must be {rule}")
    negatives = set(cfg.taxonomy.negative_labels) or set(labels)
    if not cfg.taxonomy.multilabel and cfg.head.binary_from != "head" and negatives >= set(labels):
        # Softmax mass over the negative labels is then 1 for every segment: P(negative) would carry nothing.
        raise ConfigError(
            f"config key 'head.binary_from' = {cfg.head.binary_from!r} with a single-label taxonomy whose labels "
            f"are all negative ({labels}) gives P(negative) = 1 for every segment: add a non-negative class to "
            "'taxonomy.labels' and list the others in 'taxonomy.negative_labels', or set head.binary_from=head")
    if cfg.cv.inner_folds == 1:
        raise ConfigError("config key 'cv.inner_folds' = 1: use 0 (one inner split) or at least 2 inner folds")
    unknown = [b for b in cfg.ablation.baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"config key 'ablation.baselines' names unknown baselines {unknown}; known: {list(BASELINES)}")
    if cfg.context.window and cfg.context.window_overlap >= cfg.context.window:
        raise ConfigError("config key 'context.window_overlap' must be smaller than 'context.window'")
    try:  # the segmenter's own checks, named by key
        SegmenterConfig(**OmegaConf.to_container(cfg.segmenter))
    except ValueError as exc:
        raise ConfigError(f"config key 'segmenter': {exc}") from None


def load_config(
    yaml_paths: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    base: Optional[DictConfig] = None,
) -> DictConfig:
    """Build a validated config: schema (or `base`) <- each YAML file in order <- `key=value` overrides.

    Args:
        yaml_paths: YAML files, later ones win. A file may name parents under `defaults:`
            (paths relative to itself), merged before its own keys: this is how an ablation arm
            is a small diff on a base config.
        overrides: dotlist strings such as ``train.epochs=3``.
        base: start from this config instead of the bare schema.
    Returns:
        A structured DictConfig (typed: assigning a wrong type later also fails).
    Raises:
        ConfigError: unknown key, wrong type or invalid choice, naming the key and the source.
    """
    schema = OmegaConf.structured(ExperimentConfig)
    cfg = base.copy() if base is not None else schema.copy()
    for path in yaml_paths:
        for source, content in _read_yaml_with_parents(Path(path)):
            if OmegaConf.select(content, "ablation.arms") is not None:
                # A file that lists arms defines the whole grid: its parent's arms must not leak in.
                cfg.ablation.arms = {}
            try:
                cfg = OmegaConf.merge(cfg, content)
            except OmegaConfBaseException as exc:
                raise _explain(exc, schema, str(source)) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise _explain(exc, schema, f"override {item!r}") from None
        except yaml.YAMLError as exc:  # the value is parsed as YAML: `x=@`, a control character
            reason = str(exc).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({reason})") from None
    try:  # every ${...} interpolation and ??? (missing) value resolves now, not in the middle of a run
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"config key '{key}': {str(getattr(exc, 'msg', exc)).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def _read_yaml_with_parents(path: Path, _ancestors: tuple = (), _merged: Optional[set] = None) -> List[tuple]:
    """[(source, content)] for `path`'s `defaults:` parents (depth first) then `path` itself.

    A parent reached twice (a diamond: a.yaml and b.yaml both on base.yaml) is merged once, first;
    merging it again would overwrite what a.yaml changed. A true cycle is an error.
    """
    merged = _merged if _merged is not None else set()
    resolved = path.resolve()
    if resolved in _ancestors:
        raise ConfigError(f"{path}: circular 'defaults' chain")
    if resolved in merged:
        return []
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        content = OmegaConf.load(path)
    except Exception as exc:  # yaml parser errors come in several types
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(content, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    out: List[tuple] = []
    parents = content.pop("defaults", None) or []
    if isinstance(parents, str):
        parents = [parents]
    for parent in parents:
        out.extend(_read_yaml_with_parents(path.parent / str(parent), _ancestors + (resolved,), merged))
    merged.add(resolved)
    out.append((path, content))
    return out


def to_container(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def default_config() -> DictConfig:
    return load_config()


def schema_fields(cls=ExperimentConfig) -> List[str]:
    """Top-level section names, for help texts."""
    return [f.name for f in dataclasses.fields(cls)]
