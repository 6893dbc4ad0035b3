"""GPU figures for large encoders in bf16: embedding throughput against the device's bf16 dense peak, the
end-to-end LoRA training step (time, peak memory) with and without gradient checkpointing, and the largest
training window that fits.

Encoders: the whisper-large-v3 encoder (32 x 1280, 20 heads, ffn 5120, 128 mel bins, ~635M parameters) and
wav2vec2-large in the XLS-R-53 layout of experiments/configs/encoder/wav2vec2-xlsr53-zh.yaml (24 x 1024,
16 heads, ffn 4096, layer-norm CNN, stable layer norm, ~315M), random init from those configs (the cost does
not depend on the weights), each config's own batching (encoder.batch_size, encoder.max_batch_sec). Audio:
synthetic speech-like segments of 4.5-5.5 s. Every figure runs the package's own code:
    embedding  `build_cache_encoder` + `embed_waves` at `encoder.precision=bfloat16` (bf16 backbone weights,
               bf16 autocast), the pass that fills the cache; FLOPs counted as bench_embed.py counts them
               (its PassCounter) over the timed pass, as a share of the device's bf16 dense peak: a table of
               data-sheet figures keyed by the device name, or, for a device not in it, the bf16 matmul rate
               measured here (printed beside it in either case)
    LoRA step  one training step as `ctxemo.training.loop` runs it (`encoder.finetune=lora`,
               `train.window_segments` 8, `train.batch_calls` 4, as the README's estimates assume): windows
               cut by `epoch_windows`, batched by `window_batch` (the audio from memory instead of disk),
               forward under `ctxemo.device.autocast` + loss + backward (`backward_batch`), clip + AdamW +
               schedule (`optimizer_step`); median of a few steps after warm-up, and
               `torch.cuda.max_memory_allocated` over them, with `encoder.gradient_checkpointing` off and on
    window     the largest `train.window_segments` whose step fits in memory: doubling from 8, then bisection
               to 1/8 of the window, catching torch.cuda.OutOfMemoryError; capped by --max-window and by
               the time left in --budget-s (then the figure is a lower bound, and says so)

Progress lines are flushed as they come, with the elapsed time per stage; the last line is one JSON object
with every figure. Nothing is written except under --out (bench_gpu.json there).

    python benchmarks/bench_gpu.py --out DIR         # on a CUDA device: both encoders, < 8 min on an H200
    python benchmarks/bench_gpu.py --smoke           # the same code on CPU with tiny encoders, in seconds
"""
from __future__ import annotations

import time

START = time.perf_counter()  # the budget counts the imports too

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_embed import PassCounter, best_rate, matmul_gflops, speech_like_wave  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ctxemo.config import load_config  # noqa: E402
from ctxemo.data.datasets import CallItem  # noqa: E402
from ctxemo.data.windows import epoch_windows  # noqa: E402
from ctxemo.embedding.encode import (  # noqa: E402
    PAD_MULTIPLE_SEC,
    EmbedSettings,
    build_cache_encoder,
    build_seeded_encoder,
    embed_waves,
)
from ctxemo.models.call_model import build_call_model, feature_stats  # noqa: E402
from ctxemo.models.end_to_end_model import EndToEndModel  # noqa: E402
from ctxemo.taxonomy import Taxonomy  # noqa: E402
from ctxemo.training.end_to_end import window_batch  # noqa: E402
from ctxemo.training.loop import backward_batch, make_optimizer, optimizer_step  # noqa: E402
from ctxemo.training.objective import build_objective  # noqa: E402

SR = 16000
ENCODER_CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "encoder"
# Sizes written out (not left to transformers' defaults, which could change under us). Dropout and
# SpecAugment as in the released checkpoints: they cost memory in training (dropout masks).
WHISPER_LARGE_V3 = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                        num_mel_bins=128, max_source_positions=1500, dropout=0.0, attention_dropout=0.0,
                        activation_dropout=0.0)
WAV2VEC2_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                      conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
                      num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, hidden_dropout=0.1,
                      attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1, mask_time_prob=0.05)
