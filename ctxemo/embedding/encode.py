"""The one segment-embedding loop: segments (files + crops, or in-memory waves) -> SegmentEncoder
embeddings [n, D], in batches padded to a 0.25-s width grid (few distinct shapes) and planned by device
(`batch_plan`: tight buckets on CPU, length buckets under `encoder.max_batch_sec` on a GPU). The cache (ctxemo.embedding.cache), end-to-end training, bundles and live scoring all embed here,
so a segment gets the same embedding whichever path reads it.

Leaf functions take `EmbedSettings` (the audio and batching fields they read), not the whole config.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ctxemo.data.audio import audio_info
from ctxemo.data.short_segments import min_segment_samples
from ctxemo.device import embedding_autocast, resolve_device
from ctxemo.models.frontend import pad_waves
from ctxemo.models.segment_encoder import SegmentEncoder, as_encoder_config

PAD_MULTIPLE_SEC = 0.25  # batch widths are rounded up to this (few distinct shapes: see pad_waves)
MAX_PADDING_FRAC = 0.25  # a batch may pad at most this share of its real audio (see length_buckets)
# CPU batches hold at most this much (padded) audio: 8 s of wav2vec2 frames (400) already fill the matmuls
# of a base-size layer, while larger batches only add memory (a 16 x 15-s batch peaked at 3.6 GB).
CPU_BATCH_SEC = 8.0


@dataclass(frozen=True)
class EmbedSettings:
    """The config fields the embedding loop reads (data.* audio settings, encoder.* batching, train.device)."""

    sample_rate: int = 16000
    channel: int = -1
    min_segment_sec: float = 0.1
    batch_size: int = 16
    max_batch_sec: float = 160.0
    device: str = "auto"
    telephone_share: float = 0.0  # data.telephone_share
    precision: str = "float32"  # encoder.precision

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "EmbedSettings":
        return cls(sample_rate=int(cfg.data.sample_rate), channel=int(cfg.data.channel),
                   min_segment_sec=float(cfg.data.min_segment_sec), batch_size=int(cfg.encoder.batch_size),
                   max_batch_sec=float(cfg.encoder.max_batch_sec),
                   device=str(OmegaConf.select(cfg, "train.device", default="auto")),
                   telephone_share=float(OmegaConf.select(cfg, "data.telephone_share", default=0.0)),
                   precision=str(OmegaConf.select(cfg, "encoder.precision", default="float32")))


@dataclass(frozen=True)
class AudioSpec:
    """Where one manifest row's audio lives."""

    path: Path
    start_sec: Optional[float] = None
    end_sec: Optional[float] = None


RowLike = Union[AudioSpec, Tuple[Any, Optional[float], Optional[float]], Dict[str, Any]]


def as_audio_spec(row: RowLike) -> AudioSpec:
    """AudioSpec from an AudioSpec, a (path, start_sec, end_sec) tuple or a dict with those keys."""
    if isinstance(row, AudioSpec):
        return row
    if isinstance(row, dict):
        return AudioSpec(Path(row["path"]), row.get("start_sec"), row.get("end_sec"))
    path, start, end = row
    return AudioSpec(Path(path), start, end)


# ----------------------------------------------------------------------------- fingerprints


# ----------------------------------------------------------------------------- the cache


def build_cache_encoder(cfg: DictConfig) -> SegmentEncoder:
    """A fresh encoder for embedding: frozen (LoRA would start as a no-op anyway), seeded random init.
    With `encoder.precision: bfloat16` the backbone's weights are stored in bf16: half the memory, and no
    per-op cast of every weight under autocast (the layer weights and pooling stay float32)."""
    encoder = build_seeded_encoder(cfg, finetune="frozen", gradient_checkpointing=False)
    if str(OmegaConf.select(cfg, "encoder.precision", default="float32")) == "bfloat16":
        encoder.upstream.model.to(torch.bfloat16)
    return encoder


