"""Live latency at real encoder size: per caller turn, the encoder, the context model and the I/O timed
apart, p50/p95, at several lengths into a call; torch and onnxruntime side by side in one run.

Set-up: the hubert-base encoder config (experiments/configs/encoder/hubert-base-zh.yaml: 12 layers x 768,
~95M parameters) with random weights (no download: the cost does not depend on the weights), the
config's context model made causal with `context.window` segments kept, on `--threads` CPU threads.
For each call length L a LiveSession is brought to L - k segments (caller and operator turns pushed as
embeddings: the kept state is the same however they arrived), then k caller turns of `--turn-sec` are
timed one by one:
    I/O      reading the turn from a whole-call stereo wav on disk (a crop of the caller's channel) and
             appending its record to a JSONL file with flush + fsync (what a live integration does per turn)
    encoder  embedding the turn's audio (`bundle.embed`); also its CPU time summed over the process's
             threads (on a loaded machine wall time waits for a core; CPU time does not)
    context  the context model + heads over the kept window and the record (`push_embedding`)
    total    the three together: the time from the end of the turn to its prediction on disk
The turn audio is a speech-like synthetic signal; the recording on disk is 10 minutes (a seek-based
crop costs the same at any position, so turns are read from it modulo its length).

    python benchmarks/bench_live.py                       # hubert-base, 2 threads, 50/200/800 segments
    python benchmarks/bench_live.py --encoder tiny        # the tiny test encoder (seconds)
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

# Threads that wait passively (torch's OpenMP here, onnxruntime's pool in load_onnx_bundle(spin=False)):
# on a machine shared with other jobs, spinning threads of either runtime steal the cores the other
# one's work needs, and one run measured torch 10x slower than with passive waiting. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

SR = 16000
REPO = Path(__file__).resolve().parents[1]
HUBERT_BASE_CONFIG = REPO / "experiments" / "configs" / "encoder" / "hubert-base-zh.yaml"
# HuBERT base's shape (transformers' HubertConfig defaults, written out so a change there cannot shrink it).
HUBERT_BASE_SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                         num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, feat_extract_norm="group")
RECORDING_SEC = 600.0


def make_bundle(folder: Path, *, encoder: str, window: int):
    from ctxemo.config import load_config
    from ctxemo.evaluation.evaluate import Thresholds
    from ctxemo.inference.bundle import build_encoder, load_bundle, save_bundle
    from ctxemo.models.call_model import build_call_model
    from ctxemo.taxonomy import Taxonomy

    overrides = ["context.causal=true", f"context.window={window}", "train.device=cpu"]
    if encoder == "hubert-base":
        cfg = load_config([HUBERT_BASE_CONFIG], overrides + ["encoder.source=null", "encoder.offline=true"])
        cfg.encoder.model_config = HUBERT_BASE_SHAPE
    else:
        cfg = load_config(overrides=overrides)
    d_in = build_encoder(cfg).output_dim
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    torch.manual_seed(0)
    model = build_call_model(cfg, d_in=d_in, taxonomy=taxonomy)
    path = save_bundle(folder / "bundle", cfg=cfg, model=model, thresholds=Thresholds(0.5, np.full(11, 0.5)),
                       d_in=d_in, time_features_used=True)
    return load_bundle(path)


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Voiced harmonics under a syllable envelope plus a little noise (the bundle's probe signal, longer)."""
    from ctxemo.inference.bundle import probe_signal

    wave = probe_signal(SR, seconds)
    return (wave + 0.002 * np.random.default_rng(seed).standard_normal(len(wave))).astype(np.float32)