# name -> (the project's experiment config for that encoder, its shape)
ENCODERS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "whisper-large-v3": ("whisper-large-v3.yaml", WHISPER_LARGE_V3),
    "wav2vec2-large": ("wav2vec2-xlsr53-zh.yaml", WAV2VEC2_LARGE),
}
# Dense (not 2:4-sparse) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s, matched on the words of
# torch.cuda.get_device_name() ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"): the first entry whose words
# all appear wins, so a variant comes before its family; matching whole words keeps "A10" off "A100" / "A10G".
BF16_DENSE_PEAK_TFLOPS: List[Tuple[Tuple[str, ...], float]] = [
    (("H100", "PCIe"), 756.0), (("H100", "NVL"), 835.0), (("H200", "NVL"), 835.0),
    (("H100",), 989.0), (("H200",), 989.0), (("A100",), 312.0),
    (("L40S",), 362.0), (("L4",), 121.0), (("A10",), 125.0),
]
GPU_MATMUL_N = 8192  # bf16 n^3 products, 10 per timed call: each call runs ~15 ms on an H100-class GPU
STEP_WINDOW = 8  # train.window_segments of the step figures (the default, and the README's estimates)
SEARCH_RESOLUTION = 1 / 8  # the window search stops once the bracket is this share of the largest fit
TRIAL_SAFETY = 1.5  # a search trial is started only if 1.5x its predicted time is left
# The search without checkpointing gets this share of an encoder's time left after its step figures: its
# windows are smaller, and the search with checkpointing (what long windows would train with) needs more.
FIRST_SEARCH_SHARE = 0.4


@dataclass(frozen=True)
class Sizes:
    """How much work each stage does: the GPU run's defaults, or --smoke's tiny ones."""

    segments: int  # embedded in the timed pass (also the pool the training windows draw their audio from)
    segment_sec: Tuple[float, float]  # lengths uniform in this range
    embed_warmup: int  # segments embedded first, untimed (kernel choice, allocator growth)
    batch_calls: int
    warmup_steps: int
    timed_steps: int
    max_window: int
    budget_s: float


# ~5-s caller turns; batch_calls 4 as the README's estimates assume; 400 s + one search trial < 8 min.
GPU_SIZES = Sizes(segments=1024, segment_sec=(4.5, 5.5), embed_warmup=64, batch_calls=4, warmup_steps=2,
                  timed_steps=5, max_window=512, budget_s=400.0)
# Short segments and one window per batch: the smoke run checks the code path, in seconds on one CPU thread.
SMOKE_SIZES = Sizes(segments=8, segment_sec=(0.5, 1.0), embed_warmup=2, batch_calls=1, warmup_steps=1,
                    timed_steps=2, max_window=16, budget_s=120.0)


# ----------------------------------------------------------------------------- clock and device


class Clock:
    """Elapsed time since the script started, against the budget; stages print their own time."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.stages: List[Dict[str, Any]] = []

    def elapsed(self) -> float:
        return time.perf_counter() - START

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.stages.append({"stage": name, "seconds": round(seconds, 2)})
        say(f"[{self.elapsed():6.1f} s] {name}: {seconds:.1f} s")


def say(line: str) -> None:
    print(line, flush=True)  # progress must reach a log that a timeout may cut


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def allocated_gb(device: torch.device) -> Optional[float]:
    return torch.cuda.memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def peak_memory(device: torch.device) -> Dict[str, Any]:
    """Peak GPU memory since the last reset (GiB): allocated by tensors, and reserved by the caching
    allocator (what an out-of-memory error is about). None on CPU, where torch keeps no such figure."""
    if device.type != "cuda":
        return {"peak_allocated_gb": None, "peak_reserved_gb": None, "memory_note": "n/a on CPU"}
    return {"peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30,
            "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 2 ** 30}


def release_memory(device: torch.device) -> None:
    """Hand freed blocks back, so the next model's peak is its own (and an OOM leaves nothing behind)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def gb(value: Optional[float]) -> str:
    return "n/a (CPU)" if value is None else f"{value:.1f} GiB"


# ----------------------------------------------------------------------------- the device's bf16 peak


def table_peak_tflops(device_name: str) -> Optional[Tuple[Tuple[str, ...], float]]:
    """(matched words, dense bf16 TFLOP/s) of the first BF16_DENSE_PEAK_TFLOPS entry that fits the name."""
    words = set(re.split(r"[^A-Za-z0-9]+", device_name))
    return next(((key, peak) for key, peak in BF16_DENSE_PEAK_TFLOPS if set(key) <= words), None)


