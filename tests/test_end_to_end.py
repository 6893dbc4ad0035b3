"""End-to-end mode: windows of K segments, encoder + context trained together, resumable, evaluated
like two-stage (whole calls embedded by the current encoder)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import dies_on_call
from safetensors.torch import load_file

import ctxemo.training.end_to_end as end_to_end
from ctxemo.cli import main
from ctxemo.config import load_config
from ctxemo.data.datasets import CallInputs, CallItem, collate
from ctxemo.data.windows import epoch_windows
from ctxemo.embedding.corpus import load_corpus
from ctxemo.errors import ConfigError
from ctxemo.models.call_model import build_call_model
from ctxemo.models.end_to_end_model import AudioCallInputs, EndToEndModel
from ctxemo.models.frontend import pad_waves
from ctxemo.models.segment_encoder import SegmentEncoder
from ctxemo.studies.ablation import run_ablation
from ctxemo.studies.cv import run_cv


def _call(n: int, call_id: str = "c") -> CallItem:
    return CallItem(call_id=call_id, rows=np.arange(100, 100 + n), feats=np.zeros((n, 0), np.float32),
                    role=np.zeros(n, np.int64), time_feats=np.zeros((n, 2), np.float32),
                    negative=np.zeros(n, np.float32), fine=np.zeros((n, 3), np.float32), scored=np.ones(n, bool))


def test_windows_cover_every_segment_with_a_fixed_count_and_shift_between_epochs():
    calls = [_call(23, "a"), _call(3, "b"), _call(8, "c")]
    generator = torch.Generator().manual_seed(0)
    tilings = []
    for _ in range(6):
        windows = epoch_windows(calls, window=8, generator=generator)
        assert len(windows) == 3 + 1 + 1  # ceil(23/8), one short call, one exact fit: every epoch
        for call in calls:
            mine = [w for w in windows if w.call_id == call.call_id]
            covered = set(np.concatenate([w.rows for w in mine]).tolist())
            assert covered == set(call.rows.tolist())
            for w in mine:
                assert len(w.rows) == min(8, len(call.rows))
                assert np.array_equal(w.rows, call.rows[w.first_position:w.first_position + len(w.rows)])
        tilings.append(tuple(w.first_position for w in windows if w.call_id == "a"))
    assert len(set(tilings)) > 1, "the tiling never moved"
    again = epoch_windows(calls, window=8, generator=torch.Generator().manual_seed(0))
    assert [w.first_position for w in again] == [w.first_position for w in epoch_windows(
        calls, window=8, generator=torch.Generator().manual_seed(0))]


def test_windows_keep_their_positions_in_the_call():
    window = _call(20).window(5, 13)
    batch = collate([window, _call(4)])
    assert batch.inputs.position[0].tolist() == list(range(5, 13))
    assert batch.inputs.position[1, :4].tolist() == [0, 1, 2, 3]


def test_end_to_end_forward_equals_encoding_each_segment_then_the_context_stage(taxonomy):
    torch.manual_seed(0)
    encoder = SegmentEncoder.from_config({"family": "wav2vec2", "finetune": "lora"}, sample_rate=16000).eval()
    cfg = load_config(overrides=["context.d_model=16", "context.heads=2"])
    call_model = build_call_model(cfg, d_in=encoder.output_dim, taxonomy=taxonomy).eval()
    model = EndToEndModel(encoder, call_model)
    rng = np.random.default_rng(0)
    lengths = [[4000, 9000, 2500], [7000, 3000]]  # two windows, the second padded to 3 segments
    waves = [rng.standard_normal(n).astype(np.float32) for call in lengths for n in call]
    padded, lens = pad_waves(waves)
    seg_mask = torch.tensor([[True, True, True], [True, True, False]])
    shape = seg_mask.shape
    common = dict(seg_mask=seg_mask, role=torch.zeros(shape, dtype=torch.long),
                  position=torch.arange(3).expand(shape), time_feats=torch.zeros(*shape, 2))
    inputs = AudioCallInputs(waves=padded, wave_lens=lens, buckets=[[4, 2], [0], [3, 1]], **common)
    with torch.no_grad():
        got = model(inputs)
        each = torch.cat([encoder(torch.from_numpy(w)[None], torch.tensor([len(w)])) for w in waves])
        feats = torch.zeros(*shape, each.shape[1])
        feats[seg_mask] = each
        want = call_model(CallInputs(feats=feats, **common))
    assert torch.allclose(got.binary[seg_mask], want.binary[seg_mask], atol=1e-5)
    assert torch.allclose(got.fine[seg_mask], want.fine[seg_mask], atol=1e-5)


@pytest.fixture(scope="module")
def audio_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "corpus"
    assert main(["synth", "--out", str(out), "--calls", "6", "--quiet"]) == 0
    return out / "manifest.csv"


def e2e_overrides(manifest):
    return [f"data.manifest={manifest}", "train.mode=end_to_end", "encoder.family=wav2vec2", "encoder.finetune=lora",
            "encoder.layers=last", "encoder.lora.dropout=0.0", "train.window_segments=4", "train.batch_calls=2",
            "train.epochs=3", "train.patience=10", "train.encoder_lr=0.01", "train.device=cpu",
            "context.d_model=16", "context.depth=1", "context.heads=2", "cv.folds=2", "cv.only_folds=[0]",
            "cv.inner_folds=0"]  # one encoder per fold: an end-to-end bundle holds one (train_bundle)


def e2e_config(manifest, *extra):
    return load_config(overrides=[*e2e_overrides(manifest), *extra])


def test_end_to_end_cv_trains_the_adapters_and_stores_only_what_trained(audio_corpus, tmp_path):
    cfg = e2e_config(audio_corpus, "encoder.gradient_checkpointing=true")
    run_cv(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "fold0" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and 0 <= metrics["binary"]["f1"] <= 1
    state = load_file(tmp_path / "run" / "fold0" / "model.safetensors")
    lora_b = [k for k in state if "lora_B" in k]
    assert lora_b and any(state[k].abs().sum() > 0 for k in lora_b), "LoRA B starts at 0: it must have trained"
    frozen = [k for k in state if "base_layer" in k or "conv_layers" in k or "feed_forward" in k]
    assert not frozen, "frozen base weights are rebuilt from the config, not stored"
    assert any(k.startswith("call_model.context.") for k in state)


def test_end_to_end_kill_then_resume_equals_uninterrupted(audio_corpus, tmp_path, monkeypatch):
    cfg = e2e_config(audio_corpus)
    run_cv(cfg, tmp_path / "full", progress=False)
    real = end_to_end.score_calls
    monkeypatch.setattr(end_to_end, "score_calls", dies_on_call(real, 2))  # killed in epoch 2
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg, tmp_path / "resumed", progress=False)
    assert (tmp_path / "resumed" / "fold0" / "checkpoint.pt").is_file()
    monkeypatch.setattr(end_to_end, "score_calls", real)
    run_cv(cfg, tmp_path / "resumed", progress=False)
    read = lambda run, name: json.loads((tmp_path / run / "fold0" / name).read_text())  # noqa: E731
    assert read("resumed", "history.json") == read("full", "history.json")
    assert read("resumed", "metrics.json") == read("full", "metrics.json")


def test_end_to_end_refuses_cached_features(audio_corpus, tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(ConfigError, match="data.features"):
        load_corpus(e2e_config(audio_corpus, f"data.features={tmp_path / 'f.npy'}"), progress=False)


E2E_GRIDS = sorted(p for p in (Path(__file__).resolve().parent.parent / "experiments" / "configs").rglob("*.yaml")
                   if load_config([p]).train.mode == "end_to_end")


def test_there_are_end_to_end_grids():
    assert {p.name for p in E2E_GRIDS} >= {"lora.yaml", "context_x_lora.yaml"}


@pytest.mark.parametrize("path", E2E_GRIDS, ids=[p.name for p in E2E_GRIDS])
def test_end_to_end_grids_smoke_run_with_their_lora_arms(path, audio_corpus, tmp_path, monkeypatch):
    """The grid's reference and first LoRA arm, unchanged, on a tiny random encoder of the grid's family
    (no hub: source=None) and a 6-call synthetic audio corpus."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config([path], [f"data.manifest={audio_corpus}", "encoder.source=null", "encoder.offline=true",
                               "encoder.model_config={}", "train.epochs=1", "train.device=cpu", "cv.folds=2",
                               "cv.only_folds=[0]", "context.d_model=16", "context.depth=1", "context.heads=2",
                               f"out_dir={tmp_path}"])
    arms = dict(cfg.ablation.arms)
    lora_arm = next(a for a, o in arms.items() if "encoder.finetune=lora" in o)
    cfg.ablation.arms = {cfg.ablation.reference: arms[cfg.ablation.reference], lora_arm: arms[lora_arm]}
    monkeypatch.setattr("ctxemo.studies.ablation.finish_comparison", lambda run_dir, result, **kw: result)
    result = run_ablation(cfg, tmp_path / "ablate", progress=False, log=lambda *_: None)
    # The baselines run on the frozen encoder's embeddings of the same audio.
    assert list(result["arms"]) == [*cfg.ablation.arms, *[b for b in cfg.ablation.baselines if b not in cfg.ablation.arms]]
    state = load_file(tmp_path / "ablate" / lora_arm / "fold0" / "model.safetensors")
    assert any("lora_B" in k for k in state)


def test_train_command_writes_an_end_to_end_bundle_with_its_adapter(audio_corpus, tmp_path):
    """`ctxemo train` in end-to-end mode: the bundle carries the trained LoRA weights, loads, and predicts."""
    from ctxemo.inference.bundle import load_bundle
    from ctxemo.inference.predict import predict_manifest

    config = tmp_path / "e2e.yaml"
    config.write_text("name: e2e\n", encoding="utf-8")
    args = [o for o in e2e_overrides(audio_corpus) if not o.startswith("cv.") or o.startswith("cv.inner_folds")]
    assert main(["train", str(config), *args, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    bundle = load_bundle(tmp_path / "run" / "bundle")
    assert bundle.meta["embedding"] == "encoder" and (tmp_path / "run" / "bundle" / "encoder_adapter").is_dir()
    lora_b = [p for n, p in bundle.encoder().named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.detach().abs().sum()) > 0 for p in lora_b)
    summary = predict_manifest(tmp_path / "run" / "bundle", audio_corpus, tmp_path / "pred")
    assert summary.calls and (tmp_path / "pred" / "segments.csv").is_file()
    assert not list((tmp_path / "run").rglob("*.pt"))
