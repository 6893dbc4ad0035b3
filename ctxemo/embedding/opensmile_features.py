"""The classic paralinguistic front-end as an encoder family: `encoder.family: opensmile` gives one row of
openSMILE functionals per segment, `encoder.feature_set: egemaps` (eGeMAPS v02, 88 features, the default)
or `compare` (ComParE 2016, 6373). Two-stage only: there is nothing to train.

Audio is read as every encoder reads it (`read_segment`: crop, channel, resampling to data.sample_rate) and
handed to openSMILE as a waveform (`Smile.process_signal`), never as a file path, so crops work. Results go
through the embedding cache (`cached_rows`: <out_dir>/cache/opensmile-<fingerprint[:12]>/, rows reused while
their audio hash is unchanged, resumable shards, atomic writes), so `load_corpus` and every study above it
treat them like any embedding. Bundles use `OpenSmileExtractor` where they would use a SegmentEncoder, and
`embed_waves` here where they would use `ctxemo.embedding.encode.embed_waves`.

Needs the optional `opensmile` package: pip install ".[opensmile]".
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from ctxemo.config import FEATURE_FAMILIES
from ctxemo.data.short_segments import min_segment_samples
from ctxemo.embedding.cache import (
    CACHE_FORMAT,
    _sha,
    audio_reading,
    cache_folder,
    cached_rows,
    row_hashes,
)
from ctxemo.embedding.encode import (
    AudioSpec,
    EmbedSettings,
    RowLike,
    as_audio_spec,
    read_segment,
)
from ctxemo.errors import AudioError, ConfigError

FAMILY = "opensmile"
# encoder.feature_set -> (openSMILE FeatureSet member, number of functionals)
FEATURE_SETS: Dict[str, Tuple[str, int]] = {"egemaps": ("eGeMAPSv02", 88), "compare": ("ComParE_2016", 6373)}
# openSMILE fills segments shorter than its longest analysis frame (60 ms) with NaN: shorter segments are
# zero-padded to this (or to data.min_segment_sec when that is longer), as the neural encoders pad theirs.
MIN_SEC = 0.1
INSTALL_HINT = 'pip install ".[opensmile]" (or: pip install opensmile)'


def is_feature_family(cfg: DictConfig) -> bool:
    """Whether cfg.encoder.family is a fixed feature extractor (opensmile) rather than a neural backbone."""
    return str(cfg.encoder.family) in FEATURE_FAMILIES


def require_opensmile():
    """The `opensmile` module, or a ConfigError that says how to install it."""
    try:
        import opensmile
    except ImportError:
        raise ConfigError("config key 'encoder.family' = 'opensmile' needs the optional opensmile package, which "
                          f"is not installed: {INSTALL_HINT}") from None
    return opensmile


def _feature_set(name: str) -> Tuple[str, int]:
    if name not in FEATURE_SETS:
        raise ConfigError(f"config key 'encoder.feature_set' = {name!r} is not one of: {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[name]


class OpenSmileExtractor:
    """openSMILE functionals of mono segments: float32 [D] per segment.

    Stands in for a SegmentEncoder where bundles hold one (`eval`, `cpu`, `to` are no-ops; `output_dim`).
    """

    family = FAMILY

    def __init__(self, feature_set: str = "egemaps", *, sample_rate: int = 16000, min_segment_sec: float = 0.1):
        opensmile = require_opensmile()
        member, dim = _feature_set(feature_set)
        self.feature_set, self.sample_rate = feature_set, int(sample_rate)
        self.min_samples = min_segment_samples(max(float(min_segment_sec), MIN_SEC), self.sample_rate)
        self._smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, member),
                                      feature_level=opensmile.FeatureLevel.Functionals)
        self.output_dim = len(self._smile.feature_names)
        if self.output_dim != dim:  # pragma: no cover - another opensmile release changed the set
            raise ConfigError(f"encoder.feature_set {feature_set!r}: opensmile gives {self.output_dim} features, "
                              f"expected {dim}")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "OpenSmileExtractor":
        return cls(str(cfg.encoder.feature_set), sample_rate=int(cfg.data.sample_rate),
                   min_segment_sec=float(cfg.data.min_segment_sec))

    @property
    def feature_names(self) -> List[str]:
        return list(self._smile.feature_names)

    def features(self, wave: np.ndarray, *, where: Union[str, Path] = "a segment") -> np.ndarray:
        """Functionals float32 [D] of one mono waveform at `sample_rate`.

        Raises:
            AudioError naming `where` if openSMILE still returns NaN/Inf (it should not after padding).
        """
        wave = np.ascontiguousarray(wave, dtype=np.float32).reshape(-1)
        if len(wave) < self.min_samples:
            wave = np.pad(wave, (0, self.min_samples - len(wave)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Segment too short, filling with NaN": checked below
            values = self._smile.process_signal(wave, self.sample_rate).to_numpy(dtype=np.float32)[0]
        if not np.isfinite(values).all():
            raise AudioError(f"{where}: openSMILE ({self.feature_set}) returned NaN/Inf features")
        return values

    def __call__(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty((len(waves), self.output_dim), dtype=np.float32)
        for i, wave in enumerate(waves):
            out[i] = self.features(wave)
        return out

    # SegmentEncoder look-alikes, so that bundle code can move and switch "the encoder" without asking.
    def eval(self) -> "OpenSmileExtractor":
        return self

    def cpu(self) -> "OpenSmileExtractor":
        return self

    def to(self, *args: Any, **kwargs: Any) -> "OpenSmileExtractor":
        return self


def opensmile_fingerprint(cfg: DictConfig) -> Tuple[str, Dict[str, Any]]:
    """(hex digest, description) of everything that decides a row's functionals apart from its audio:
    feature set, functionals level, opensmile version, how the audio is read (`audio_reading`, with
    data.telephone_share), padding."""
    opensmile = require_opensmile()
    feature_set = str(cfg.encoder.feature_set)
    member, dim = _feature_set(feature_set)
    description: Dict[str, Any] = {
        "format": CACHE_FORMAT, "family": FAMILY, "feature_set": feature_set, "opensmile_set": member,
        "feature_level": "functionals", "dim": dim, "min_sec": MIN_SEC,
        **audio_reading(cfg),
        "versions": {"opensmile": opensmile.__version__},
    }
    return _sha(description), description


def encode_rows(settings: EmbedSettings, extractor: OpenSmileExtractor, specs: Sequence[AudioSpec], *,
                bar: Optional[tqdm] = None) -> np.ndarray:
    """Functionals [len(specs), D] of audio files (and crops), read like every encoder reads them (no cache)."""
    out = np.empty((len(specs), extractor.output_dim), dtype=np.float32)
    for i, spec in enumerate(specs):
        out[i] = extractor.features(read_segment(settings, spec), where=spec.path)
        if bar is not None:
            bar.update(1)
    return out


def embed_waves(extractor: OpenSmileExtractor, waves: Sequence[np.ndarray], *, settings: EmbedSettings,
                device: Optional[str] = None) -> np.ndarray:
    """Functionals [len(waves), D] of in-memory mono float32 segments at the settings' sample rate
    (the signature of `ctxemo.embedding.encode.embed_waves`; `device` is ignored)."""
    if extractor.sample_rate != settings.sample_rate:
        raise ConfigError(f"the opensmile extractor runs at {extractor.sample_rate} Hz but data.sample_rate is "
                          f"{settings.sample_rate}")
    return extractor(waves)


def opensmile_manifest(
    cfg: DictConfig,
    manifest_rows: Sequence[RowLike],
    *,
    cache_dir: Union[str, Path],
    progress: bool = True,
    shard_rows: int = 256,
    on_shard_done: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """openSMILE functionals for every manifest row, from the cache where valid, else computed
    (`embed_manifest`'s counterpart for encoder.family=opensmile).

    Returns:
        float32 [N, D] (D = 88 for egemaps, 6373 for compare).
    Raises:
        AudioError: a missing or unreadable audio file (named).
        ConfigError: opensmile not installed, or an unknown encoder.feature_set.
    """
    specs = [as_audio_spec(r) for r in manifest_rows]
    hashes = row_hashes(specs)
    fingerprint, description = opensmile_fingerprint(cfg)
    settings = EmbedSettings.from_config(cfg)
    extractor: List[OpenSmileExtractor] = []  # built on first use: a fully cached corpus needs none

    def encode(rows: List[AudioSpec], bar: tqdm) -> np.ndarray:
        if not extractor:
            extractor.append(OpenSmileExtractor.from_config(cfg))
        return encode_rows(settings, extractor[0], rows, bar=bar)

    return cached_rows(specs, hashes, folder=cache_folder(cfg, cache_dir, fingerprint), fingerprint=fingerprint,
                       description=description, encode=encode,
                       desc=f"opensmile {cfg.encoder.feature_set}", progress=progress, shard_rows=shard_rows,
                       on_shard_done=on_shard_done)