def bf16_matmul_tflops(device: torch.device) -> float:
    """The best bf16 matmul rate measured here (TFLOP/s): n^3 products on the GPU; on CPU bench_embed's
    measure at a small size (the smoke run's stand-in)."""
    if device.type != "cuda":
        return matmul_gflops(repeats=3, dtype="bfloat16", n=256) / 1e3
    a, b, out = (torch.randn(GPU_MATMUL_N, GPU_MATMUL_N, device=device, dtype=torch.bfloat16) for _ in range(3))
    per_call = 10  # several products per timed call: the timer and launch overhead stay small beside them

    def products() -> None:
        for _ in range(per_call):
            torch.mm(a, b, out=out)

    return best_rate(products, per_call * 2 * GPU_MATMUL_N ** 3, repeats=10,
                     sync=lambda: torch.cuda.synchronize(device)) / 1e3


def device_peak(device: torch.device) -> Dict[str, Any]:
    """The device's name, its bf16 dense peak (table, else the measured matmul rate) and the measured rate."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} torch thread(s)"
    measured = bf16_matmul_tflops(device)
    found = table_peak_tflops(name) if device.type == "cuda" else None
    if found is None:
        peak, source = measured, "measured bf16 matmul (device not in the data-sheet table)"
    else:
        peak, source = found[1], f"data-sheet table, entry {' '.join(found[0])}"
    return {"device_name": name, "bf16_peak_tflops": peak, "bf16_peak_source": source,
            "bf16_matmul_tflops": measured, "matmul_of_peak": measured / peak}


# ----------------------------------------------------------------------------- configs and data


def encoder_config(name: str, *, smoke: bool, device: torch.device, batch_calls: int) -> DictConfig:
    """The project's experiment config for `name`, random init at its real shape (tiny with --smoke: an
    empty model_config means the family's tiny test config), embedding in bf16, LoRA for training."""
    yaml_name, shape = ENCODERS[name]
    cfg = load_config([ENCODER_CONFIGS / yaml_name], [
        "encoder.source=null", "encoder.offline=true", "encoder.precision=bfloat16", "encoder.finetune=lora",
        f"train.device={device.type}", f"train.batch_calls={batch_calls}", f"train.window_segments={STEP_WINDOW}"])
    cfg.encoder.model_config = {} if smoke else dict(shape)
    return cfg


def with_checkpointing(cfg: DictConfig, enabled: bool) -> DictConfig:
    return load_config(overrides=[f"encoder.gradient_checkpointing={str(enabled).lower()}"], base=cfg)


def synthetic_segments(count: int, seconds: Tuple[float, float], seed: int) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [speech_like_wave(rng, rng.uniform(*seconds)) for _ in range(count)]


def training_windows(window: int, *, batch_calls: int, taxonomy: Taxonomy, seed: int) -> List[CallItem]:
    """One batch of training units: `batch_calls` windows of `window` segments, cut by the training code
    (`epoch_windows`) from calls of 2 x `window` caller segments with random labels. Rows run 0, 1, ...
    and pick their audio from the segment pool (modulo its size)."""
    rng = np.random.default_rng(seed)
    n = 2 * window
    calls = []
    for c in range(batch_calls):
        fine = (rng.random((n, taxonomy.num_labels)) < 0.15).astype(np.float32)
        negative = (fine @ taxonomy.negative_mask > 0).astype(np.float32)
        calls.append(CallItem(call_id=f"call{c}", rows=np.arange(c * n, (c + 1) * n),
                              feats=np.zeros((n, 0), np.float32), role=np.zeros(n, np.int64),
                              time_feats=np.zeros((n, 2), np.float32), negative=negative, fine=fine,
                              scored=np.ones(n, bool)))
    return epoch_windows(calls, window=window, generator=torch.Generator().manual_seed(seed))[:batch_calls]


# ----------------------------------------------------------------------------- embedding throughput


