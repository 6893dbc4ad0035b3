"""The embedding cache: encode every manifest row once with the SegmentEncoder (ctxemo.embedding.encode),
and reuse the result for as long as nothing it depends on (encoder, weights, audio files, crops) has changed.

Layout under `cache_dir` (one folder per encoder, so ablation arms with different encoders coexist):
    <family>-<encoder fingerprint[:12]>/embeddings.npy    float32 [N, D]: the last manifest's rows in order,
                                                          then rows kept from earlier manifests
    <family>-<encoder fingerprint[:12]>/embeddings.json   sidecar: fingerprints + one hash and key per row
    <family>-<encoder fingerprint[:12]>/partial/shard-<key>.npy   finished shards of an unfinished run
A row is reused when the encoder fingerprint matches and its own audio hash (path, size, mtime,
crop, channel, rate) is in the sidecar; only the other rows are encoded, in shards of
`shard_rows` that are saved as they finish, so an interrupted run resumes where it stopped.
`cached_rows` is that cache for any row-wise extractor: openSMILE functionals
(ctxemo.embedding.opensmile_features) use it with their own fingerprint. Processes sharing a cache folder
take turns (`cache_lock`): the second finds the first one's result and reuses it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from ctxemo.embedding.encode import (
    AudioSpec,
    EmbedSettings,
    RowLike,
    as_audio_spec,
    build_cache_encoder,
    encode_rows,
)
from ctxemo.errors import AudioError, ConfigError
from ctxemo.io import remove_leftover_temps, save_npy, write_text
from ctxemo.models.backbones import (
    check_local_folder,
    resolve_source,
    tiny_model_config,
)
from ctxemo.models.segment_encoder import SegmentEncoder, as_encoder_config

CACHE_FORMAT = "ctxemo-embeddings/1"


EMBEDDINGS_FILE = "embeddings.npy"


SIDECAR_FILE = "embeddings.json"


LOCK_FILE = ".lock"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


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


def audio_reading(cfg: DictConfig) -> Dict[str, Any]:
    """How `read_segment` turns a row's file into samples (data.sample_rate/channel/min_segment_sec and
    data.telephone_share): part of every cache fingerprint, neural or openSMILE, since a change in any of
    them changes every row's features while the files stay the same."""
    reading: Dict[str, Any] = {"sample_rate": int(cfg.data.sample_rate), "channel": int(cfg.data.channel),
                               "min_segment_sec": float(cfg.data.min_segment_sec)}
    if cfg.data.get("telephone_share", 0.0):  # only when set: older caches keep their fingerprints
        reading["telephone_share"] = float(cfg.data.telephone_share)
    return reading


def encoder_fingerprint(cfg: DictConfig, *, encoder: Optional[SegmentEncoder] = None
                        ) -> Tuple[Optional[str], Dict[str, Any]]:
    """Hash of everything that decides a row's embedding apart from its audio.

    Included: family, source/revision/weights identity, the effective model config for random init
    (tiny defaults merged) and the seed, layers, pooling, normalize_waveform, whisper_pad_to_30s,
    max_chunk_sec, precision, `audio_reading`, torch + transformers versions, and for a
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
        **audio_reading(cfg),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    if enc.precision != "float32":  # only when set: older caches keep their fingerprints
        description["precision"] = enc.precision
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


def row_keys(specs: Sequence[AudioSpec]) -> List[str]:
    """One key per row naming where its audio is, "<resolved path>|<start>|<end>", but not what it holds: a row
    whose file changed keeps its key and gets a new hash, so the cache knows the old row is superseded."""
    return [f"{Path(spec.path).resolve()}|{spec.start_sec}|{spec.end_sec}" for spec in specs]


def _key_path(key: str) -> Path:
    return Path(key.rsplit("|", 2)[0])  # the crop fields hold no "|"; a path may


def audio_fingerprint(specs: Sequence[RowLike]) -> str:
    """One hash of every row's audio (`row_hashes`): what the cache compares, and what run.json records."""
    return _sha(row_hashes([as_audio_spec(r) for r in specs]))


def cache_folder(cfg: DictConfig, cache_dir: Union[str, Path], encoder_fp: str) -> Path:
    """Where this encoder's cache lives under `cache_dir`."""
    return Path(cache_dir) / f"{cfg.encoder.family}-{encoder_fp[:12]}"


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
    encoder_fp, description = encoder_fingerprint(cfg, encoder=encoder)
    if encoder_fp is None:  # a hub id not in the local cache yet: load (download) it, then identify it
        supplied = encoder
        encoder = encoder or build_cache_encoder(cfg)
        encoder_fp, description = encoder_fingerprint(cfg, encoder=supplied)
        if encoder_fp is None:
            raise ConfigError(f"encoder.source {cfg.encoder.source!r}: loaded, but its hub revision cannot be "
                              "resolved in the local hub cache, so cached embeddings could go stale")
    settings = EmbedSettings.from_config(cfg)

    def encode(rows: List[AudioSpec], bar: tqdm) -> np.ndarray:
        nonlocal encoder
        encoder = encoder or build_cache_encoder(cfg)
        return encode_rows(settings, encoder, rows, device=device, bar=bar)

    return cached_rows(specs, hashes, folder=cache_folder(cfg, cache_dir, encoder_fp), fingerprint=encoder_fp,
                       description=description, encode=encode, desc=f"embed {cfg.encoder.family}",
                       progress=progress, shard_rows=shard_rows, on_shard_done=on_shard_done)


