"""Segments per second of ctxemo's embedding path vs the seed study's, on base-size random-init models.

Seed study's way: transformers' feature extractor + model, one segment at a time, Whisper padded to
30 s, mean of the last hidden state. Ours: `ctxemo.embedding.encode.embed_manifest` (length-bucketed batches,
masked padding, Whisper on the segment's own frames), then a second call on the same corpus (cache hit).
Each measurement runs in a fresh process so its peak RSS (getrusage) is its own; model building is
not timed. "max |seed - ours|" checks the paths agree where they should (wav2vec2: padding-free
batching reproduces one-at-a-time; whisper: differs by design, 30-s padding changes the output).

    python benchmarks/bench_embed.py --count 40 --threads 2
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import soundfile as sf

SR = 16000
# Architectures of facebook/wav2vec2-base and openai/whisper-base, with random weights (no hub access).
BASE_CONFIGS: Dict[str, Dict[str, Any]] = {
    "wav2vec2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                     num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, feat_extract_norm="group"),
    "whisper": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                    decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048, num_mel_bins=80,
                    max_source_positions=1500, max_target_positions=448),
}


def make_corpus(folder: Path, *, count: int, min_sec: float, max_sec: float, seed: int) -> List[Path]:
    """Random-ish speech-like audio: noise under a syllable-rate envelope, lengths uniform in [min, max] s."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        n = int(rng.uniform(min_sec, max_sec) * SR)
        t = np.arange(n) / SR
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t) ** 2
        wave = (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)
        path = folder / f"seg{i:04d}.wav"
        sf.write(path, wave, SR)
        paths.append(path)
    return paths


def _config(family: str, cache_layers: str = "last"):
    from ctxemo.config import load_config

    cfg = load_config(overrides=[f"encoder.family={family}", f"encoder.layers={cache_layers}", "encoder.pooling=mean"])
    cfg.encoder.model_config = BASE_CONFIGS[family]
    return cfg


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(job: Dict[str, Any]) -> Dict[str, Any]:
    """One measurement in a fresh process: 'seed', or 'ours' (first call + cached second call)."""
    import torch

    torch.set_num_threads(job["threads"])
    paths = [Path(p) for p in job["paths"]]
    cfg = _config(job["family"])
    from ctxemo.embedding.cache import embed_manifest
    from ctxemo.embedding.encode import build_cache_encoder

    # Both ways get the same seeded random weights, built before the clock starts.
    encoder = build_cache_encoder(cfg)
    # Transformer frames processed, padding included: a load-independent measure of the work done.
    frames = {"n": 0}

    def count(module, args, output):
        frames["n"] += output[0][-1].shape[0] * output[0][-1].shape[1]

    if job["way"] == "ours":
        encoder.upstream.register_forward_hook(count)
        rows = [(p, None, None) for p in paths]
        start = time.perf_counter()
        feats = embed_manifest(cfg, rows, cache_dir=job["cache"], progress=False, encoder=encoder)
        first = time.perf_counter() - start
        start = time.perf_counter()
        embed_manifest(cfg, rows, cache_dir=job["cache"], progress=False, encoder=encoder)
        second = time.perf_counter() - start
        return {"seconds": first, "cached_seconds": second, "peak_rss_mb": _peak_rss_mb(), "feats": feats.tolist(),
                "frames": frames["n"]}

    from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

    model = encoder.upstream.model.eval()
    start = time.perf_counter()
    out = []
    with torch.inference_mode():
        for path in paths:
            wave, _ = sf.read(path, dtype="float32")
            if job["family"] == "whisper":
                features = WhisperFeatureExtractor()(wave, sampling_rate=SR, return_tensors="pt")["input_features"]
                hidden = model(features).last_hidden_state  # 1500 frames whatever the length
            else:
                values = Wav2Vec2FeatureExtractor(do_normalize=True)(wave, sampling_rate=SR,
                                                                     return_tensors="pt")["input_values"]
                hidden = model(values).last_hidden_state
            frames["n"] += hidden.shape[1]
            out.append(hidden.mean(dim=1)[0].numpy())
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb(), "feats": np.stack(out).tolist(),
            "frames": frames["n"]}


def run(job: Dict[str, Any]) -> Dict[str, Any]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(worker, (job,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="segments in the synthetic corpus")
    parser.add_argument("--min-sec", type=float, default=1.0)
    parser.add_argument("--max-sec", type=float, default=15.0)
    parser.add_argument("--families", nargs="+", default=["wav2vec2", "whisper"], choices=sorted(BASE_CONFIGS))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="alternate seed/ours runs, report the fastest")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_corpus(Path(tmp), count=args.count, min_sec=args.min_sec, max_sec=args.max_sec, seed=args.seed)
        total_sec = sum(sf.info(str(p)).duration for p in paths)
        print(f"corpus: {args.count} segments, {total_sec:.0f} s of audio ({args.min_sec}-{args.max_sec} s each), "
              f"{args.threads} CPU threads, random-init base-size models")
        summary = {}
        for family in args.families:
            common = dict(family=family, threads=args.threads, paths=[str(p) for p in paths])
            seed = ours = None
            for rep in range(args.repeats):  # alternate, keep the fastest: the machine may be shared
                s = run({**common, "way": "seed"})
                o = run({**common, "way": "ours", "cache": str(Path(tmp) / f"cache-{family}-{rep}")})
                seed = s if seed is None or s["seconds"] < seed["seconds"] else seed
                ours = o if ours is None or o["seconds"] < ours["seconds"] else ours
            diff = float(np.abs(np.array(seed["feats"]) - np.array(ours["feats"])).max())
            ratio = seed["seconds"] / ours["seconds"]
            summary[family] = dict(seed_seg_per_s=args.count / seed["seconds"], ours_seg_per_s=args.count / ours["seconds"],
                                   ratio=ratio, cached_seconds=ours["cached_seconds"],
                                   seed_peak_rss_mb=seed["peak_rss_mb"], ours_peak_rss_mb=ours["peak_rss_mb"],
                                   max_abs_diff=diff, seed_frames=seed["frames"], ours_frames=ours["frames"])
            print(f"{family:9s} seed way {args.count / seed['seconds']:6.2f} seg/s ({seed['seconds']:6.1f} s, "
                  f"peak RSS {seed['peak_rss_mb']:5.0f} MB) | ours {args.count / ours['seconds']:6.2f} seg/s "
                  f"({ours['seconds']:6.1f} s, peak RSS {ours['peak_rss_mb']:5.0f} MB) | ratio {ratio:4.1f}x | "
                  f"cache hit {ours['cached_seconds'] * 1000:.0f} ms | transformer frames {seed['frames']} vs "
                  f"{ours['frames']} ({seed['frames'] / ours['frames']:.1f}x) | max |seed - ours| {diff:.1e}")
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
