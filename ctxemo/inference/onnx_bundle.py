"""A bundle exported to ONNX (`ctxemo export BUNDLE --out DIR --format onnx`), run on onnxruntime.

An export folder holds:
    encoder_frames.onnx  one chunk of audio -> the encoder's frame features (layers mixed, LoRA merged):
                         input `chunk` float [1, t] (16 kHz, every sample valid, t <= max_chunk_samples),
                         output `frames` float [1, f, d]
    encoder_pool.onnx    the segment's frames (its chunks' frames concatenated) -> `embedding` [1, d_in]
    context.onnx         a window of in-context segments -> per segment `p_negative` [1, s], `p_fine` [1, s, c];
                         inputs `feats` [1, s, d_in], `role` [1, s] int64 (0 caller, 1 operator),
                         `position` [1, s] int64 (index in the call), `time_feats` [1, s, 2]
    config.yaml, thresholds.json, taxonomy.json   copied from the bundle
    export.json          written last: format, the source bundle's id, the glue settings below, the
                         smoother's parameters (context.kind: smooth), sha256 of every file
The glue around the graphs, for a runtime other than this one: pad a segment with zeros up to
`min_segment_samples` (the rule of ctxemo.data.short_segments) and `encoder_min_samples`; cut one longer
than `max_chunk_samples` into n = ceil(t / max) equal chunks (ctxemo.models.chunking); timing features
as in ctxemo.data.datasets.time_features (zeros when `time_features` is false); the smoother's forward
step (ctxemo.training.smoothing) after context.onnx.

`OnnxBundle` is a `Bundle` whose encoder and context model are these graphs, so `LiveSession` (and
anything else that embeds and scores windows through a Bundle) runs on them unchanged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from ctxemo.config import load_config
from ctxemo.data.manifest import ROLE_IDS
from ctxemo.data.short_segments import min_segment_samples
from ctxemo.errors import BundleError, ConfigError
from ctxemo.evaluation.evaluate import Thresholds
from ctxemo.inference.bundle import Bundle
from ctxemo.io import file_sha256
from ctxemo.models.chunking import split_into_chunks
from ctxemo.taxonomy import Taxonomy
from ctxemo.training.calibration import TemperatureScaler
from ctxemo.training.smoothing import PosteriorSmoother

EXPORT_FORMAT = "ctxemo-onnx/1"
EXPORT_FILE = "export.json"
FRAMES_FILE, POOL_FILE, CONTEXT_FILE = "encoder_frames.onnx", "encoder_pool.onnx", "context.onnx"
COPIED_FILES = ("config.yaml", "thresholds.json", "taxonomy.json")


def _session(path: Path, threads: int, spin: bool):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("running an ONNX export needs onnxruntime: pip install \".[onnx]\"") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:  # idle threads sleep instead of spinning: kinder to a machine shared with other work
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass
class OnnxBundle(Bundle):
    """A Bundle scored by onnxruntime; `model` is None (there is no torch model)."""

    sessions: Dict[str, Any] = None  # file name -> onnxruntime.InferenceSession

    @property
    def has_encoder(self) -> bool:
        return FRAMES_FILE in self.sessions

    def encoder(self):
        if not self.has_encoder:
            raise BundleError(f"{self.path}: exported from a bundle trained on precomputed features; it cannot "
                              "embed audio (push embeddings with LiveSession.push_embedding)")
        return self.sessions[FRAMES_FILE]

    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Segment embeddings float32 [n, d_in] of mono waves at `sample_rate`, one segment at a time."""
        self.encoder()
        meta = self.meta
        need = max(min_segment_samples(meta["min_segment_sec"], self.sample_rate), int(meta["encoder_min_samples"]))
        out = np.empty((len(waves), self.d_in), dtype=np.float32)
        for i, wave in enumerate(waves):
            wave = np.asarray(wave, dtype=np.float32)
            if len(wave) < need:
                wave = np.pad(wave, (0, need - len(wave)))
            plan = split_into_chunks(torch.from_numpy(wave)[None], torch.tensor([len(wave)]),
                                     max_samples=int(meta["max_chunk_samples"]))
            frames = [self.sessions[FRAMES_FILE].run(None, {"chunk": plan.waves[k:k + 1, :n].numpy()})[0]
                      for k, n in enumerate(plan.wave_lens.tolist())]
            out[i] = self.sessions[POOL_FILE].run(None, {"frames": np.concatenate(frames, axis=1)})[0][0]
        return out

    def score_window(self, feats: np.ndarray, *, roles: Sequence[str], positions: np.ndarray,
                     time_feats: np.ndarray) -> tuple:
        p_negative, p_fine = self.sessions[CONTEXT_FILE].run(None, {
            "feats": np.asarray(feats, np.float32)[None],
            "role": np.array([[ROLE_IDS[r] for r in roles]], np.int64),
            "position": np.asarray(positions, np.int64)[None],
            "time_feats": np.asarray(time_feats, np.float32)[None]})
        return float(p_negative[0, -1]), p_fine[0, -1].astype(np.float32)

    def score_call(self, *args, **kwargs):
        raise BundleError(f"{self.path}: an ONNX export scores calls segment by segment (LiveSession); "
                          "score whole calls offline with the torch bundle")


def load_onnx_bundle(folder: str | Path, *, threads: int = 1, spin: bool = True) -> OnnxBundle:
    """Load and check an export folder (every file's sha256 against export.json).

    threads: onnxruntime intra-op threads per graph; spin: whether idle threads busy-wait (onnxruntime's
    default: lowest latency on a machine of its own).

    Raises:
        BundleError: naming the missing or modified file, or another export format.
    """
    folder = Path(folder)
    meta_path = folder / EXPORT_FILE
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: missing; not a ctxemo ONNX export (write one with `ctxemo export`)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != EXPORT_FORMAT:
        raise BundleError(f"{meta_path}: export format {meta.get('format')!r}, this ctxemo reads {EXPORT_FORMAT!r}")
    for name, digest in meta["files"].items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in {EXPORT_FILE})")
        if file_sha256(path) != digest:
            raise BundleError(f"{path}: modified since export (sha256 differs from {EXPORT_FILE})")
    meta["_sha256"] = file_sha256(meta_path)
    cfg = load_config([folder / "config.yaml"])
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    raw = json.loads((folder / "thresholds.json").read_text(encoding="utf-8"))
    fine = raw.get("fine")
    thresholds = Thresholds(binary=float(raw["binary"]),
                            fine=None if fine is None else np.array([float(fine[n]) for n in taxonomy.labels]))
    names: List[str] = [CONTEXT_FILE] + ([FRAMES_FILE, POOL_FILE] if meta.get("encoder") else [])
    sessions = {name: _session(folder / name, threads, spin) for name in names}
    smoother = PosteriorSmoother.from_state(meta["smoother"], taxonomy) if meta.get("smoother") else None
    return OnnxBundle(path=folder, cfg=cfg, taxonomy=taxonomy, model=None, thresholds=thresholds, meta=meta,
                      versions=meta.get("versions", {}), encoder_info=meta.get("encoder"), smoother=smoother,
                      calibrator=TemperatureScaler.from_state(meta.get("calibration")), sessions=sessions)
