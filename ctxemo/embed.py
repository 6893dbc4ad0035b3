"""The embedding cache: encode every manifest row once with the SegmentEncoder, and reuse the result
for as long as nothing it depends on (encoder, weights, audio files, crops) has changed.

Layout under `cache_dir` (one folder per encoder, so ablation arms with different encoders coexist):
    <family>-<encoder fingerprint[:12]>/embeddings.npy    float32 [N, D], row i = manifest row i
    <family>-<encoder fingerprint[:12]>/embeddings.json   sidecar: fingerprints + one hash per row
    <family>-<encoder fingerprint[:12]>/partial/shard-<key>.npy   finished shards of an unfinished run
A row is reused when the encoder fingerprint matches and its own audio hash (path, size, mtime,
crop, channel, rate) is in the previous sidecar; only the other rows are encoded, in shards of
`shard_rows` that are saved as they finish, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ctxemo.data.audio import audio_info
from ctxemo.io import save_npy, write_text
from ctxemo.errors import AudioError, ConfigError
from ctxemo.models.encoders import SegmentEncoder, as_encoder_config
from ctxemo.models.frontend import pad_waves
from ctxemo.models.backbones import check_local_folder, resolve_source, tiny_model_config

CACHE_FORMAT = "ctxemo-embeddings/1"
EMBEDDINGS_FILE = "embeddings.npy"
SIDECAR_FILE = "embeddings.json"
PAD_MULTIPLE_SEC = 0.25  # batch widths are rounded up to this (few distinct shapes: see pad_waves)
MAX_PADDING_FRAC = 0.25  # a batch may pad at most this share of its real audio (see length_buckets)


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


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- fingerprints

def source_identity(source: Optional[str], revision: Optional[str], *, seed: int) -> Optional[Dict[str, Any]]:
    """What identifies the encoder's weights. None when it cannot be known yet (hub id not cached).

    random init: the seed; local folder: config.json's content hash + size and mtime of every weight
    file; hub id: the commit the local hub cache resolves `revision` to.
    """
    kind, where = resolve_source(source)
    if kind == "random":
        return {"kind": "random", "seed": int(seed)}
    if kind == "local":
        check_local_folder(where)
        files = sorted(p for p in where.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
        return {
            "kind": "local", "path": str(where),
            "config_sha256": hashlib.sha256((where / "config.json").read_bytes()).hexdigest(),
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        }
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(where, "config.json", revision=revision)
    if not isinstance(cached, str):
        return None
    return {"kind": "hub", "id": where, "revision": revision, "commit": Path(cached).parent.name}


def encoder_fingerprint(cfg: DictConfig, *, encoder: Optional[SegmentEncoder] = None
                        ) -> Tuple[Optional[str], Dict[str, Any]]:
    """Hash of everything that decides a row's embedding apart from its audio.

    Included: family, source/revision/weights identity, the effective model config for random init
    (tiny defaults merged) and the seed, layers, pooling, normalize_waveform, whisper_pad_to_30s,
    max_chunk_sec, data.sample_rate/channel/min_segment_sec, torch + transformers versions, and for a
    caller-supplied (fine-tuned) encoder a hash of its trainable tensors. Left out: batch sizes,
    offline, gradient checkpointing, and finetune/lora for a freshly built encoder (LoRA starts as a no-op).
    Returns:
        (hex digest or None when the weights cannot be identified yet, the hashed description).
    """
    import transformers

    enc = as_encoder_config(cfg.encoder)
    identity = source_identity(enc.source, enc.revision, seed=cfg.seed)
    description: Dict[str, Any] = {
        "format": CACHE_FORMAT,
        "family": enc.family, "source": enc.source, "revision": enc.revision, "weights": identity,
        "model_config": {**tiny_model_config(enc.family), **enc.model_config} if enc.source is None else None,
        "layers": str(enc.layers), "pooling": enc.pooling, "normalize_waveform": enc.normalize_waveform,
        "whisper_pad_to_30s": enc.whisper_pad_to_30s, "max_chunk_sec": enc.max_chunk_sec,
        "sample_rate": int(cfg.data.sample_rate), "channel": int(cfg.data.channel),
        "min_segment_sec": float(cfg.data.min_segment_sec),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    if encoder is not None:
        digest = hashlib.sha256()
        for name, tensor in sorted(encoder.trainable_state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        description["trained_state_sha256"] = digest.hexdigest()
    return (_sha(description) if identity is not None else None), description


def row_hashes(specs: Sequence[AudioSpec]) -> List[str]:
    """One hash per row: resolved path, file size, mtime (ns) and crop. Raises AudioError if missing."""
    out, stats = [], {}
    for spec in specs:
        path = Path(spec.path).resolve()
        if path not in stats:
            try:
                st = path.stat()
            except OSError:
                raise AudioError(f"audio file not found: {spec.path}") from None
            stats[path] = (st.st_size, st.st_mtime_ns)
        out.append(_sha([str(path), *stats[path], spec.start_sec, spec.end_sec])[:32])
    return out


def cache_folder(cfg: DictConfig, cache_dir: Union[str, Path], encoder_fp: str) -> Path:
    """Where this encoder's cache lives under `cache_dir`."""
    return Path(cache_dir) / f"{cfg.encoder.family}-{encoder_fp[:12]}"


