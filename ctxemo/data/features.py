"""Precomputed segment features: a float32 `.npy` [N, D], row i = manifest row i (docs/design.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ctxemo.data.manifest import Manifest
from ctxemo.errors import ManifestError


def load_features(path: str | Path, n_rows: int, *, manifest: Optional[Manifest] = None) -> np.ndarray:
    """Load and check precomputed features.

    Args:
        path: `.npy` file holding a float array [N, D].
        n_rows: number of manifest rows it must align with.
        manifest: that manifest, if loaded: a bad row is then named by its manifest line and call.
    Returns:
        float32 [N, D].
    Raises:
        ManifestError: missing/unreadable file, wrong rank, row count mismatch, NaN/Inf (naming the row).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"features file not found: {path}")
    try:
        feats = np.load(path, allow_pickle=False)  # never unpickle: the file is data
    except Exception as exc:
        raise ManifestError(f"{path}: not a readable .npy array ({exc})") from None
    if feats.ndim != 2:
        raise ManifestError(f"{path}: features must be 2-D [N, D], got shape {feats.shape}")
    if feats.shape[0] != n_rows:
        raise ManifestError(f"{path}: {feats.shape[0]} feature rows but the manifest has {n_rows} rows")
    if not np.issubdtype(feats.dtype, np.floating):
        raise ManifestError(f"{path}: features must be floating point, got {feats.dtype}")
    bad = np.flatnonzero(~np.isfinite(feats).all(axis=1))
    if len(bad):
        if manifest is not None:
            where = ", ".join(f"line {manifest.line[r]} (call {manifest.call_id[r]!r}, segment "
                              f"{manifest.segment_index[r]})" for r in bad[:5])
            raise ManifestError(f"{path}: NaN or Inf in the features of {len(bad)} row(s); {manifest.path}: {where}")
        raise ManifestError(f"{path}: NaN or Inf in feature row(s) {bad[:5].tolist()} (0-based, manifest row order)")
    return feats.astype(np.float32, copy=False)
