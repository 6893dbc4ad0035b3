"""Atomic file writes: write to a temp file in the target folder, then rename over the target.

A run killed mid-write leaves either the old file or the new one, never half of one that a
reader (or a resumed run) would take as complete.

File permissions, one rule for every output (run folders, caches, bundles, predictions, plots): readable
by their owner only (files 0600, folders 0700). They hold per-caller emotion scores and call/caller ids
of a crisis hotline: health data about identifiable people, which a shared server's usual umask (022)
would make readable to every account. The `ctxemo` command runs under `private_outputs()`; sharing is a
deliberate `chmod -R g+rX <folder>`. (Atomic writes are 0600 whatever the umask: `mkstemp`.)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

OUTPUT_UMASK = 0o077  # files 0600, folders 0700: see the module docstring


@contextmanager
def private_outputs() -> Iterator[None]:
    """Everything created inside is owner-only (the process umask, restored after)."""
    previous = os.umask(OUTPUT_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def remove_leftover_temps(folder: str | Path) -> int:
    """Remove the `atomic_path` temp files (`.name.*.tmp`) a killed process left in `folder`; how many.
    Only where one writer owns the folder at a time (a cache folder under its lock, a fold's own job), or
    another writer's file in flight would go too."""
    folder = Path(folder)
    leftovers = list(folder.glob(".*.tmp")) if folder.is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


def swap_in_folder(built: Path, target: Path) -> Path:
    """Put a fully written temp folder `built` in place of `target` (bundles, exports): the old folder is
    renamed aside first and removed only after the rename, so a reader never sees half of either."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    built.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json_text(obj) + "\n")


def json_text(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (what jq and JavaScript read): NaN and infinities, undefined metrics, become null."""
    return json.dumps(json_safe(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def json_safe(obj: Any) -> Any:
    """obj with numpy values as Python ones, paths as str and non-finite floats as None, recursively."""
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    if isinstance(obj, (np.generic, np.ndarray)):
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
    return Path(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (features files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