# ----------------------------------------------------------------------------- the cache

def embed_manifest(
    cfg: DictConfig,
    manifest_rows: Sequence[RowLike],
    *,
    cache_dir: Union[str, Path],
    progress: bool = True,
    encoder: Optional[SegmentEncoder] = None,
    device: Optional[str] = None,
    shard_rows: int = 256,
    on_shard_done: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """Segment embeddings for every manifest row, from the cache where valid, else computed.

    Args:
        cfg: the full experiment config (uses encoder, data.sample_rate, data.channel,
            data.min_segment_sec, seed, train.device).
        manifest_rows: per row an AudioSpec, a (path, start_sec, end_sec) tuple or a dict.
        cache_dir: root folder; this encoder's files go to `cache_folder(...)` below it.
        progress: show a tqdm bar over the rows being encoded.
        encoder: an already built (e.g. fine-tuned) encoder to use instead of building one from
            cfg.encoder; its trainable weights then enter the fingerprint.
        device: "cpu" / "cuda"; default from cfg.train.device ("auto": cuda when available).
        shard_rows: rows per resumable shard.
        on_shard_done: called with the number of shards finished so far in this call (tests use it
            to simulate an interruption).
    Returns:
        float32 [N, D].
    Raises:
        AudioError: a missing or unreadable audio file (named).
        ConfigError: an encoder that cannot be built (see SegmentEncoder.from_config).
    """
    specs = [as_audio_spec(r) for r in manifest_rows]
    hashes = row_hashes(specs)
    audio_fp = _sha(hashes)
    encoder_fp, description = encoder_fingerprint(cfg, encoder=encoder)
    if encoder_fp is None:  # a hub id not in the local cache yet: load (download) it, then identify it
        supplied = encoder
        encoder = encoder or build_cache_encoder(cfg)
        encoder_fp, description = encoder_fingerprint(cfg, encoder=supplied)
        if encoder_fp is None:
            raise ConfigError(f"encoder.source {cfg.encoder.source!r}: loaded, but its hub revision cannot be "
                              "resolved in the local hub cache, so cached embeddings could go stale")
    folder = cache_folder(cfg, cache_dir, encoder_fp)
    sidecar = _read_sidecar(folder)
    old = _load_matching(folder, sidecar, encoder_fp)
    if old is not None and sidecar["audio_fingerprint"] == audio_fp and old.shape[0] == len(specs):
        return old

    # Reuse any unchanged row of the previous result for this encoder; encode the rest in shards.
    previous = {h: i for i, h in enumerate(sidecar["row_hashes"])} if old is not None else {}
    todo = [i for i, h in enumerate(hashes) if h not in previous]
    shards = [todo[k: k + shard_rows] for k in range(0, len(todo), shard_rows)]
    partial = folder / "partial"
    results: Dict[int, np.ndarray] = {}
    bar = tqdm(total=len(todo), desc=f"embed {cfg.encoder.family}", unit="seg", disable=not progress)
    for number, rows in enumerate(shards, start=1):
        key = _sha([encoder_fp, [hashes[i] for i in rows]])[:24]
        shard_path = partial / f"shard-{key}.npy"
        values = _load_shard(shard_path, len(rows))  # finished by an earlier, interrupted call?
        if values is not None:
            bar.update(len(rows))
        else:
            encoder = encoder or build_cache_encoder(cfg)
            values = encode_rows(cfg, encoder, [specs[i] for i in rows], device=device, bar=bar)
            save_npy(shard_path, np.ascontiguousarray(values, dtype=np.float32))
        results.update(zip(rows, values))
        if on_shard_done is not None:
            on_shard_done(number)
    bar.close()

    dim = old.shape[1] if old is not None else (next(iter(results.values())).shape[0] if results else 0)
    out = np.empty((len(specs), dim), dtype=np.float32)
    for i, h in enumerate(hashes):
        out[i] = results[i] if i in results else old[previous[h]]
    # Drop the old sidecar first: a crash between the two writes must not pair new rows with old hashes.
    (folder / SIDECAR_FILE).unlink(missing_ok=True)
    save_npy(folder / EMBEDDINGS_FILE, np.ascontiguousarray(out, dtype=np.float32))
    meta = {"format": CACHE_FORMAT, "encoder_fingerprint": encoder_fp, "audio_fingerprint": audio_fp,
            "n_rows": len(specs), "dim": dim, "dtype": "float32", "encoder": description, "row_hashes": hashes}
    write_text(folder / SIDECAR_FILE, json.dumps(meta, indent=1))
    for path in partial.glob("shard-*.npy") if partial.is_dir() else []:
        path.unlink(missing_ok=True)
    return out


def _load_shard(path: Path, n_rows: int) -> Optional[np.ndarray]:
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return values if values.dtype == np.float32 and values.ndim == 2 and values.shape[0] == n_rows else None


def _read_sidecar(folder: Path) -> Optional[Dict[str, Any]]:
    try:
        meta = json.loads((folder / SIDECAR_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == CACHE_FORMAT else None


def _load_matching(folder: Path, sidecar: Optional[Dict[str, Any]], encoder_fp: str) -> Optional[np.ndarray]:
    """The cached array if its sidecar belongs to this encoder and the file is intact, else None."""
    if sidecar is None or sidecar.get("encoder_fingerprint") != encoder_fp:
        return None
    try:
        arr = np.load(folder / EMBEDDINGS_FILE, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.dtype != np.float32 or arr.shape != (sidecar["n_rows"], sidecar["dim"]):
        return None
    return arr


def build_cache_encoder(cfg: DictConfig) -> SegmentEncoder:
    """A fresh encoder for embedding: frozen (LoRA would start as a no-op anyway), seeded random init."""
    return build_seeded_encoder(cfg, finetune="frozen", gradient_checkpointing=False)


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


def _resolve_device(cfg: DictConfig, device: Optional[str]) -> torch.device:
    choice = device or OmegaConf.select(cfg, "train.device", default="auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


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


def read_segment(cfg: DictConfig, spec: AudioSpec) -> np.ndarray:
    """One segment's mono waveform, cropped, at cfg.data.sample_rate from cfg.data.channel."""
    from ctxemo.data.audio import read_audio

    return read_audio(spec.path, start_sec=spec.start_sec, end_sec=spec.end_sec, channel=int(cfg.data.channel),
                      target_sr=int(cfg.data.sample_rate))


def pad_segments(cfg: DictConfig, waves: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    """`pad_waves` with the data config's minimum segment length and the 0.25-s width grid."""
    sr = int(cfg.data.sample_rate)
    return pad_waves(waves, min_samples=max(int(round(float(cfg.data.min_segment_sec) * sr)), 1),
                     multiple=int(PAD_MULTIPLE_SEC * sr))


def encode_rows(cfg: DictConfig, encoder: SegmentEncoder, specs: Sequence[AudioSpec], *, device: Optional[str] = None,
                bar: Optional[tqdm] = None) -> np.ndarray:
    """Embeddings [len(specs), D] in the given order, computed in length-bucketed batches (no cache)."""
    target = _resolve_device(cfg, device)
    was_training = encoder.training
    encoder = encoder.to(target).eval()
    batches = length_buckets(_durations_sec(specs), batch_size=int(cfg.encoder.batch_size),
                             max_batch_sec=float(cfg.encoder.max_batch_sec))
    out = np.empty((len(specs), encoder.output_dim), dtype=np.float32)
    with torch.inference_mode():
        for batch in batches:
            padded, lens = pad_segments(cfg, [read_segment(cfg, specs[i]) for i in batch])
            emb = encoder(padded.to(target), lens.to(target))
            out[batch] = emb.float().cpu().numpy()
            if bar is not None:
                bar.update(len(batch))
    encoder.train(was_training)  # a caller's encoder goes back the way it came
    return out
