"""Model bundles: what `ctxemo predict` and live scoring need, stored as safetensors + JSON/YAML only.

A bundle folder holds:
    config.yaml          the resolved training config (the encoder is rebuilt from it)
    model.safetensors    CallModel state, including the context stage's feature-standardisation buffers
    thresholds.json      binary threshold and per-label thresholds, tuned on inner-validation callers
    taxonomy.json        labels, multilabel, negative labels
    versions.json        library versions at training time
    encoder.json         encoder fingerprint + the embedding of a fixed probe signal (absent when the model
                         was trained on precomputed features; for encoder.family=opensmile, the extractor's
                         fingerprint and the probe's functionals)
    encoder_adapter/     the encoder's trainable weights (`save_adapter`), only when it was fine-tuned
    bundle.json          written last: format version, d_in, timing use, sha256 of every file above
Loading never unpickles. A missing or modified file, another format version, or a pickle (.pt, .bin, ...)
where safetensors belong is refused with BundleError naming the file. A frozen random-init encoder is
rebuilt from config + seed; its fingerprint and probe embedding must match, so a changed encoder is refused.

Legend: n = segments of a call, s = segments in the model's sequence, d = features, c = fine labels.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from ctxemo import __version__
from ctxemo.config import load_config, to_yaml
from ctxemo.data.datasets import call_inputs, time_features
from ctxemo.device import resolve_device
from ctxemo.embedding.encode import EmbedSettings, embed_waves
from ctxemo.embedding.opensmile_features import (
    OpenSmileExtractor,
    is_feature_family,
    opensmile_fingerprint,
)
from ctxemo.embedding.opensmile_features import embed_waves as embed_functionals
from ctxemo.errors import BundleError, ConfigError, CtxemoError
from ctxemo.evaluation.evaluate import Thresholds, segment_labels
from ctxemo.io import file_sha256, json_text, swap_in_folder
from ctxemo.models.call_model import CallModel, build_call_model, forward_windowed
from ctxemo.models.ensemble import EnsembleCallModel
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.calibration import TemperatureScaler
from ctxemo.training.smoothing import PosteriorSmoother

BUNDLE_FORMAT = "ctxemo-bundle/1"
META_FILE = "bundle.json"
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
THRESHOLDS_FILE = "thresholds.json"
TAXONOMY_FILE = "taxonomy.json"
VERSIONS_FILE = "versions.json"
ENCODER_FILE = "encoder.json"
ADAPTER_DIR = "encoder_adapter"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
PROBE_SEC = 1.5
PROBE_TOLERANCE = 1e-4  # max |probe embedding - recorded| relative to max(1, max |recorded|)


@dataclass
class CallScores:
    """Probabilities for every segment of a call; NaN where a segment is not scored (operator turns)."""

    p_negative: np.ndarray  # [n]
    p_fine: np.ndarray  # [n, c]


# ----------------------------------------------------------------------------- encoder rebuild

def probe_signal(sample_rate: int, seconds: float = PROBE_SEC) -> np.ndarray:
    """A fixed speech-like test signal (a gliding harmonic tone under a syllable envelope, plus noise)."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(h * phase) / h for h in range(1, 8))
    envelope = np.sin(np.pi * 4.0 * t) ** 2
    noise = np.random.default_rng(0).standard_normal(len(t))
    return (0.1 * envelope * voiced + 0.003 * noise).astype(np.float32)


def build_encoder(cfg: DictConfig, *, adapter_dir: Optional[Path] = None):
    """The SegmentEncoder a bundle scores with: exactly the one that filled the embedding cache.

    Without an adapter it is the frozen, seeded encoder of `ctxemo.embedding.encode` (the same builder, so
    rebuilding cannot drift from the cache); with one, the configured encoder built under the same seed
    and then loaded with the saved trainable weights. For encoder.family=opensmile it is the
    OpenSmileExtractor that filled the cache (nothing is trained, so there is never an adapter).
    """
    from ctxemo.embedding.encode import build_cache_encoder, build_seeded_encoder

    if is_feature_family(cfg):
        if adapter_dir is not None:
            raise BundleError(f"{adapter_dir}: encoder.family={cfg.encoder.family!r} has no trainable weights")
        return OpenSmileExtractor.from_config(cfg)
    if adapter_dir is None:
        return build_cache_encoder(cfg).eval()
    encoder = build_seeded_encoder(cfg, gradient_checkpointing=False)
    encoder.load_adapter(adapter_dir)
    return encoder.eval()