def write_recording(path: Path) -> Path:
    caller = speech_like(RECORDING_SEC, 1)
    operator = np.roll(caller, SR // 3) * 0.5
    sf.write(path, np.stack([caller, operator], axis=1), SR, subtype="PCM_16")
    return path


def time_turns(bundles, *, length: int, timed: int, turn_sec: float, recording: Path, out: Path, feats):
    """Per runtime, per-turn seconds {io, encoder, context, total} of `timed` caller turns at `length`
    segments. The runtimes take turns (in alternating order), so a swing in the machine's load hits both."""
    from ctxemo.data.audio import read_audio
    from ctxemo.inference.live import LiveSession

    sessions = {name: LiveSession(bundle, call_id=f"len{length}") for name, bundle in bundles.items()}
    t = 0.0
    for i in range(length - timed):
        role = "caller" if i % 2 == 0 else "operator"
        for session in sessions.values():
            session.push_embedding(feats[i % len(feats)] if role == "caller" else None, role=role, start_sec=t,
                                   end_sec=t + turn_sec)
        t += turn_sec + 0.5
    times = {name: {key: [] for key in ("io", "encoder", "encoder_cpu", "context", "total")} for name in bundles}
    names = list(bundles)
    with open(out, "a", encoding="utf-8") as sink:
        for k in range(timed):
            for name in (names if k % 2 == 0 else names[::-1]):
                a = time.perf_counter()
                where = t % (RECORDING_SEC - turn_sec - 1)
                wave = read_audio(recording, start_sec=where, end_sec=where + turn_sec, channel=0, target_sr=SR)
                b, cpu = time.perf_counter(), time.process_time()
                embedding = bundles[name].embed([wave])[0]
                c, cpu = time.perf_counter(), time.process_time() - cpu
                record = sessions[name].push_embedding(embedding, role="caller", start_sec=t, end_sec=t + turn_sec)
                d = time.perf_counter()
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                e = time.perf_counter()
                for key, value in (("io", (b - a) + (e - d)), ("encoder", c - b), ("encoder_cpu", cpu),
                                   ("context", d - c), ("total", e - a)):
                    times[name][key].append(value)
            t += turn_sec + 0.5
    return times


def ms(values, q: float) -> float:
    return 1000.0 * float(np.percentile(values, q))


def run(args) -> None:
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from ctxemo.inference.export_onnx import export_onnx
    from ctxemo.inference.onnx_bundle import load_onnx_bundle

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        began = time.perf_counter()
        torch_bundle = make_bundle(tmp, encoder=args.encoder, window=args.window)
        bundles = {"torch": torch_bundle}
        if "onnx" in args.runtimes:
            export_onnx(torch_bundle, tmp / "onnx")  # checked against torch before it is written
            bundles["onnx"] = load_onnx_bundle(tmp / "onnx", threads=args.threads, spin=False)
        setup_sec = time.perf_counter() - began
        bundles = {name: bundles[name] for name in args.runtimes}
        recording = write_recording(tmp / "call.wav")
        warm = [speech_like(args.turn_sec, 2)]
        feats = np.concatenate([torch_bundle.embed(warm)] * 4)  # context tokens for the untimed part of the call
        for bundle in bundles.values():
            bundle.embed(warm)  # warm-up (first-call allocations)
        ctx = torch_bundle.cfg.context
        print(f"# encoder: {args.encoder} ({torch_bundle.cfg.encoder.family}, d_in={torch_bundle.d_in}, random "
              f"weights); context: causal {ctx.kind} d_model={ctx.d_model} depth={ctx.depth} window={ctx.window}; "
              f"{args.turn_sec:.1f}-s caller turns; {args.threads} thread(s); {args.timed} turns timed per length; "
              f"set-up (build, export, check) {setup_sec:.0f} s; load average {os.getloadavg()[0]:.1f}; "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
        header = (f"{'runtime':>7} {'segments':>8} | {'I/O p50':>8} {'p95':>7} | {'encoder p50':>11} {'p95':>7} | "
                  f"{'enc CPU p50':>11} {'p95':>7} | "
                  f"{'context p50':>11} {'p95':>7} | {'total p50':>9} {'p95 ms':>7} | {'x real time':>11}")
        print(header)
        print("-" * len(header))
        p95, cpu95 = {}, {}
        for length in args.lengths:
            per_runtime = time_turns(bundles, length=length, timed=args.timed, turn_sec=args.turn_sec,
                                     recording=recording, out=tmp / "records.jsonl", feats=feats)
            for name, times in per_runtime.items():
                p95[name, length] = ms(times["total"], 95)
                cpu95[name, length] = ms(times["encoder_cpu"], 95)
                print(f"{name:>7} {length:>8} | {ms(times['io'], 50):>8.1f} {ms(times['io'], 95):>7.1f} | "
                      f"{ms(times['encoder'], 50):>11.1f} {ms(times['encoder'], 95):>7.1f} | "
                      f"{ms(times['encoder_cpu'], 50):>11.1f} {ms(times['encoder_cpu'], 95):>7.1f} | "
                      f"{ms(times['context'], 50):>11.2f} {ms(times['context'], 95):>7.2f} | "
                      f"{ms(times['total'], 50):>9.1f} {p95[name, length]:>7.1f} | "
                      f"{1000 * args.turn_sec / ms(times['total'], 50):>10.1f}x", flush=True)
        for name in bundles:
            worst = max(p95[name, n] for n in args.lengths)
            flat = worst / min(p95[name, n] for n in args.lengths)
            print(f"# {name}: worst p95 {worst:.0f} ms per {args.turn_sec:.0f}-s turn (target < 1000 ms: "
                  f"{'met' if worst < 1000 else 'missed'}); p95 max/min over call lengths {flat:.2f}; encoder CPU "
                  f"p95 {max(cpu95[name, n] for n in args.lengths):.0f} ms over all threads (an estimate, not a "
                  f"measurement, of the encoder's wall time on {args.threads} idle cores: between CPU / "
                  f"{args.threads} and CPU)")
        if "torch" in bundles and "onnx" in bundles:
            ratios = [p95["torch", n] / p95["onnx", n] for n in args.lengths]
            print("# torch / onnxruntime total p95 latency: " + ", ".join(
                f"{r:.2f}x at {n}" for r, n in zip(ratios, args.lengths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=("hubert-base", "tiny"), default="hubert-base")
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 800], help="segments into the call")
    parser.add_argument("--window", type=int, default=32, help="context.window: segments the session keeps")
    parser.add_argument("--turn-sec", type=float, default=5.0)
    parser.add_argument("--timed", type=int, default=20, help="caller turns timed at each length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtimes", nargs="+", choices=("torch", "onnx"), default=["torch", "onnx"])
    run(parser.parse_args())


if __name__ == "__main__":
    main()