def measure_embedding(cfg: DictConfig, waves: Sequence[np.ndarray], *, device: torch.device, warmup: int,
                      peak_tflops: float) -> Tuple[Dict[str, Any], np.ndarray]:
    """Segments/s and TFLOP/s of the cache's bf16 pass over `waves` (after `warmup` untimed segments);
    returns the figures and the embeddings."""
    encoder = build_cache_encoder(cfg).to(device)
    weights = allocated_gb(device)
    counter = PassCounter(encoder.upstream.model, cfg.encoder.family)
    settings = EmbedSettings.from_config(cfg)
    embed_waves(encoder, waves[:warmup], settings=settings, device=str(device))
    reset_peak_memory(device)
    counted = counter.flops
    synchronize(device)
    start = time.perf_counter()
    embeddings = embed_waves(encoder, waves, settings=settings, device=str(device))
    synchronize(device)
    seconds = time.perf_counter() - start
    tflop = (counter.flops - counted) / 1e12
    audio_s = sum(len(w) for w in waves) / SR
    figures = {"segments": len(waves), "audio_s": audio_s, "seconds": seconds, "segments_per_s": len(waves) / seconds,
               "audio_s_per_s": audio_s / seconds, "tflop": tflop, "tflops": tflop / seconds,
               "share_of_peak": tflop / seconds / peak_tflops,
               "backbone_params_m": sum(p.numel() for p in encoder.upstream.model.parameters()) / 1e6,
               "weights_gb": weights, **peak_memory(device)}
    return figures, embeddings


# ----------------------------------------------------------------------------- the LoRA training step


@dataclass
class StepRig:
    """Everything one end-to-end training step touches, built as train_end_to_end builds it."""

    cfg: DictConfig
    model: EndToEndModel
    objective: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    taxonomy: Taxonomy
    load: Callable[[int], np.ndarray]
    device: torch.device
    weights_gb: Optional[float]
    seed: int

    def units(self, window: int) -> List[CallItem]:
        return training_windows(window, batch_calls=int(self.cfg.train.batch_calls), taxonomy=self.taxonomy,
                                seed=self.seed)


def build_rig(cfg: DictConfig, *, taxonomy: Taxonomy, waves: Sequence[np.ndarray], stats, device: torch.device,
              seed: int) -> StepRig:
    """The end-to-end model (seeded LoRA encoder + context stage + heads), its objective and optimizer.
    `stats`: the context stage's input statistics (from the embedding pass: what train_end_to_end takes
    from the initial encoder's embeddings)."""
    encoder = build_seeded_encoder(cfg).to(device)
    units = training_windows(STEP_WINDOW, batch_calls=int(cfg.train.batch_calls), taxonomy=taxonomy, seed=seed)
    objective, fine_bias = build_objective(cfg, train_items=units, taxonomy=taxonomy)
    call_model = build_call_model(cfg, d_in=encoder.output_dim, taxonomy=taxonomy, fine_bias=fine_bias,
                                  train_stats=stats)
    model = EndToEndModel(encoder, call_model, pad_multiple=int(PAD_MULTIPLE_SEC * SR)).to(device).train()
    objective.to(device)
    optimizer, scheduler = make_optimizer(model, cfg.train, total_steps=1000)  # the schedule does not change the cost
    return StepRig(cfg=cfg, model=model, objective=objective, optimizer=optimizer, scheduler=scheduler,
                   taxonomy=taxonomy, load=lambda row: waves[row % len(waves)], device=device,
                   weights_gb=allocated_gb(device), seed=seed)