def _embed_waves(encoder, waves: Sequence[np.ndarray], *, settings: EmbedSettings, device: Optional[str] = None):
    """`embed_waves` of the embedding stage for this encoder: a SegmentEncoder's, or openSMILE functionals'."""
    embed = embed_functionals if isinstance(encoder, OpenSmileExtractor) else embed_waves
    return embed(encoder, waves, settings=settings, device=device)


def _encoder_description(cfg: DictConfig, encoder) -> tuple:
    """(digest, JSON-normalised description) of the encoder, as the embedding cache fingerprints it."""
    from ctxemo.embedding.cache import encoder_fingerprint

    if is_feature_family(cfg):
        digest, description = opensmile_fingerprint(cfg)
    else:
        digest, description = encoder_fingerprint(cfg, encoder=encoder)
    return digest, json.loads(json.dumps(description, sort_keys=True, default=str))


def encoder_record(cfg: DictConfig, encoder, *, adapter: bool) -> Dict[str, Any]:
    """What encoder.json holds: fingerprint, its description and the probe embedding (computed on CPU;
    the encoder is moved there)."""
    digest, description = _encoder_description(cfg, encoder if adapter else None)
    probe = _embed_waves(encoder.cpu(), [probe_signal(int(cfg.data.sample_rate))], settings=EmbedSettings.from_config(cfg),
                         device="cpu")[0]
    return {"fingerprint": digest, "description": description, "adapter": adapter,
            "probe": {"seconds": PROBE_SEC, "embedding": [float(v) for v in probe]}}


def check_encoder(cfg: DictConfig, encoder, record: Dict[str, Any], *, where: Path) -> List[str]:
    """Refuse an encoder that is not the one the bundle was trained with.

    The fingerprint (family, source and weights identity, model config, seed, layers, pooling, audio
    settings, trained weights) must match; if only library versions differ, the probe embedding decides.
    Returns:
        Warnings (library versions changed but the probe still matches).
    Raises:
        BundleError naming `where`.
    """
    digest, description = _encoder_description(cfg, encoder if record.get("adapter") else None)
    warnings: List[str] = []
    if digest != record.get("fingerprint"):
        stored = record.get("description") or {}
        differ = sorted(k for k in set(stored) | set(description) if stored.get(k) != description.get(k))
        if differ != ["versions"]:
            raise BundleError(f"{where}: the encoder rebuilt from {CONFIG_FILE} is not the one this model was "
                              f"trained with (fingerprint differs in: {', '.join(differ) or 'unknown fields'})")
        warnings.append(f"{where}: library versions differ from training ({stored.get('versions')} -> "
                        f"{description.get('versions')}); the probe embedding still matches")
    expected = np.asarray(record["probe"]["embedding"], dtype=np.float32)
    got = _embed_waves(encoder.cpu(), [probe_signal(int(cfg.data.sample_rate))], settings=EmbedSettings.from_config(cfg),
                         device="cpu")[0]
    scale = max(1.0, float(np.abs(expected).max()))
    if got.shape != expected.shape or float(np.abs(got - expected).max()) > PROBE_TOLERANCE * scale:
        diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        raise BundleError(f"{where}: the rebuilt encoder does not reproduce the recorded probe embedding "
                          f"(max difference {diff:.3g}); the model would score embeddings it was not trained on")
    return warnings


def verify_rebuilt_embeddings(encoder, waves: Sequence[np.ndarray], expected: np.ndarray, *, cfg: DictConfig,
                              atol: float = 1e-5) -> float:
    """Max |rebuilt - cached| over some segments; raises CtxemoError above `atol` (used before saving)."""
    got = _embed_waves(encoder.cpu(), waves, settings=EmbedSettings.from_config(cfg), device="cpu")
    diff = float(np.abs(got - np.asarray(expected, dtype=np.float32)).max()) if len(waves) else 0.0
    if diff > atol:
        raise CtxemoError(f"the encoder rebuilt from the config gives embeddings {diff:.3g} away from the cached "
                          "ones; the bundle would not reproduce training. Clear the embedding cache and retry")
    return diff


# ----------------------------------------------------------------------------- the loaded bundle