def cached_rows(
    specs: Sequence[AudioSpec],
    hashes: Sequence[str],
    *,
    folder: Path,
    fingerprint: str,
    description: Dict[str, Any],
    encode: Callable[[List[AudioSpec], tqdm], np.ndarray],
    desc: str = "embed",
    progress: bool = True,
    shard_rows: int = 256,
    on_shard_done: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """The cache itself, for any row-wise extractor (the neural encoders, openSMILE functionals).

    Args:
        specs: the rows' audio; hashes: `row_hashes(specs)`.
        folder: this extractor's cache folder (`cache_folder`); fingerprint, description: what identifies
            the extractor (the sidecar's `encoder_fingerprint` and `encoder`).
        encode: float32 [len(rows), D] of some rows (updating the tqdm bar it is given); called only for
            rows that are neither cached nor in a finished shard.
    Returns:
        float32 [N, D], row i = specs[i]; written atomically to `folder` with its sidecar.
    """
    with cache_lock(folder):
        return _cached_rows(specs, list(hashes), folder=folder, fingerprint=fingerprint, description=description,
                            encode=encode, desc=desc, progress=progress, shard_rows=shard_rows,
                            on_shard_done=on_shard_done)


@contextmanager
def cache_lock(folder: Path, *, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)):
    """One process at a time in a cache folder (runs and arms on one encoder share it): an advisory lock on
    `folder/.lock`. The kernel drops it when its holder dies, even by SIGKILL, so it is never left stale."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"[embed] waiting for another ctxemo process to finish with {folder}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached_rows(specs: Sequence[AudioSpec], hashes: List[str], *, folder: Path, fingerprint: str,
                 description: Dict[str, Any], encode: Callable[[List[AudioSpec], tqdm], np.ndarray], desc: str,
                 progress: bool, shard_rows: int, on_shard_done: Optional[Callable[[int], None]]) -> np.ndarray:
    """`cached_rows` under the folder's lock."""
    sidecar = _read_sidecar(folder)
    old = _load_matching(folder, sidecar, fingerprint)
    # Reuse any unchanged row this encoder has embedded, for this manifest or another; encode the rest in shards.
    previous = {h: i for i, h in enumerate(sidecar["row_hashes"])} if old is not None else {}
    todo = [i for i, h in enumerate(hashes) if h not in previous]
    if old is not None and not todo:  # everything cached: nothing is rewritten
        where = [previous[h] for h in hashes]
        return old if where == list(range(old.shape[0])) else old[where]
    shards = [todo[k: k + shard_rows] for k in range(0, len(todo), shard_rows)]
    partial = folder / "partial"
    results: Dict[int, np.ndarray] = {}
    bar = tqdm(total=len(todo), desc=desc, unit="seg", disable=not progress)
    for number, rows in enumerate(shards, start=1):
        key = _sha([fingerprint, [hashes[i] for i in rows]])[:24]
        shard_path = partial / f"shard-{key}.npy"
        values = _load_shard(shard_path, len(rows))  # finished by an earlier, interrupted call?
        if values is not None:
            bar.update(len(rows))
        else:
            values = encode([specs[i] for i in rows], bar)
            save_npy(shard_path, np.ascontiguousarray(values, dtype=np.float32))
        results.update(zip(rows, values))
        if on_shard_done is not None:
            on_shard_done(number)
    bar.close()

    dim = old.shape[1] if old is not None else (next(iter(results.values())).shape[0] if results else 0)
    out = np.empty((len(specs), dim), dtype=np.float32)
    for i, h in enumerate(hashes):
        out[i] = results[i] if i in results else old[previous[h]]
    # The stored file is this manifest's rows, then the rows of earlier manifests that this one does not hold
    # (a subset run must not throw away a full corpus's embeddings), except rows whose file has changed or gone.
    keys = row_keys(specs)
    kept = _kept_rows(sidecar, set(hashes), set(keys)) if old is not None else []
    stored = np.concatenate([out, old[kept]]) if kept else out
    all_hashes = hashes + [sidecar["row_hashes"][j] for j in kept]
    all_keys = keys + [sidecar["row_keys"][j] for j in kept]
    # Drop the old sidecar first: a crash between the two writes must not pair new rows with old hashes.
    (folder / SIDECAR_FILE).unlink(missing_ok=True)
    save_npy(folder / EMBEDDINGS_FILE, np.ascontiguousarray(stored, dtype=np.float32))
    meta = {"format": CACHE_FORMAT, "encoder_fingerprint": fingerprint, "audio_fingerprint": _sha(all_hashes),
            "n_rows": len(all_hashes), "dim": dim, "dtype": "float32", "encoder": description,
            "row_hashes": all_hashes, "row_keys": all_keys}
    write_text(folder / SIDECAR_FILE, json.dumps(meta, indent=1))
    for path in partial.glob("shard-*.npy") if partial.is_dir() else []:
        path.unlink(missing_ok=True)
    for place in (partial, folder):  # what an interrupted earlier call was writing when it died
        remove_leftover_temps(place)
    return out


def _kept_rows(sidecar: Dict[str, Any], hashes: set, keys: set) -> List[int]:
    """Rows of the stored result to carry over: not in the current manifest, not an older version of one of
    its rows (same key, other hash), and with their file still there (a deleted or moved corpus is not kept
    forever). A sidecar written before row keys were stored keeps none."""
    old_keys = sidecar.get("row_keys")
    if old_keys is None or len(old_keys) != len(sidecar["row_hashes"]):
        return []
    seen: set = set()
    exists: Dict[Path, bool] = {}
    kept = []
    for j, (h, k) in enumerate(zip(sidecar["row_hashes"], old_keys)):
        if h in hashes or k in keys or h in seen:
            continue
        path = _key_path(k)
        if path not in exists:
            exists[path] = path.is_file()
        if exists[path]:
            kept.append(j)
            seen.add(h)
    return kept


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