def run_step(rig: StepRig, units: Sequence[CallItem]) -> float:
    """One training step on `units`, as ctxemo.training.loop runs it; its wall time in seconds."""
    synchronize(rig.device)
    start = time.perf_counter()
    batch = window_batch(units, rig.device, cfg=rig.cfg, load=rig.load)
    backward_batch(rig.model, batch, rig.objective, device=rig.device)
    optimizer_step(rig.model, rig.optimizer, rig.scheduler, float(rig.cfg.train.grad_clip))
    synchronize(rig.device)
    return time.perf_counter() - start


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or a cuBLAS / cuDNN workspace allocation that failed (those surface as a
    plain RuntimeError naming the failure)."""
    text = str(exc)
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(s in text for s in ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
                                                                  "CUDNN_STATUS_ALLOC_FAILED")))


def ran_out_of_memory(rig: StepRig, work: Callable[[], Any]) -> bool:
    """Run `work`; True if it ran out of GPU memory, after freeing what the failed step left behind."""
    try:
        work()
        return False
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
        if not is_out_of_memory(exc):
            raise
    # Cleaned up here, outside the handler: until it ends, the traceback's frames hold the step's tensors.
    rig.model.zero_grad(set_to_none=True)
    release_memory(rig.device)
    return True


def measure_steps(rig: StepRig, *, window: int, warmup: int, timed: int) -> Dict[str, Any]:
    """Median step time of `timed` steps after `warmup` ones, and the peak memory over all of them."""
    units = rig.units(window)
    segments = sum(len(u.rows) for u in units)
    times: List[float] = []
    reset_peak_memory(rig.device)
    oom = ran_out_of_memory(rig, lambda: times.extend(run_step(rig, units) for _ in range(warmup + timed)))
    figures = {"window": window, "batch_calls": len(units), "segments_per_step": segments, "oom": oom,
               "weights_gb": rig.weights_gb, **peak_memory(rig.device)}
    if not oom:
        median = float(np.median(times[warmup:]))
        figures.update(step_s=median, step_s_each=times[warmup:], warmup_s_each=times[:warmup],
                       segments_per_s=segments / median)
    return figures


def largest_window(fits: Callable[[int], bool], *, known_fit: int, known_fail: Optional[int], cap: int,
                   seconds_per_window: float, time_left: Callable[[], float]) -> Dict[str, Any]:
    """The largest window for which `fits(window)` holds: doubling from `known_fit` until one fails (or
    `cap`), then bisection until the bracket is SEARCH_RESOLUTION of the largest fit. A trial starts only if
    TRIAL_SAFETY x its predicted time (`seconds_per_window` x window, updated from each fitting trial) is left.

    Returns:
        largest_fit (0: not even 1 fits), smallest_fail (None: none failed), stopped_by ("resolution",
        "cap" or "budget": then largest_fit is a lower bound), and the trials with their times.
    """
    lo, hi = known_fit, known_fail
    trials: List[Dict[str, Any]] = []
    while True:
        if hi is None and lo >= cap:
            stopped = "cap"
            break
        if hi is not None and hi - lo <= max(1, int(lo * SEARCH_RESOLUTION)):
            stopped = "resolution"
            break
        window = min(max(2 * lo, 1), cap) if hi is None else (lo + hi) // 2
        if TRIAL_SAFETY * seconds_per_window * window > time_left():
            stopped = "budget"
            break
        start = time.perf_counter()
        ok = fits(window)
        seconds = time.perf_counter() - start
        trials.append({"window": window, "fits": ok, "seconds": seconds})
        say(f"    window {window:4d}: {'fits' if ok else 'out of memory'} ({seconds:.1f} s)")
        if ok:
            lo, seconds_per_window = window, max(seconds_per_window, seconds / window)
        else:
            hi = window
    return {"largest_fit": lo, "smallest_fail": hi, "stopped_by": stopped, "cap": cap, "trials": trials}


def window_fits(rig: StepRig, window: int) -> bool:
    return not ran_out_of_memory(rig, lambda: run_step(rig, rig.units(window)))


def lora_arm(cfg: DictConfig, *, checkpointing: bool, sizes: Sizes, clock: Clock, search_until: Callable[[], float],
             **rig_args: Any) -> Dict[str, Any]:
    """Step figures at window 8 and the window search, for one gradient-checkpointing setting.
    `search_until()`: the elapsed time by which the search must end (read once the steps are measured)."""
    label = "with" if checkpointing else "without"
    with clock.stage(f"  build LoRA model, {label} checkpointing"):
        rig = build_rig(with_checkpointing(cfg, checkpointing), **rig_args)
    with clock.stage(f"  LoRA step at window {STEP_WINDOW}, {label} checkpointing"):
        step = measure_steps(rig, window=STEP_WINDOW, warmup=sizes.warmup_steps, timed=sizes.timed_steps)
    if step["oom"]:
        say(f"    out of memory at window {STEP_WINDOW} ({step['batch_calls']} windows)")
    else:
        say(f"    {step['step_s']:.3f} s per step ({step['segments_per_step']} segments, "
            f"{step['segments_per_s']:.0f} segments/s), peak {gb(step['peak_allocated_gb'])} allocated / "
            f"{gb(step['peak_reserved_gb'])} reserved, weights {gb(step['weights_gb'])}")
    deadline = search_until()
    with clock.stage(f"  largest window, {label} checkpointing"):
        search = largest_window(
            lambda w: window_fits(rig, w), known_fit=0 if step["oom"] else STEP_WINDOW,
            known_fail=STEP_WINDOW if step["oom"] else None, cap=sizes.max_window,
            seconds_per_window=step.get("step_s", 0.0) / STEP_WINDOW, time_left=lambda: deadline - clock.elapsed())
    bound = "" if search["stopped_by"] == "resolution" else f" (at least: stopped by {search['stopped_by']})"
    say(f"    largest window that fits: {search['largest_fit']}{bound}; "
        f"smallest that did not: {search['smallest_fail']}")
    return {"step": step, "largest_window": search}


# ----------------------------------------------------------------------------- one encoder, all stages


def attempt(what: str, work: Callable[[], Any], device: torch.device) -> Any:
    """`work()`, or {"error": ...} if it raised: a failed stage (one run of a lent GPU is all there may be)
    must not lose the figures of the stages after it. The traceback is printed; main exits non-zero.
    Either way the memory the stage held is released, so the next stage's peak is its own."""
    try:
        result = work()
    except Exception as exc:  # noqa: BLE001 - reported, never swallowed: see main's exit status
        traceback.print_exc()
        say(f"    FAILED: {what}: {type(exc).__name__}: {exc}")
        result = {"error": f"{type(exc).__name__}: {exc}"}
    release_memory(device)  # outside the handler, as in ran_out_of_memory
    return result