@dataclass
class Bundle:
    """A loaded bundle: config, taxonomy, thresholds and the CallModel (eval mode); encoder on demand."""

    path: Path
    cfg: DictConfig
    taxonomy: Taxonomy
    model: CallModel
    thresholds: Thresholds
    meta: Dict[str, Any]
    versions: Dict[str, Any]
    encoder_info: Optional[Dict[str, Any]]
    device: torch.device = torch.device("cpu")
    warnings: List[str] = field(default_factory=list)
    smoother: Optional[PosteriorSmoother] = None  # context.kind: smooth
    calibrator: Optional[TemperatureScaler] = None  # train.calibrate: temperature (applied last)
    _encoder: Any = None

    @property
    def id(self) -> str:
        """sha256 of bundle.json (which holds the hash of every other file)."""
        return self.meta["_sha256"]

    @property
    def d_in(self) -> int:
        return int(self.meta["d_in"])

    @property
    def has_encoder(self) -> bool:
        return self.encoder_info is not None

    @property
    def sample_rate(self) -> int:
        return int(self.cfg.data.sample_rate)

    @property
    def uses_time(self) -> bool:
        """Whether timing inputs reach the model (False when training had no start/end: zeros then)."""
        return bool(self.meta.get("time_features", False))

    @property
    def use_operator_turns(self) -> bool:
        return bool(self.cfg.data.use_operator_turns)

    @property
    def training_audio(self) -> Dict[str, Any]:
        """{"sample_rate_hz", "upper_band_edge_hz", "telephone_share"} of the training audio ({} for older
        bundles and precomputed features)."""
        return dict(self.meta.get("train", {}).get("audio") or {})

    def check_band(self, waves: Sequence[np.ndarray], *, sample_rate: int, where: str) -> Optional[str]:
        """A warning when these waves' band edge differs from the training audio's:
        a wideband model reads telephone audio as another voice. None when they match or nothing is known."""
        from ctxemo.data.telephone import band_mismatch, upper_band_edge_hz

        trained = self.training_audio
        edge = upper_band_edge_hz(waves, sample_rate)
        if not band_mismatch(trained.get("upper_band_edge_hz"), edge):
            return None
        narrower = edge < trained["upper_band_edge_hz"]
        if narrower and trained.get("telephone_share"):
            return None  # trained with simulated telephone audio too
        message = (f"{where}: audio band ends at {edge / 1000:.1f} kHz but the bundle's training audio at "
                   f"{trained['upper_band_edge_hz'] / 1000:.1f} kHz (training files {trained.get('sample_rate_hz')} Hz)"
                   + ("; telephone-band input to a wideband model: scores may be biased (train with "
                      "data.telephone_share > 0 for one model that serves both)" if narrower else ""))
        return message

    def encoder(self):
        """The SegmentEncoder, built and checked against the recorded fingerprint + probe on first use."""
        if self._encoder is None:
            if not self.has_encoder:
                raise BundleError(f"{self.path}: this model was trained on precomputed features (data.features); "
                                  "it cannot embed audio. Score a manifest with matching features instead")
            adapter = self.path / ADAPTER_DIR if self.encoder_info.get("adapter") else None
            encoder = build_encoder(self.cfg, adapter_dir=adapter)
            self.warnings += check_encoder(self.cfg, encoder, self.encoder_info, where=self.path / ENCODER_FILE)
            self._encoder = encoder.to(self.device).eval()
        return self._encoder

    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Segment embeddings float32 [n, d_in] of mono waves at `sample_rate`."""
        return _embed_waves(self.encoder(), waves, settings=EmbedSettings.from_config(self.cfg), device=str(self.device))

    def in_context(self, roles: Sequence[str]) -> np.ndarray:
        """bool [n]: segments that enter the context model (callers; operators if the model used them)."""
        return np.array([r == "caller" or (r == "operator" and self.use_operator_turns) for r in roles], dtype=bool)

    @torch.no_grad()
    def score_call(self, feats: np.ndarray, *, roles: Sequence[str], start_sec: np.ndarray,
                   end_sec: np.ndarray) -> CallScores:
        """Score one whole call offline (windowed as in training/validation).

        Args:
            feats: float32 [n, d_in] embeddings of the call's segments in time order.
            roles: n of "caller" | "operator".
            start_sec, end_sec: [n] seconds (NaN when unknown).
        Returns:
            CallScores with NaN rows for segments that are not scored.
        """
        n, c = len(roles), self.taxonomy.num_labels
        p_neg, p_fine = np.full(n, np.nan), np.full((n, c), np.nan)
        rows = np.flatnonzero(self.in_context(roles))
        is_caller = np.array([r == "caller" for r in roles], dtype=bool)
        if not is_caller.any():
            return CallScores(p_neg, p_fine)
        time = time_features(np.asarray(start_sec, float)[rows], np.asarray(end_sec, float)[rows])
        inputs = call_inputs(np.asarray(feats, np.float32)[rows], roles=[roles[r] for r in rows],
                             positions=np.arange(len(rows)), time_feats=time if self.uses_time else 0 * time,
                             device=self.device)
        logits = forward_windowed(self.model, inputs, window=int(self.cfg.context.window),
                                  overlap=int(self.cfg.context.window_overlap))
        scored = is_caller[rows]
        p_negative, probs = self.model.probabilities(logits)
        p_neg[rows[scored]] = p_negative[0].float().cpu().numpy()[scored]
        p_fine[rows[scored]] = probs[0].float().cpu().numpy()[scored]
        if self.smoother is not None:  # along the call's caller segments, as in training
            callers = rows[scored]
            p_neg[callers], p_fine[callers] = self.smoother.smooth_call(p_neg[callers], p_fine[callers])
        return CallScores(self.calibrated(p_neg), p_fine)

    def calibrated(self, p_negative):
        """p_negative as the bundle outputs it: temperature-scaled when trained with train.calibrate."""
        return p_negative if self.calibrator is None else self.calibrator.apply(p_negative)

    @torch.no_grad()
    def score_window(self, feats: np.ndarray, *, roles: Sequence[str], positions: np.ndarray,
                     time_feats: np.ndarray) -> tuple:
        """(p_negative, p_fine [c]) of the last of a window of in-context segments (live scoring), before
        any smoothing. Args: feats [w, d_in]; roles, positions [w] (positions in the call); time_feats [w, 2]."""
        inputs = call_inputs(feats, roles=list(roles), positions=positions, time_feats=time_feats, device=self.device)
        p_negative, p_fine = self.model.probabilities(self.model(inputs))
        return float(p_negative[0, -1]), p_fine[0, -1].float().cpu().numpy()

    def is_negative(self, p_negative: float) -> bool:
        return bool(p_negative >= self.thresholds.binary)

    def top_labels(self, p_fine: np.ndarray, *, negative: bool) -> List[str]:
        """The segment's fine labels, agreeing with its binary decision (evaluate.segment_labels)."""
        return segment_labels(p_fine, negative=negative, taxonomy=self.taxonomy, fine_thresholds=self.thresholds.fine)


