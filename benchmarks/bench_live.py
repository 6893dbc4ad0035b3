"""Per-segment latency of live scoring (`LiveSession.push`) as a call grows: it should stay flat.

For each call length L the session is first brought to L - k segments (embeddings pushed directly:
the kept state is the same however they arrived), then k more segments are pushed as audio and
timed. Columns: context model only (push_embedding), full push (embed the audio + context model), and
for contrast the cost of re-scoring the whole call offline each time a segment arrives, which grows.
Random-init models on CPU (the default tiny encoder, or --encoder base for wav2vec2-base's shape).

    python benchmarks/bench_live.py --lengths 50 200 800 --window 32 --threads 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

SR = 16000
BASE_WAV2VEC2 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                     num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, feat_extract_norm="group")


def make_bundle(folder: Path, *, window: int, d_model: int, depth: int, encoder: str):
    from ctxemo.config import load_config
    from ctxemo.evaluation.evaluate import Thresholds
    from ctxemo.inference.bundle import load_bundle, save_bundle
    from ctxemo.models.call_model import build_call_model
    from ctxemo.taxonomy import Taxonomy

    cfg = load_config(overrides=["context.causal=true", f"context.window={window}", f"context.d_model={d_model}",
                                 f"context.depth={depth}", "context.heads=4", "train.device=cpu"])
    if encoder == "base":
        cfg.encoder.model_config = BASE_WAV2VEC2
    from ctxemo.inference.bundle import build_encoder

    d_in = build_encoder(cfg).output_dim
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    torch.manual_seed(0)
    model = build_call_model(cfg, d_in=d_in, taxonomy=taxonomy)
    path = save_bundle(folder / "bundle", cfg=cfg, model=model, thresholds=Thresholds(0.5, np.full(11, 0.5)),
                       d_in=d_in, time_features_used=True)
    return load_bundle(path)


def percentile_ms(values, q):
    return 1000.0 * float(np.percentile(values, q))


def run(args) -> None:
    from ctxemo.inference.live import LiveSession

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # window=0 warns that live cost grows: that is what it then shows
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp), window=args.window, d_model=args.d_model, depth=args.depth,
                             encoder=args.encoder)
        n_audio = int(args.segment_sec * SR)
        waves = [(0.1 * rng.standard_normal(n_audio)).astype(np.float32) for _ in range(8)]
        feats = bundle.embed(waves)
        bundle.embed(waves[:1])  # warm-up
        print(f"# context: causal transformer d_model={args.d_model} depth={args.depth} window={args.window}; "
              f"encoder: {args.encoder} wav2vec2 (random init); segments {args.segment_sec:.1f} s; "
              f"{args.threads} CPU thread(s); timed: last {args.timed} segments at each length")
        header = (f"{'call length':>11} | {'model p50 ms':>12} {'p95':>7} | {'push (audio) p50 ms':>19} {'p95':>7} | "
                  f"{'re-score whole call ms':>22}")
        print(header)
        print("-" * len(header))
        for length in args.lengths:
            session = LiveSession(bundle, call_id=f"len{length}")
            t = 0.0
            for i in range(length - args.timed):
                role = "caller" if i % 2 == 0 else "operator"
                session.push_embedding(feats[i % len(feats)], role=role, start_sec=t, end_sec=t + args.segment_sec)
                t += args.segment_sec + 0.5
            model_times, push_times = [], []
            for i in range(args.timed):
                wave = waves[i % len(waves)]
                began = time.perf_counter()
                session.push(wave, sample_rate=SR, role="caller", start_sec=t, end_sec=t + args.segment_sec)
                push_times.append(time.perf_counter() - began)
                t += args.segment_sec + 0.5
            # Model-only cost at the same length: a session at `length` segments, timing push_embedding.
            model_session = LiveSession(bundle)
            for i in range(length):
                began = time.perf_counter()
                model_session.push_embedding(feats[i % len(feats)], role="caller", start_sec=i * 2.5,
                                             end_sec=i * 2.5 + args.segment_sec)
                if i >= length - args.timed:
                    model_times.append(time.perf_counter() - began)
            # Contrast: offline scoring of the whole call so far, what a naive "live" loop would redo per segment.
            all_feats = np.stack([feats[i % len(feats)] for i in range(length)])
            roles = ["caller"] * length
            starts = np.arange(length) * 2.5
            began = time.perf_counter()
            for _ in range(3):
                bundle.score_call(all_feats, roles=roles, start_sec=starts, end_sec=starts + args.segment_sec)
            rescore = (time.perf_counter() - began) / 3
            print(f"{length:>11} | {percentile_ms(model_times, 50):>12.2f} {percentile_ms(model_times, 95):>7.2f} | "
                  f"{percentile_ms(push_times, 50):>19.2f} {percentile_ms(push_times, 95):>7.2f} | "
                  f"{1000 * rescore:>22.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--encoder", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--segment-sec", type=float, default=2.0)
    parser.add_argument("--timed", type=int, default=50, help="segments timed at the end of each call length")
    parser.add_argument("--threads", type=int, default=2)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
