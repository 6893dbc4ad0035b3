"""Segments per second of ctxemo's embedding path vs the seed study's, on base-size random-init models, and
how close each pass comes to this machine's own dense matmul rate (a roofline figure).

Seed study's way: transformers' feature extractor + model, one segment at a time, Whisper padded to
30 s, mean of the last hidden state. Ours: `ctxemo.embedding.cache.embed_manifest` with the batch plan
of the device (`ctxemo.embedding.encode.batch_plan`; on CPU only equal-width segments share a batch),
then a second call on the same corpus (cache hit). Each measurement runs in a fresh process so its peak
RSS (getrusage) is its own; model building is not timed; `--repeats` alternates the two ways and reports
medians. "max |seed - ours|" checks the paths agree where they should (wav2vec2 family: ~1e-6, batching
reproduces one-at-a-time; whisper: differs by design, 30-s padding changes the output).

Roofline: in the same process and with the same threads, the rate of a dense fp32 matmul (2048^3,
best of several, measured before and after the pass) is the machine's limit; every pass's FLOPs are
counted from the architecture and the shapes it ran (transformer layers: 2 t (4 d^2 + 2 d f) + 4 t^2 d
per segment; convolutions and projections from their hooks) and its time split into the transformer
layers and the rest, giving achieved GFLOP/s and their share of the matmul rate.

    python benchmarks/bench_embed.py --repeats 3            # all four families, 40 segments
    python benchmarks/bench_embed.py --count 12 --families wav2vec2   # a quick look
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import soundfile as sf

SR = 16000
# Architectures of facebook/wav2vec2-base, facebook/hubert-base-ls960, microsoft/wavlm-base and the encoder of
# openai/whisper-base, with random weights (no hub access).
_SSL_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                 num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, feat_extract_norm="group")
BASE_CONFIGS: Dict[str, Dict[str, Any]] = {
    "wav2vec2": dict(_SSL_BASE),
    "hubert": dict(_SSL_BASE),
    "wavlm": dict(_SSL_BASE, num_buckets=320, max_bucket_distance=800),
    "whisper": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                    decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048, num_mel_bins=80,
                    max_source_positions=1500, max_target_positions=448),
}
MATMUL_N = 2048  # the roofline's dense fp32 matmul: N x N @ N x N


def best_rate(step: Callable[[], Any], flops: float, *, repeats: int = 5,
              sync: Callable[[], Any] = lambda: None) -> float:
    """GFLOP/s of the fastest of `repeats` calls of `step` (after one warm-up call), `flops` each; `sync`
    waits for queued work (torch.cuda.synchronize on a GPU, where calls return before the work is done)."""
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        sync()
        start = time.perf_counter()
        step()
        sync()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def matmul_gflops(repeats: int = 5, dtype: str = "float32", n: int = MATMUL_N) -> float:
    """This process's best dense matmul rate (GFLOP/s) in `dtype` on its torch threads: the better of one n^3
    matmul on all of them and one one-thread matmul per thread at once (how ctxemo's CPU loop runs)."""
    import torch

    threads = torch.get_num_threads()
    a, b = (torch.randn(n, n, dtype=getattr(torch, dtype)) for _ in range(2))
    flops = 2 * n ** 3
    one = best_rate(lambda: torch.mm(a, b), flops, repeats=repeats)
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            concurrent = best_rate(lambda: list(pool.map(lambda _: torch.mm(a, b), range(threads))), threads * flops,
                                   repeats=repeats)
    finally:
        torch.set_num_threads(threads)
    return max(one, concurrent)


class PassCounter:
    """FLOPs and seconds of a backbone's forward passes, split into the transformer layers and the rest.

    Layers: FLOPs from the architecture at the shape each layer ran (projections, feed-forward and the two
    attention matmuls; WavLM's relative-position bias and softmax/norms are not counted), time from hooks
    around each layer. The rest: every Conv1d and Linear outside the layers, from their output shapes.
    ctxemo's CPU loop runs concurrent one-thread passes, so the layers' time is the wall time during which
    at least one layer ran (the union of the intervals of all threads).
    """

    def __init__(self, model, family: str):
        import torch

        cfg = model.config
        self.d = cfg.d_model if family == "whisper" else cfg.hidden_size
        self.f = cfg.encoder_ffn_dim if family == "whisper" else cfg.intermediate_size
        layers = model.layers if family == "whisper" else model.encoder.layers
        self.layer_flops = self.other_flops = 0.0
        self._intervals: List[Tuple[float, float]] = []
        self._start = threading.local()
        for layer in layers:
            layer.register_forward_pre_hook(self._layer_in, with_kwargs=True)
            layer.register_forward_hook(self._layer_out)
        inside = {id(m) for layer in layers for m in layer.modules()}
        for module in model.modules():
            if id(module) in inside:
                continue
            if isinstance(module, torch.nn.Conv1d):
                module.register_forward_hook(self._conv)
            elif isinstance(module, torch.nn.Linear):
                module.register_forward_hook(self._linear)

    def _layer_in(self, module, args, kwargs):
        b, t, _ = (args[0] if args else kwargs["hidden_states"]).shape
        self.layer_flops += b * (2 * t * (4 * self.d ** 2 + 2 * self.d * self.f) + 4 * t * t * self.d)
        self._start.t = time.perf_counter()

    def _layer_out(self, module, args, output):
        self._intervals.append((self._start.t, time.perf_counter()))

    @property
    def flops(self) -> float:
        """Everything counted so far: the layers and the rest."""
        return self.layer_flops + self.other_flops

    @property
    def layer_s(self) -> float:
        covered, end = 0.0, float("-inf")
        for a, b in sorted(self._intervals):
            covered += max(0.0, b - max(a, end))
            end = max(end, b)
        return covered

    def _conv(self, module, args, output):  # output [b, c_out, t]: each output value is a c_in/groups x k dot
        self.other_flops += 2 * output.numel() * module.in_channels // module.groups * module.kernel_size[0]

    def _linear(self, module, args, output):
        self.other_flops += 2 * output.numel() * module.in_features

    def report(self, seconds: float, roof: float) -> Dict[str, float]:
        total, layer_s = self.flops, self.layer_s
        return {"gflop": total / 1e9, "pass_gflops": total / seconds / 1e9,
                "layers_gflops": self.layer_flops / layer_s / 1e9, "layers_share_of_time": layer_s / seconds,
                "pass_of_roof": total / seconds / 1e9 / roof, "layers_of_roof": self.layer_flops / layer_s / 1e9 / roof}


def speech_like_wave(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Random-ish speech-like audio at SR: noise under a syllable-rate (3-6 Hz) envelope, float32."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t) ** 2
    return (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)


def make_corpus(folder: Path, *, count: int, min_sec: float, max_sec: float, seed: int) -> List[Path]:
    """`count` speech-like wavs, lengths uniform in [min, max] s."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"seg{i:04d}.wav"
        sf.write(path, speech_like_wave(rng, rng.uniform(min_sec, max_sec)), SR)
        paths.append(path)
    return paths


# The ways measured: the seed study's loop, and ctxemo's pass at each `encoder.precision`.
WAYS = {"seed": "float32", "ours": "float32", "ours_bf16": "bfloat16"}


def _config(family: str, cache_layers: str = "last", precision: str = "float32"):
    from ctxemo.config import load_config

    cfg = load_config(overrides=[f"encoder.family={family}", f"encoder.layers={cache_layers}", "encoder.pooling=mean",
                                 f"encoder.precision={precision}"])
    cfg.encoder.model_config = BASE_CONFIGS[family]
    return cfg


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(job: Dict[str, Any]) -> Dict[str, Any]:
    """One measurement in a fresh process: 'seed', or 'ours' (first call + cached second call)."""
    import torch

    torch.set_num_threads(job["threads"])
    paths = [Path(p) for p in job["paths"]]
    precision = WAYS[job["way"]]
    cfg = _config(job["family"], precision=precision)
    from ctxemo.embedding.cache import embed_manifest
    from ctxemo.embedding.encode import build_cache_encoder

    # Both ways get the same seeded random weights, built before the clock starts.
    encoder = build_cache_encoder(cfg)
    model = encoder.upstream.model.eval()
    counter = PassCounter(model, job["family"])
    roof_before = matmul_gflops(dtype=precision)
    out: Dict[str, Any] = {}
    if job["way"] != "seed":
        rows = [(p, None, None) for p in paths]
        start = time.perf_counter()
        feats = embed_manifest(cfg, rows, cache_dir=job["cache"], progress=False, encoder=encoder)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        embed_manifest(cfg, rows, cache_dir=job["cache"], progress=False, encoder=encoder)
        out["cached_seconds"] = time.perf_counter() - start
    else:
        from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

        start = time.perf_counter()
        rows_out = []
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
                rows_out.append(hidden.mean(dim=1)[0].numpy())
        seconds = time.perf_counter() - start
        feats = np.stack(rows_out)
    roof = max(roof_before, matmul_gflops(dtype=precision))  # the load may change during the pass: the better
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "feats": feats.tolist(), "matmul_gflops": roof,
            **counter.report(seconds, roof), **out}


def _spread(runs: List[Dict[str, Any]]) -> str:
    """', runs LO-HI' (MB) when repeated: glibc's heap keeps freed activations, so one configuration's peak RSS
    moves by ~10-20% between identical fresh processes, more than some of the differences judged."""
    rss = [r["peak_rss_mb"] for r in runs]
    return f", runs {min(rss):.0f}-{max(rss):.0f}" if len(rss) > 1 else ""


def run(job: Dict[str, Any]) -> Dict[str, Any]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(worker, (job,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="segments in the synthetic corpus")
    parser.add_argument("--min-sec", type=float, default=1.0)
    parser.add_argument("--max-sec", type=float, default=15.0)
    parser.add_argument("--families", nargs="+", default=list(BASE_CONFIGS), choices=sorted(BASE_CONFIGS))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="alternate the ways' runs, report the medians")
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS),
                        help="seed: the seed study's loop; ours / ours_bf16: ctxemo at encoder.precision "
                             "float32 / bfloat16 (its roofline is the bf16 matmul rate)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_corpus(Path(tmp), count=args.count, min_sec=args.min_sec, max_sec=args.max_sec, seed=args.seed)
        total_sec = sum(sf.info(str(p)).duration for p in paths)
        print(f"corpus: {args.count} segments, {total_sec:.0f} s of audio ({args.min_sec}-{args.max_sec} s each), "
              f"{args.threads} CPU threads, random-init base-size models, {args.repeats} repeat(s) (medians); "
              f"load average {os.getloadavg()[0]:.1f} at start")
        summary = {}
        for family in args.families:
            common = dict(family=family, threads=args.threads, paths=[str(p) for p in paths])
            ways = ["seed", *[w for w in args.ways if w != "seed"]]  # every ratio is against the seed way
            runs: Dict[str, List[Dict[str, Any]]] = {way: [] for way in ways}
            for rep in range(args.repeats):  # alternate: every way sees the same drift of a shared machine's load
                for way in ways:
                    runs[way].append(run({**common, "way": way, "cache": str(Path(tmp) / f"cache-{family}-{way}-{rep}")}))
            med = {way: {key: float(np.median([r[key] for r in rs])) for key in rs[0] if key != "feats"}
                   for way, rs in runs.items()}
            seed = med["seed"]
            summary[family] = {"seed": seed, "seed_seconds_each": [r["seconds"] for r in runs["seed"]],
                               "seed_peak_rss_mb_each": [r["peak_rss_mb"] for r in runs["seed"]]}
            print(f"{family:9s} seed way {args.count / seed['seconds']:6.2f} seg/s ({seed['seconds']:6.1f} s, "
                  f"peak RSS {seed['peak_rss_mb']:5.0f} MB{_spread(runs['seed'])})", flush=True)
            for way in ways[1:]:
                m = med[way]
                diff = float(np.abs(np.array(runs["seed"][0]["feats"]) - np.array(runs[way][0]["feats"])).max())
                ratio = seed["seconds"] / m["seconds"]
                summary[family][way] = dict(m, ratio=ratio, max_abs_diff=diff,
                                            seconds_each=[r["seconds"] for r in runs[way]],
                                            peak_rss_mb_each=[r["peak_rss_mb"] for r in runs[way]])
                print(f"  {way:9s} {args.count / m['seconds']:6.2f} seg/s ({m['seconds']:6.1f} s, peak RSS "
                      f"{m['peak_rss_mb']:5.0f} MB{_spread(runs[way])}) | ratio {ratio:4.2f}x | cache hit {m['cached_seconds'] * 1000:.0f} "
                      f"ms | max |seed - {way}| {diff:.1e}", flush=True)
            for way in ways:
                m = med[way]
                print(f"  roofline {way:9s}: {m['gflop']:7.0f} GFLOP counted, pass {m['pass_gflops']:5.1f} GFLOP/s "
                      f"({m['pass_of_roof']:4.0%} of the {m['matmul_gflops']:.0f} GFLOP/s {WAYS[way]} matmul rate); "
                      f"transformer layers {m['layers_gflops']:5.1f} GFLOP/s ({m['layers_of_roof']:4.0%}), "
                      f"{m['layers_share_of_time']:4.0%} of the time", flush=True)
        print(f"load average at end {os.getloadavg()[0]:.1f}")
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