# ----------------------------------------------------------------------------- save

def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json_text(obj) + "\n", encoding="utf-8")


def save_bundle(folder: str | Path, *, cfg: DictConfig, model: CallModel, thresholds: Thresholds, d_in: int,
                time_features_used: bool, encoder=None, train_info: Optional[Dict[str, Any]] = None,
                smoother: Optional[PosteriorSmoother] = None, calibrator: Optional[TemperatureScaler] = None) -> Path:
    """Write a bundle folder atomically (a reader sees the old bundle or the complete new one).

    Args:
        cfg: the resolved config the model was trained with.
        model: the trained CallModel, or an EnsembleCallModel of them (cross-fitted inner models, seed
            ensembles); its state, buffers included, goes to model.safetensors.
        thresholds: decision thresholds tuned on inner-validation callers.
        d_in: segment embedding width.
        time_features_used: whether training segments had start/end (otherwise timing inputs are zeroed).
        encoder: a fine-tuned SegmentEncoder whose trainable weights must travel with the bundle; None
            rebuilds the frozen encoder from config + seed (nothing saved), or none at all when the model
            was trained on precomputed features.
        train_info: free-form facts about training (epochs, calls, inner-validation metrics).
        smoother: the posterior smoother of `context.kind: smooth` (its parameters go to bundle.json).
        calibrator: the temperature of `train.calibrate: temperature` (goes to bundle.json too).
    Returns:
        The bundle folder.
    """
    from safetensors.torch import save_file

    from ctxemo.runinfo import library_versions

    folder = Path(folder)
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    if thresholds.fine is not None and len(thresholds.fine) != taxonomy.num_labels:
        raise BundleError(f"{len(thresholds.fine)} fine thresholds for {taxonomy.num_labels} labels")
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / CONFIG_FILE).write_text(to_yaml(cfg), encoding="utf-8")
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": BUNDLE_FORMAT})
        _write_json(tmp / THRESHOLDS_FILE, {
            "binary": float(thresholds.binary),
            "fine": None if thresholds.fine is None
            else {name: float(v) for name, v in zip(taxonomy.labels, thresholds.fine)},
        })
        _write_json(tmp / TAXONOMY_FILE, {"labels": list(taxonomy.labels), "multilabel": taxonomy.multilabel,
                                          "negative_labels": list(taxonomy.negative_labels)})
        _write_json(tmp / VERSIONS_FILE, library_versions())
        embedding = "precomputed" if cfg.data.features else "encoder"
        if embedding == "encoder":
            adapter = encoder is not None
            if adapter:
                if encoder.finetune != cfg.encoder.finetune:
                    raise BundleError(f"the encoder was fine-tuned with finetune={encoder.finetune!r} but the "
                                      f"config says encoder.finetune={cfg.encoder.finetune!r}")
                encoder.save_adapter(tmp / ADAPTER_DIR)
            else:
                encoder = build_encoder(cfg)
            _write_json(tmp / ENCODER_FILE, encoder_record(cfg, encoder.eval(), adapter=adapter))
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        _write_json(tmp / META_FILE, {
            "format": BUNDLE_FORMAT, "ctxemo_version": __version__,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "d_in": int(d_in), "embedding": embedding, "time_features": bool(time_features_used),
            "train": train_info or {}, "files": {name: file_sha256(tmp / name) for name in files},
            "members": len(model.members) if isinstance(model, EnsembleCallModel) else 1,
            "smoother": None if smoother is None else smoother.state(),
            "calibration": None if calibrator is None else calibrator.state(),
        })
        swap_in_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ----------------------------------------------------------------------------- load

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc})") from None


