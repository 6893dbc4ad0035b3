"""The GPU benchmark (benchmarks/bench_gpu.py) without a GPU: its --smoke run goes through every stage on CPU
with tiny encoders and must print every figure; the window search, the peak table and the failure handling
are checked on their own. The GPU figures themselves: benchmarks/README.md "GPU"."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # bench_gpu imports its helpers from bench_embed
    import bench_gpu

    return bench_gpu


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def _check_cpu_memory(figures: dict) -> None:
    assert figures["peak_allocated_gb"] is None and figures["peak_reserved_gb"] is None
    assert figures["memory_note"] == "n/a on CPU"


def _check_embedding(figures: dict, segments: int) -> None:
    assert figures["segments"] == segments
    for key in ("audio_s", "seconds", "segments_per_s", "audio_s_per_s", "tflop", "tflops", "share_of_peak",
                "backbone_params_m"):
        assert _positive(figures[key]), key
    assert figures["segments_per_s"] == pytest.approx(segments / figures["seconds"])
    assert figures["share_of_peak"] < 1.0  # a pass cannot beat the matmul rate it is measured against
    _check_cpu_memory(figures)


def _check_arm(arm: dict, sizes: dict) -> None:
    step = arm["step"]
    assert step["window"] == 8 and step["oom"] is False
    assert step["segments_per_step"] == 8 * sizes["batch_calls"]
    assert len(step["step_s_each"]) == sizes["timed_steps"] and len(step["warmup_s_each"]) == sizes["warmup_steps"]
    assert all(_positive(s) for s in step["step_s_each"] + step["warmup_s_each"] + [step["step_s"]])
    _check_cpu_memory(step)
    search = arm["largest_window"]
    assert search["cap"] == sizes["max_window"] and search["smallest_fail"] is None  # CPU: no OOM to meet
    assert (search["stopped_by"], search["largest_fit"]) == ("cap", sizes["max_window"])
    assert all(t["fits"] and _positive(t["seconds"]) for t in search["trials"])


def test_smoke_run_prints_every_figure_of_every_encoder(tmp_path):
    # A budget no loaded machine reaches: every search must end at its cap, not at the budget.
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--smoke", "--budget-s", "900",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result == json.loads((tmp_path / "bench_gpu.json").read_text())  # --out holds the printed figures
    assert result["device"] == "cpu" and result["smoke"] is True and result["errors"] == []
    assert _positive(result["bf16_peak_tflops"]) and _positive(result["bf16_matmul_tflops"])
    assert result["bf16_peak_source"].startswith("measured")  # no data-sheet lookup for a CPU
    assert set(result["encoders"]) == {"whisper-large-v3", "wav2vec2-large"}
    for name, figures in result["encoders"].items():
        _check_embedding(figures["embedding"], result["sizes"]["segments"])
        assert set(figures["lora"]) == {"no_checkpointing", "checkpointing"}, name
        for arm in figures["lora"].values():
            _check_arm(arm, result["sizes"])
    assert all(stage["seconds"] >= 0 for stage in result["stages"]) and _positive(result["elapsed_s"])
    progress = "\n".join(lines[:-1])
    for stage in ("build + embed", "LoRA step at window 8, without checkpointing",
                  "LoRA step at window 8, with checkpointing", "largest window, with checkpointing"):
        assert progress.count(stage) == 2, stage  # once per encoder, each with its elapsed time


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A10", 125.0), ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", 362.0), ("NVIDIA A10G", None), ("Tesla T4", None),
])
def test_the_peak_table_matches_whole_words_of_the_device_name(bench, name, peak):
    found = bench.table_peak_tflops(name)
    assert (found and found[1]) == peak  # A10G is no A10, A100 no A10: a device not listed gets measured


def _search(bench, limit, **kwargs):
    tried = []

    def fits(window):
        tried.append(window)
        return window <= limit

    options = dict(known_fit=8, known_fail=None, cap=512, seconds_per_window=0.0, time_left=lambda: 1e9)
    return bench.largest_window(fits, **{**options, **kwargs}), tried


def test_window_search_doubles_then_bisects_to_an_eighth(bench):
    found, tried = _search(bench, 37)
    assert tried[:3] == [16, 32, 64]  # doubling from the known fit until one fails
    assert found["stopped_by"] == "resolution"
    assert found["largest_fit"] <= 37 < found["smallest_fail"]
    assert found["smallest_fail"] - found["largest_fit"] <= max(1, found["largest_fit"] // 8)
    assert [t["window"] for t in found["trials"]] == tried


def test_window_search_stops_at_the_cap_and_at_the_budget(bench):
    capped, tried = _search(bench, 10 ** 6, cap=100)
    assert (capped["largest_fit"], capped["stopped_by"], tried) == (100, "cap", [16, 32, 64, 100])
    # 1 s per window: 16 needs 1.5 x 16 = 24 s (left: 30), 32 would need 48.
    budget, tried = _search(bench, 10 ** 6, seconds_per_window=1.0, time_left=lambda: 30.0)
    assert (budget["largest_fit"], budget["stopped_by"], tried) == (16, "budget", [16])


def test_window_search_goes_down_when_the_first_window_did_not_fit(bench):
    found, _ = _search(bench, 3, known_fit=0, known_fail=8)
    assert (found["largest_fit"], found["smallest_fail"]) == (3, 4)
    nothing, tried = _search(bench, 0, known_fit=0, known_fail=8)
    assert (nothing["largest_fit"], nothing["smallest_fail"], tried) == (0, 1, [4, 2, 1])


def test_a_failed_stage_is_reported_and_the_stages_after_it_still_run(bench, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("planted failure")

    monkeypatch.setattr(bench, "measure_embedding", broken)
    threads = bench.torch.get_num_threads()
    try:
        status = bench.main(["--smoke", "--encoders", "wav2vec2-large", "--max-window", "8", "--budget-s", "900"])
    finally:
        bench.torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status == 1
    assert result["errors"] == [".wav2vec2-large.embedding: ValueError: planted failure"]
    for arm in result["encoders"]["wav2vec2-large"]["lora"].values():  # trained with default input statistics
        assert _positive(arm["step"]["step_s"]) and arm["largest_window"]["largest_fit"] == 8


def test_out_of_memory_is_told_apart_from_other_errors(bench):
    assert bench.is_out_of_memory(bench.torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert bench.is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not bench.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not bench.is_out_of_memory(ValueError("CUDA out of memory"))  # only torch's own errors count


@pytest.mark.parametrize("name, params_m", [("whisper-large-v3", 637.0), ("wav2vec2-large", 315.4)])
def test_the_gpu_shapes_are_the_named_models_and_train(bench, name, params_m):
    from ctxemo.models.backbones import build_backbone

    cpu = bench.torch.device("cpu")
    cfg = bench.encoder_config(name, smoke=False, device=cpu, batch_calls=1)
    shape = OmegaConf.to_container(cfg.encoder.model_config)
    with bench.torch.device("meta"):  # the full size, counted without allocating it
        backbone = build_backbone(cfg.encoder.family, source=None, revision=None, offline=True, model_config=shape,
                                  overrides={})
    assert sum(p.numel() for p in backbone.parameters()) / 1e6 == pytest.approx(params_m, abs=0.5)
    # One layer at the real width through a checkpointed LoRA step: the GPU run's config keys and layout
    # (128 mel bins; layer-norm CNN, stable layer norm, SpecAugment) train, which the tiny smoke encoders cannot show.
    cfg.encoder.model_config["encoder_layers" if cfg.encoder.family == "whisper" else "num_hidden_layers"] = 1
    cfg = bench.with_checkpointing(cfg, True)
    waves = bench.synthetic_segments(2, (0.6, 1.0), seed=0)
    rig = bench.build_rig(cfg, taxonomy=bench.Taxonomy.from_config(cfg.taxonomy), waves=waves, stats=None,
                          device=cpu, seed=0)
    assert bench.run_step(rig, rig.units(2)) > 0
    assert all(p.grad is None for p in rig.model.parameters())  # the step ran to its end (gradients cleared)
