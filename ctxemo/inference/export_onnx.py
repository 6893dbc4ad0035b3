"""`ctxemo export BUNDLE --out DIR --format onnx`: a bundle's segment encoder (LoRA merged into its
weights) and its context model + heads as ONNX graphs with dynamic axes, beside the thresholds and the
taxonomy, for scoring outside PyTorch (the folder layout and the glue between the graphs:
ctxemo.inference.onnx_bundle).

Why three graphs and not one: the encoder's work per segment depends on its length (long segments are
encoded in chunks and their frames pooled together), and the context model runs over a window of
segments that live scoring keeps between turns. Cutting at those seams leaves each graph free of
data-dependent control flow, so the TorchScript-based exporter traces it exactly for every length.
The export is checked before it is written: each graph against the torch module on inputs of lengths
other than those traced.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from ctxemo import __version__
from ctxemo.errors import BundleError, ConfigError
from ctxemo.inference.bundle import Bundle, load_bundle, probe_signal
from ctxemo.inference.onnx_bundle import (
    CONTEXT_FILE,
    COPIED_FILES,
    EXPORT_FILE,
    EXPORT_FORMAT,
    FRAMES_FILE,
    POOL_FILE,
    load_onnx_bundle,
)
from ctxemo.io import file_sha256, swap_in_folder, write_json
from ctxemo.models.call_model import CallModel
from ctxemo.models.featurizer import mix_layers
from ctxemo.models.segment_encoder import SegmentEncoder
from ctxemo.models.upstream import SSLUpstream

OPSET = 17
CHECK_TOLERANCE = 1e-4  # max |onnxruntime - torch| on the check inputs (embeddings relative to their scale)


# ----------------------------------------------------------------------------- modules as exported

def merge_lora(encoder: SegmentEncoder) -> SegmentEncoder:
    """A copy of the encoder whose LoRA layers are folded into plain Linear weights (W + B A scale)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(encoder).eval()
    for name, module in list(merged.upstream.model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = merged.upstream.model.get_submodule(parent_name) if parent_name else merged.upstream.model
            setattr(parent, child, module.get_base_layer())
    return merged


class ChunkFrames(nn.Module):
    """One chunk [1, t] whose every sample is valid -> mixed frame features [1, f, d].

    With no padding there is nothing to mask, so the backbone runs without an attention mask and
    `MaskedGroupNorm` falls back to plain GroupNorm: exactly what `SSLUpstream` computes for that chunk,
    without its per-segment Python loops (which tracing would freeze at the traced lengths)."""

    def __init__(self, encoder: SegmentEncoder):
        super().__init__()
        self.upstream, self.layers, self.layer_weights = encoder.upstream, encoder.layers, encoder.layer_weights

    def forward(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.upstream.normalize_waveform:  # as normalize_waves on a chunk with no padding
            mean = chunk.mean(dim=1, keepdim=True)
            chunk = (chunk - mean) / torch.sqrt(((chunk - mean) ** 2).mean(dim=1, keepdim=True) + 1e-7)
        out = self.upstream.model(chunk, output_hidden_states=True)
        hidden = list(out.hidden_states)
        hidden[-1] = out.last_hidden_state
        return mix_layers(hidden, self.layers, self.layer_weights)


class FramePooling(nn.Module):
    """A segment's frames [1, f, d] (all valid) -> its embedding [1, d_in]."""

    def __init__(self, encoder: SegmentEncoder):
        super().__init__()
        self.pooling = encoder.pooling

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.pooling(frames, frame_mask=torch.ones_like(frames[..., 0], dtype=torch.bool)).float()


class WindowScores(nn.Module):
    """A window of one call's in-context segments -> (p_negative [1, s], p_fine [1, s, c])."""

    def __init__(self, model: CallModel):
        super().__init__()
        self.model = model

    def forward(self, feats, role, position, time_feats):
        from ctxemo.data.datasets import CallInputs

        inputs = CallInputs(feats=feats, seg_mask=torch.ones_like(role, dtype=torch.bool), role=role,
                            position=position, time_feats=time_feats)
        return self.model.probabilities(self.model(inputs))


# ----------------------------------------------------------------------------- export

def _expm1(g, x):
    """aten::expm1, which the TorchScript exporter lacks, as exp(x) - 1: the heads use it only for
    log(1 - P(none)) at P(none) <= 1 - 1e-6, where the lost digits move p_negative by < 1e-7."""
    return g.op("Sub", g.op("Exp", x), g.op("Constant", value_t=torch.tensor(1.0)))


def _export(module: nn.Module, args: tuple, path: Path, *, inputs, outputs, dynamic: Dict[str, Dict[int, str]]):
    import warnings

    torch.onnx.register_custom_op_symbolic("aten::expm1", _expm1, OPSET)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints: checked by `_check` below
        torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)


def _check(name: str, got: np.ndarray, want: torch.Tensor, *, relative: bool = False) -> float:
    want = want.detach().float().cpu().numpy()
    error = float(np.abs(got - want).max())
    scale = max(1.0, float(np.abs(want).max())) if relative else 1.0
    if not error <= CHECK_TOLERANCE * scale:
        raise BundleError(f"ONNX export check failed: {name} differs from torch by {error:.2e} (> {CHECK_TOLERANCE * scale:.1e})")
    return error


def export_onnx(bundle: Bundle | str | Path, out_dir: str | Path, *, check: bool = True) -> Path:
    """Write the export folder (see ctxemo.inference.onnx_bundle) atomically and return it.

    Raises:
        ConfigError: onnx/onnxruntime are not installed, or the encoder family cannot be exported
            (Whisper and openSMILE are not supported yet; the wav2vec2 family is).
        BundleError: a graph does not reproduce torch within CHECK_TOLERANCE.
    """
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxruntime: pip install \".[onnx]\"") from None
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        encoder_meta = _export_encoder(bundle, tmp) if bundle.has_encoder else None
        _export_context(bundle, tmp)
        for name in COPIED_FILES:
            shutil.copy2(bundle.path / name, tmp / name)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        meta = {
            "format": EXPORT_FORMAT, "ctxemo_version": __version__, "opset": OPSET,
            "source_bundle": str(bundle.path), "source_bundle_id": bundle.id, "d_in": bundle.d_in,
            "time_features": bundle.uses_time, "encoder": encoder_meta,
            "min_segment_sec": float(bundle.cfg.data.min_segment_sec),
            "smoother": bundle.meta.get("smoother"), "versions": bundle.versions,
            "calibration": None if bundle.calibrator is None else bundle.calibrator.state(),
            "files": {name: file_sha256(tmp / name) for name in files},
        }
        if encoder_meta:
            meta.update(encoder_min_samples=encoder_meta["min_samples"],
                        max_chunk_samples=encoder_meta["max_chunk_samples"])
        write_json(tmp / EXPORT_FILE, meta)
        if check:
            _check_export(bundle, tmp)
        swap_in_folder(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _export_encoder(bundle: Bundle, folder: Path) -> Dict[str, object]:
    encoder = bundle.encoder()
    if not isinstance(encoder, SegmentEncoder) or not isinstance(encoder.upstream, SSLUpstream):
        raise ConfigError(f"{bundle.path}: encoder.family={bundle.cfg.encoder.family!r} cannot be exported to "
                          "ONNX yet (the wav2vec2 family can: wav2vec2, hubert, wavlm, data2vec-audio)")
    merged = merge_lora(encoder.cpu())
    chunk = torch.from_numpy(probe_signal(bundle.sample_rate, 1.3))[None]
    _export(ChunkFrames(merged), (chunk,), folder / FRAMES_FILE, inputs=["chunk"], outputs=["frames"],
            dynamic={"chunk": {1: "samples"}, "frames": {1: "frames"}})
    with torch.no_grad():
        frames = ChunkFrames(merged)(chunk)
    _export(FramePooling(merged), (frames,), folder / POOL_FILE, inputs=["frames"], outputs=["embedding"],
            dynamic={"frames": {1: "frames"}})
    upstream = merged.upstream
    # The graphs compute in float32 whatever `encoder.precision` the bundle embeds with: a bf16 bundle's
    # export then scores like its exact float32 twin (within bf16 rounding of the bundle's own scores).
    return {"family": str(bundle.cfg.encoder.family), "lora_merged": encoder.lora is not None,
            "precision": "float32", "bundle_precision": str(OmegaConf.select(bundle.cfg, "encoder.precision", default="float32")),
            "min_samples": int(upstream.min_samples), "max_chunk_samples": int(upstream.max_chunk_samples)}


def _export_context(bundle: Bundle, folder: Path) -> None:
    s, d = 5, bundle.d_in
    args = (torch.randn(1, s, d), torch.tensor([[0, 1, 0, 0, 1]]), torch.arange(s)[None], torch.rand(1, s, 2))
    _export(WindowScores(bundle.model.cpu()), args, folder / CONTEXT_FILE,
            inputs=["feats", "role", "position", "time_feats"], outputs=["p_negative", "p_fine"],
            dynamic={"feats": {1: "segments"}, "role": {1: "segments"}, "position": {1: "segments"},
                     "time_feats": {1: "segments"}, "p_negative": {1: "segments"}, "p_fine": {1: "segments"}})


def _check_export(bundle: Bundle, folder: Path) -> None:
    """Each graph against torch on lengths it was not traced with (a frozen shape would show here)."""
    exported = load_onnx_bundle(folder)
    rng = np.random.default_rng(0)
    for s in (1, 3, 9):
        feats = rng.normal(size=(s, bundle.d_in)).astype(np.float32)
        roles = ["caller" if i % 3 else "operator" for i in range(s)]
        times = rng.random((s, 2)).astype(np.float32)
        p_onnx = exported.score_window(feats, roles=roles, positions=np.arange(s) + 7, time_feats=times)
        p_torch = bundle.score_window(feats, roles=roles, positions=np.arange(s) + 7, time_feats=times)
        _check(f"{CONTEXT_FILE} p_negative ({s} segments)", np.array(p_onnx[0]), torch.tensor(p_torch[0]))
        _check(f"{CONTEXT_FILE} p_fine ({s} segments)", p_onnx[1], torch.from_numpy(p_torch[1]))
    if exported.has_encoder:
        waves = [probe_signal(bundle.sample_rate, sec) for sec in (0.05, 0.7, 2.1)]
        _check("the segment embedding", exported.embed(waves), torch.from_numpy(bundle.embed(waves)), relative=True)


def export_bundle(bundle: str | Path, out_dir: str | Path, *, format: str = "onnx",
                  log=lambda message: None) -> Path:
    """`ctxemo export`: the bundle in `format` (only "onnx" so far) under out_dir."""
    if format != "onnx":
        raise ConfigError(f"--format {format!r}: only onnx is supported")
    path = export_onnx(bundle, out_dir)
    log(f"wrote {path} ({', '.join(sorted(p.name for p in path.iterdir()))})")
    return path