def _check_files(folder: Path, meta: Dict[str, Any]) -> None:
    """Every listed file present and unmodified; no pickles anywhere in the bundle."""
    pickles = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                     if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise BundleError(f"{folder / pickles[0]}: bundles hold weights as safetensors only; pickle files "
                          f"({', '.join(pickles)}) are never loaded (they can run code)")
    listed = meta.get("files")
    if not isinstance(listed, dict) or WEIGHTS_FILE not in listed or CONFIG_FILE not in listed:
        raise BundleError(f"{folder / META_FILE}: no file list (or it lacks {WEIGHTS_FILE} / {CONFIG_FILE})")
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        if file_sha256(path) != digest:
            raise BundleError(f"{path}: modified after the bundle was written (sha256 mismatch)")


def load_bundle(folder: str | Path, *, device: torch.device | str = "cpu") -> Bundle:
    """Load and check a bundle (see the module docstring). The encoder is built on first use.

    `device="auto"` takes the bundle's own `train.device` (CUDA when present for "auto"), read from its
    config before any weight is loaded, so a GPU bundle is read once.

    Raises:
        BundleError: naming the file that is missing, modified, of another format, or unsafe.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"model bundle not found: {folder} (expected a folder written by `ctxemo train`)")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: missing; not a complete ctxemo bundle")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_path}: bundle format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                          f"this ctxemo ({__version__}) reads {BUNDLE_FORMAT!r}")
    meta["_sha256"] = file_sha256(meta_path)
    _check_files(folder, meta)

    try:
        cfg = load_config([folder / CONFIG_FILE])
    except ConfigError as exc:
        raise BundleError(f"{folder / CONFIG_FILE}: {exc}") from None
    tax = _read_json(folder / TAXONOMY_FILE)
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    if tax != {"labels": list(taxonomy.labels), "multilabel": taxonomy.multilabel,
               "negative_labels": list(taxonomy.negative_labels)}:
        raise BundleError(f"{folder / TAXONOMY_FILE}: does not match the taxonomy in {CONFIG_FILE}")
    raw = _read_json(folder / THRESHOLDS_FILE)
    try:
        fine = raw.get("fine")
        thresholds = Thresholds(binary=float(raw["binary"]),
                                fine=None if fine is None else np.array([float(fine[n]) for n in taxonomy.labels]))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{folder / THRESHOLDS_FILE}: malformed ({type(exc).__name__}: {exc})") from None

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{weights}: not a safetensors file ({exc})") from None
    members = [build_call_model(cfg, d_in=int(meta["d_in"]), taxonomy=taxonomy) for _ in range(int(meta.get("members", 1)))]
    model = members[0] if len(members) == 1 else EnsembleCallModel(members)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{weights}: does not fit the model described by {CONFIG_FILE}: "
                          f"{str(exc).splitlines()[0]}") from None
    device = resolve_device(str(cfg.train.device)) if device == "auto" else torch.device(device)
    model.to(device).eval()
    encoder_info = None
    if meta.get("embedding") == "encoder":
        if not (folder / ENCODER_FILE).is_file():
            raise BundleError(f"{folder / ENCODER_FILE}: missing (the bundle says its model embeds audio)")
        encoder_info = _read_json(folder / ENCODER_FILE)
    smoother = PosteriorSmoother.from_state(meta["smoother"], taxonomy) if meta.get("smoother") else None
    return Bundle(path=folder, cfg=cfg, taxonomy=taxonomy, model=model, thresholds=thresholds, meta=meta,
                  versions=_read_json(folder / VERSIONS_FILE), encoder_info=encoder_info, device=device,
                  smoother=smoother, calibrator=TemperatureScaler.from_state(meta.get("calibration")))