def report_embedding(figures: Dict[str, Any], peak_tflops: float) -> None:
    say(f"    {figures['segments_per_s']:.1f} segments/s ({figures['audio_s_per_s']:.0f} s of audio per s), "
        f"{figures['tflops']:.3g} TFLOP/s = {figures['share_of_peak']:.1%} of the {peak_tflops:.3g} TFLOP/s "
        f"bf16 peak; {figures['backbone_params_m']:.3g}M parameters, weights {gb(figures['weights_gb'])}, "
        f"peak {gb(figures['peak_allocated_gb'])}")


def check_checkpointing_saves(arms: Dict[str, Dict[str, Any]]) -> None:
    """Warn when the checkpointed step peaked no lower: the setting would not be doing its one job."""
    steps = [arms[key].get("step", {}) for key in ("no_checkpointing", "checkpointing")]
    peaks = [step.get("peak_allocated_gb") for step in steps]
    if None not in peaks and not any(step.get("oom", True) for step in steps) and peaks[1] >= peaks[0]:
        say("    WARNING: gradient checkpointing saved no memory: check SegmentEncoder's checkpointing path")


def bench_encoder(name: str, *, smoke: bool, sizes: Sizes, device: torch.device, peak_tflops: float,
                  waves: Sequence[np.ndarray], clock: Clock, deadline: float, seed: int) -> Dict[str, Any]:
    """Embedding figures, then the LoRA arm without and with checkpointing; the searches share the time
    until `deadline` (elapsed seconds)."""
    cfg = encoder_config(name, smoke=smoke, device=device, batch_calls=sizes.batch_calls)
    say(f"{name}: {cfg.encoder.family}, encoder.batch_size {cfg.encoder.batch_size}, max_batch_sec "
        f"{cfg.encoder.max_batch_sec}, layers {cfg.encoder.layers}, LoRA rank {cfg.encoder.lora.rank}; "
        f"time until {deadline:.0f} s elapsed")
    with clock.stage(f"  build + embed {len(waves)} segments (bf16)"):
        embedded = attempt("embedding", lambda: measure_embedding(cfg, waves, device=device, warmup=sizes.embed_warmup,
                                                                  peak_tflops=peak_tflops), device)
    if isinstance(embedded, dict):  # the error
        embedding, stats = embedded, None  # the context stage then standardises with its defaults
    else:
        embedding, stats = embedded[0], feature_stats(embedded[1])
        report_embedding(embedding, peak_tflops)
    rig_args = dict(taxonomy=Taxonomy.from_config(cfg.taxonomy), waves=waves, stats=stats, device=device, seed=seed)
    first_until = lambda: clock.elapsed() + FIRST_SEARCH_SHARE * (deadline - clock.elapsed())  # noqa: E731
    arms = {
        "no_checkpointing": attempt("LoRA without checkpointing", lambda: lora_arm(
            cfg, checkpointing=False, sizes=sizes, clock=clock, search_until=first_until, **rig_args), device),
        "checkpointing": attempt("LoRA with checkpointing", lambda: lora_arm(
            cfg, checkpointing=True, sizes=sizes, clock=clock, search_until=lambda: deadline, **rig_args), device),
    }
    check_checkpointing_saves(arms)
    return {"shape": {} if smoke else ENCODERS[name][1], "embedding": embedding, "lora": arms}