def build_seeded_encoder(cfg: DictConfig, **overrides: Any) -> SegmentEncoder:
    """`cfg.encoder` (with `overrides` of its fields) built under `cfg.seed`: the same config gives the same
    random weights, so an end-to-end model starts from the encoder that filled the embedding cache.
    Seeded inside a forked RNG, so the caller's RNG stream is not disturbed."""
    enc_cfg = as_encoder_config(cfg.encoder)
    for key, value in overrides.items():
        setattr(enc_cfg, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        return SegmentEncoder.from_config(enc_cfg, sample_rate=int(cfg.data.sample_rate))


def _durations_sec(specs: Sequence[AudioSpec]) -> List[float]:
    """Segment lengths for bucketing, from the crop when given, else from the file header."""
    out = []
    for spec in specs:
        if spec.start_sec is not None and spec.end_sec is not None:
            out.append(float(spec.end_sec) - float(spec.start_sec))
            continue
        info = audio_info(spec.path)  # errors name the file (and say "empty" for 0-byte files)
        end = float(spec.end_sec) if spec.end_sec is not None else info.frames / info.samplerate
        out.append(end - float(spec.start_sec or 0.0))
    return out


def length_buckets(durations_sec: Sequence[float], *, batch_size: int, max_batch_sec: float,
                   max_padding_frac: float = MAX_PADDING_FRAC) -> List[List[int]]:
    """Batches of indices, shortest first. Each holds at most `batch_size` segments, at most
    `max_batch_sec` of padded audio (count x longest), and pads at most `max_padding_frac` of its real
    audio; a segment longer than the budget goes alone.

    Args:
        durations_sec: per segment.
        max_padding_frac: padding is pure waste (and on CPU batching buys no parallelism), so a batch
            closes rather than pad, e.g., a 2-s segment to 10 s.
    Returns:
        Lists of indices into `durations_sec`.
    """
    order = sorted(range(len(durations_sec)), key=lambda i: durations_sec[i])
    batches: List[List[int]] = []
    real_sec = 0.0
    for i in order:
        d = durations_sec[i]
        if batches:
            n = len(batches[-1]) + 1  # d is the longest so far: sorted ascending
            if n <= batch_size and n * d <= max_batch_sec and n * d <= (1 + max_padding_frac) * (real_sec + d):
                batches[-1].append(i)
                real_sec += d
                continue
        batches.append([i])
        real_sec = d
    return batches


def tight_buckets(durations_sec: Sequence[float], *, batch_size: int, max_batch_sec: float,
                  grid_sec: float = PAD_MULTIPLE_SEC) -> List[List[int]]:
    """Batches of segments that share one padded width on the `grid_sec` grid: no padding beyond what a
    segment alone gets. At most `batch_size` segments and `max_batch_sec` of padded audio each; in
    practice short segments are grouped (small matmuls are slow) and long ones go alone."""
    by_width: Dict[int, List[int]] = {}
    for i, d in enumerate(durations_sec):
        by_width.setdefault(max(int(np.ceil(d / grid_sec - 1e-9)), 1), []).append(i)
    batches: List[List[int]] = []
    for cells in sorted(by_width):
        per_batch = max(1, min(batch_size, int(max_batch_sec // (cells * grid_sec))))
        members = by_width[cells]
        batches.extend(members[j: j + per_batch] for j in range(0, len(members), per_batch))
    return batches


def batch_plan(durations_sec: Sequence[float], *, settings: EmbedSettings, device: torch.device) -> List[List[int]]:
    """How segments are batched for `device`.

    On a GPU wide batches buy parallelism, so segments are length-bucketed under `encoder.max_batch_sec`
    (padding at most MAX_PADDING_FRAC). On CPU they buy none: every padded frame is work, and a wide
    batch's activations are memory, so only equal-width segments share a batch, up to CPU_BATCH_SEC.
    Segments longer than `encoder.max_chunk_sec` are cut into chunks inside the encoder either way.
    """
    if device.type == "cpu":
        return tight_buckets(durations_sec, batch_size=settings.batch_size,
                             max_batch_sec=min(settings.max_batch_sec, CPU_BATCH_SEC))
    return length_buckets(durations_sec, batch_size=settings.batch_size, max_batch_sec=settings.max_batch_sec)


def read_segment(settings: EmbedSettings, spec: AudioSpec) -> np.ndarray:
    """One segment's mono waveform, cropped, at the settings' sample rate from their channel."""
    from ctxemo.data.audio import read_audio
    from ctxemo.data.telephone import is_telephone_row, simulate_telephone

    wave = read_audio(spec.path, start_sec=spec.start_sec, end_sec=spec.end_sec, channel=settings.channel,
                      target_sr=settings.sample_rate)
    if is_telephone_row(f"{spec.path}|{spec.start_sec}|{spec.end_sec}", settings.telephone_share):
        wave = simulate_telephone(wave, settings.sample_rate)
    return wave


def pad_segments(settings: EmbedSettings, waves: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    """`pad_waves` with the minimum segment length (the short-segment rule of `ctxemo.data.short_segments`)
    and the 0.25-s width grid."""
    sr = settings.sample_rate
    return pad_waves(waves, min_samples=min_segment_samples(settings.min_segment_sec, sr),
                     multiple=int(PAD_MULTIPLE_SEC * sr))


def embed_batches(encoder: SegmentEncoder, durations_sec: Sequence[float], load: Callable[[int], np.ndarray], *,
                  settings: EmbedSettings, device: Optional[str] = None, bar: Optional[tqdm] = None) -> np.ndarray:
    """The loop: embeddings [n, D] of segments 0..n-1 in order; `load(i)` gives segment i's waveform, read
    only when its batch is encoded (a corpus is never held in memory at once).

    On CPU the torch threads become concurrent passes of one thread each over different batches (one
    encoder, shared weights): a base-size layer on one segment is too small an op to split well across
    threads, and threads that spin in every op collapse when another job holds a core. Each row is the
    one-thread embedding of its segment, whatever the thread count.
    """
    target = resolve_device(device or settings.device)
    was_training = encoder.training
    encoder = encoder.to(target).eval()
    out = np.empty((len(durations_sec), encoder.output_dim), dtype=np.float32)
    batches = batch_plan(durations_sec, settings=settings, device=target)

    def encode(batch: List[int]) -> None:
        # Both thread-local: entered by each pass.
        with torch.inference_mode(), embedding_autocast(target, settings.precision):
            padded, lens = pad_segments(settings, [load(i) for i in batch])
            out[batch] = encoder(padded.to(target), lens.to(target)).float().cpu().numpy()
        if bar is not None:
            bar.update(len(batch))

    # Torch encoders only: the openSMILE extractor that bundles pass in here is not known to be thread-safe.
    concurrent = target.type == "cpu" and isinstance(encoder, SegmentEncoder)
    passes = min(torch.get_num_threads(), len(batches)) if concurrent else 1
    if passes <= 1:
        for batch in batches:
            encode(batch)
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(passes) as pool:
                list(pool.map(encode, batches))  # list(): re-raises a pass's error here
        finally:
            torch.set_num_threads(threads)
    encoder.train(was_training)  # a caller's encoder goes back the way it came
    return out


def encode_rows(settings: EmbedSettings, encoder: SegmentEncoder, specs: Sequence[AudioSpec], *,
                device: Optional[str] = None, bar: Optional[tqdm] = None) -> np.ndarray:
    """Embeddings [len(specs), D] of audio files (and crops) in the given order (no cache)."""
    return embed_batches(encoder, _durations_sec(specs), lambda i: read_segment(settings, specs[i]),
                         settings=settings, device=device, bar=bar)


def embed_waves(encoder: SegmentEncoder, waves: Sequence[np.ndarray], *, settings: EmbedSettings,
                device: Optional[str] = None) -> np.ndarray:
    """Embeddings [len(waves), D] of in-memory mono float32 segments at the settings' sample rate."""
    return embed_batches(encoder, [len(w) / settings.sample_rate for w in waves], lambda i: waves[i],
                         settings=settings, device=device)
