
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
from omegaconf import DictConfig

from ctxemo.data.features import load_features
from ctxemo.data.manifest import Manifest, load_manifest
from ctxemo.errors import ConfigError, CtxemoError
from ctxemo.io import file_sha256
from ctxemo.taxonomy import Taxonomy


@dataclass
class CorpusData:
    manifest: Manifest
    feats: np.ndarray  # [n, d] float32, row i = manifest row i; d = 0 in end-to-end mode (no cached embeddings)
    inputs: Dict[str, Any] = field(default_factory=dict)  # `input_fingerprints`: what run.json records


def input_fingerprints(cfg: DictConfig, manifest: Manifest) -> Dict[str, Any]:
    """What a run's results depend on besides its config (recorded in run.json; a resume must match it):
    the manifest's bytes, the features file's bytes or, without features, the audio fingerprint that the
    embedding cache computes (path, size, modification time and crop of every row)."""
    out: Dict[str, Any] = {"manifest": {"path": str(cfg.data.manifest), "rows": len(manifest),
                                        "sha256": file_sha256(cfg.data.manifest)}}
    if cfg.data.features:
        out["features"] = {"path": str(cfg.data.features), "sha256": file_sha256(cfg.data.features)}
    else:
        from ctxemo.embedding.cache import audio_fingerprint

        out["audio"] = {"rows": len(manifest), "sha256": audio_fingerprint(audio_specs(manifest))}
    return out


def load_corpus(cfg: DictConfig, *, cache_root: Optional[Path] = None, progress: bool = True,
                check_inputs: Optional[Callable[[Dict[str, Any]], None]] = None) -> CorpusData:
    """Manifest + segment features: precomputed `.npy` if configured, else the (cached) encoder (a neural
    encoder, or openSMILE functionals for encoder.family=opensmile).

    `check_inputs` (e.g. `RunFolder.check_inputs`) sees the input fingerprints once the manifest and features are loaded
    (and checked) and before anything is embedded, so a refused resume costs no embedding pass."""
    if not cfg.data.manifest:
        raise CtxemoError("config key 'data.manifest' is not set (give data.manifest=path/to/manifest.csv)")
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    end_to_end = cfg.train.mode == "end_to_end"
    if end_to_end and cfg.data.features:
        raise ConfigError("config key 'data.features' is set, but train.mode=end_to_end trains the encoder on "
                          "the audio: unset data.features (data.features=null) or use train.mode=two_stage")
    precomputed = bool(cfg.data.features)
    manifest = load_manifest(cfg.data.manifest, taxonomy, require_audio=not precomputed)
    feats = load_features(cfg.data.features, len(manifest), manifest=manifest) if precomputed else None
    inputs = input_fingerprints(cfg, manifest)  # of valid inputs only: a bad file is named by its check above
    if check_inputs is not None:
        check_inputs(inputs)
    if end_to_end:
        feats = np.zeros((len(manifest), 0), np.float32)  # the encoder embeds the audio while training
    elif not precomputed:
        from ctxemo.embedding.cache import embed_manifest
        from ctxemo.embedding.opensmile_features import (
            is_feature_family,
            opensmile_manifest,
        )

        cache_root = Path(cache_root) if cache_root is not None else Path(cfg.out_dir) / "cache"
        embed = opensmile_manifest if is_feature_family(cfg) else embed_manifest  # functionals, or a neural encoder
        feats = embed(cfg, audio_specs(manifest), cache_dir=cache_root, progress=progress)
    return CorpusData(manifest=manifest, feats=feats, inputs=inputs)


def has_fine_labels(cfg: DictConfig, manifest: Manifest) -> bool:
    """Whether the corpus carries fine labels; a corpus without any runs binary-only (fine metrics absent,
    not 0) when the config asks nothing of them, and is refused before training otherwise.

    Raises:
        ConfigError naming the manifest and the two keys that run it binary-only.
    """
    if manifest.fine[manifest.is_caller].any():
        return True
    if float(cfg.loss.fine_weight) > 0 or cfg.head.binary_from != "head":
        raise ConfigError(
            f"{manifest.path}: no caller segment carries a fine label (no 'labels' column, or every one empty), "
            f"so the fine head would train against {len(manifest.taxonomy.labels)} labels it never sees and report "
            "fine scores of 0. Add the fine labels, or run the binary head alone: loss.fine_weight=0 "
            "head.binary_from=head (fine metrics are then reported as absent)")
    return False


def audio_specs(manifest: Manifest) -> List[tuple]:
    """(path, start_sec | None, end_sec | None) per manifest row, for the embedding stage."""
    return [(manifest.audio_path(i), *manifest.crop(i)) for i in range(len(manifest))]