def errors_in(node: Any, path: str = "") -> List[str]:
    """'path: message' of every {"error": ...} left in the result by `attempt`."""
    if not isinstance(node, dict):
        return []
    found = [f"{path or '.'}: {node['error']}"] if "error" in node else []
    return found + [e for key, value in node.items() for e in errors_in(value, f"{path}.{key}")]


def parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, Sizes]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny encoders, small sizes: the code path in seconds")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"total time, imports included (default {GPU_SIZES.budget_s:.0f}; --smoke "
                             f"{SMOKE_SIZES.budget_s:.0f}); the window searches stop early to keep it")
    parser.add_argument("--max-window", type=int, default=None,
                        help=f"cap of the window search (default {GPU_SIZES.max_window}; "
                             f"--smoke {SMOKE_SIZES.max_window})")
    parser.add_argument("--segments", type=int, default=None,
                        help=f"segments in the timed embedding pass (default {GPU_SIZES.segments}; "
                             f"--smoke {SMOKE_SIZES.segments})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for bench_gpu.json, rewritten after each encoder (default: write nothing)")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device here: this benchmark measures a GPU (use --smoke for the CPU check of its code)")
    given = {"budget_s": args.budget_s, "max_window": args.max_window, "segments": args.segments}
    return args, replace(SMOKE_SIZES if args.smoke else GPU_SIZES, **{k: v for k, v in given.items() if v is not None})


def write_result(out: Optional[Path], result: Dict[str, Any]) -> None:
    """bench_gpu.json under --out: after each encoder, so a run cut short by a timeout keeps what it measured."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.json").write_text(json.dumps(result, indent=1) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Every stage in order; prints the figures as they come and a last JSON line. Exit status 1 if a stage
    failed (its error is in the JSON), else 0."""
    import transformers

    args, sizes = parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        # Tiny matmuls gain nothing from more threads, and spinning OpenMP threads on a shared machine made
        # a smoke step ~10x slower (as in ctxemo.training.loop.fit): the smoke run checks code, not speed.
        torch.set_num_threads(1)
    clock = Clock(sizes.budget_s)
    torch.manual_seed(args.seed)
    with clock.stage("device and bf16 matmul"):
        peak = device_peak(device)
        release_memory(device)  # the matmul's operands must not sit in the first stage's reserved memory
    say(f"device: {peak['device_name']}; bf16 dense peak {peak['bf16_peak_tflops']:.3g} TFLOP/s "
        f"({peak['bf16_peak_source']}); measured bf16 matmul {peak['bf16_matmul_tflops']:.3g} TFLOP/s "
        f"({peak['matmul_of_peak']:.0%} of it); torch {torch.__version__}, transformers {transformers.__version__}; "
        f"budget {sizes.budget_s:.0f} s")
    with clock.stage(f"{sizes.segments} synthetic segments"):
        waves = synthetic_segments(sizes.segments, sizes.segment_sec, args.seed)
    result: Dict[str, Any] = {"device": device.type, "smoke": args.smoke, **peak, "torch": torch.__version__,
                              "transformers": transformers.__version__, "sizes": asdict(sizes),
                              "step_window": STEP_WINDOW, "encoders": {}}

    def snapshot() -> None:
        result.update(stages=clock.stages, elapsed_s=clock.elapsed(), errors=errors_in(result["encoders"]))
        write_result(args.out, result)

    for i, name in enumerate(args.encoders):
        if clock.left() <= 0:
            result["encoders"][name] = {"skipped": "budget spent"}
            say(f"{name}: skipped, budget spent")
            continue
        deadline = clock.elapsed() + clock.left() / (len(args.encoders) - i)  # an equal share of what is left
        result["encoders"][name] = bench_encoder(name, smoke=args.smoke, sizes=sizes, device=device,
                                                 peak_tflops=peak["bf16_peak_tflops"], waves=waves, clock=clock,
                                                 deadline=deadline, seed=args.seed)
        snapshot()
    snapshot()
    say(f"total {clock.elapsed():.1f} s" + "".join(f"\nerror in {e}" for e in result["errors"]))
    print(json.dumps(result), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
