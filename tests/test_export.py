"""ONNX export: a bundle's encoder (LoRA merged) and context model + heads as ONNX; a whole-call recording
scored live on onnxruntime matches torch (max |dp| <= 1e-4); the export is checked and tamper-evident."""
import json

import numpy as np
import pytest
import torch
from bundle_helpers import random_bundle, small_corpus, tiny_config

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from ctxemo.cli import main  # noqa: E402
from ctxemo.data.segmenter import SegmenterConfig  # noqa: E402
from ctxemo.data.synthetic_voice import write_call_recordings  # noqa: E402
from ctxemo.embedding.encode import build_seeded_encoder  # noqa: E402
from ctxemo.errors import BundleError  # noqa: E402
from ctxemo.evaluation.evaluate import Thresholds  # noqa: E402
from ctxemo.inference.bundle import load_bundle, save_bundle  # noqa: E402
from ctxemo.inference.export_onnx import export_onnx  # noqa: E402
from ctxemo.inference.live import LiveSession  # noqa: E402
from ctxemo.inference.onnx_bundle import CONTEXT_FILE, FRAMES_FILE, load_onnx_bundle  # noqa: E402
from ctxemo.inference.predict import prepare_recording  # noqa: E402
from ctxemo.models.call_model import build_call_model  # noqa: E402
from ctxemo.taxonomy import Taxonomy  # noqa: E402
from ctxemo.training.calibration import TemperatureScaler  # noqa: E402


def lora_bundle(folder, cfg):
    """A causal bundle whose encoder carries trained-looking (non-zero) LoRA weights."""
    torch.manual_seed(1)
    encoder = build_seeded_encoder(cfg, gradient_checkpointing=False)
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    model = build_call_model(cfg, d_in=encoder.output_dim, taxonomy=taxonomy)
    model.context.set_feature_stats(0.1 * torch.randn(encoder.output_dim), 0.5 + torch.rand(encoder.output_dim))
    return save_bundle(folder, cfg=cfg, model=model, encoder=encoder, d_in=encoder.output_dim,
                       time_features_used=True, thresholds=Thresholds(0.45, np.linspace(0.2, 0.6, 11)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    # max_chunk_sec=1: turns longer than a second go through the chunked path of the glue.
    cfg = tiny_config(root, "context.causal=true", "context.window=3", "encoder.finetune=lora",
                      "encoder.max_chunk_sec=1.0", "encoder.layers=weighted")
    bundle = load_bundle(lora_bundle(root / "bundle", cfg))
    out = export_onnx(bundle, root / "onnx")
    turns = write_call_recordings(small_corpus(root / "corpus", n_calls=1, seed=3), root / "calls", seed=3)
    return bundle, out, sorted(turns.parent.glob("*.wav"))[0]


def test_a_recording_scored_live_on_onnxruntime_matches_torch(exported):
    bundle, folder, wav = exported
    call = prepare_recording(bundle, wav, channels=None, segmenter=SegmenterConfig(vad="energy"))
    assert len(call.segments) >= 6 and max(s.duration for s in call.segments) > 1.0  # chunked turns included
    sessions = {"torch": LiveSession(bundle), "onnx": LiveSession(folder)}  # the export folder, as a user gives it
    p = {name: [] for name in sessions}
    for s in call.segments:
        for name, session in sessions.items():
            record = session.push(s.load_wave(), sample_rate=bundle.sample_rate, role=s.role, start_sec=s.start,
                                  end_sec=s.end)
            if record["p_negative"] is not None:
                p[name].append([record["p_negative"]] + [record[f"p_{n}"] for n in bundle.taxonomy.labels])
    torch_p, onnx_p = np.array(p["torch"]), np.array(p["onnx"])
    assert torch_p.shape == onnx_p.shape and len(torch_p) >= 3
    print(f"max abs dp over {torch_p.size} probabilities: {np.abs(torch_p - onnx_p).max():.2e}")
    assert np.abs(torch_p - onnx_p).max() <= 1e-4
    assert [r["pred_negative"] for r in sessions["torch"].records] == [r["pred_negative"] for r in sessions["onnx"].records]


def test_lora_is_merged_and_axes_are_dynamic(exported):
    bundle, folder, _ = exported
    meta = json.loads((folder / "export.json").read_text())
    assert meta["encoder"]["lora_merged"] is True and meta["source_bundle_id"] == bundle.id
    frames = onnx.load(str(folder / FRAMES_FILE))
    assert not [t.name for t in frames.graph.initializer if "lora" in t.name.lower()]  # folded into W
    dims = [d.dim_param for d in frames.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["", "samples"]
    context = onnx.load(str(folder / CONTEXT_FILE))
    assert [d.dim_param for d in context.graph.input[0].type.tensor_type.shape.dim][1] == "segments"
    # The merged LoRA weights matter: without them the embedding is another one.
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    plain = build_seeded_encoder(bundle.cfg, finetune="frozen", gradient_checkpointing=False).eval()
    with torch.no_grad():
        without = plain(torch.from_numpy(wave)[None], torch.tensor([16000])).numpy()
    got = load_onnx_bundle(folder).embed([wave])
    assert np.abs(got - without).max() > 1e-3
    np.testing.assert_allclose(got, bundle.embed([wave]), atol=1e-4)


def test_a_modified_export_is_refused_naming_the_file(exported, tmp_path):
    import shutil

    _, folder, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    thresholds = json.loads((copy / "thresholds.json").read_text())
    thresholds["binary"] = 0.01
    (copy / "thresholds.json").write_text(json.dumps(thresholds))
    with pytest.raises(BundleError, match=r"thresholds\.json: modified since export"):
        load_onnx_bundle(copy)


def test_cli_export(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "context.causal=true", "context.window=4")
    bundle = random_bundle(tmp_path / "b", cfg)
    assert main(["export", str(bundle), "--out", str(tmp_path / "x"), "--format", "onnx"]) == 0
    assert "encoder_frames.onnx" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [
        "config.yaml", "context.onnx", "encoder_frames.onnx", "encoder_pool.onnx", "export.json", "taxonomy.json",
        "thresholds.json"]
    whisper = random_bundle(tmp_path / "w", tiny_config(tmp_path, "encoder.family=whisper",
                                                        "encoder.model_config={d_model: 32}"), d_in=64)
    assert main(["export", str(whisper), "--out", str(tmp_path / "wx")]) == 2
    assert "encoder.family='whisper' cannot be exported" in capsys.readouterr().err
    assert not (tmp_path / "wx").exists()  # nothing half-written
    features = random_bundle(tmp_path / "f", tiny_config(tmp_path, "data.features=x.npy", "context.causal=true",
                                                          "context.window=4"),
                             d_in=5)
    assert main(["export", str(features), "--out", str(tmp_path / "fx")]) == 0  # context graph only
    session = LiveSession(tmp_path / "fx")
    record = session.push_embedding(np.ones(5, np.float32), start_sec=0.0, end_sec=1.0)
    assert 0.0 <= record["p_negative"] <= 1.0


def test_the_bundles_temperature_travels_with_the_export(tmp_path):
    """train.calibrate=temperature is applied last; an export that dropped it would give other alert p."""
    cfg = tiny_config(tmp_path, "context.causal=true", "context.window=3")
    bundle = load_bundle(random_bundle(tmp_path / "b", cfg, d_in=32, calibrator=TemperatureScaler(2.5)))
    onnx_bundle = load_onnx_bundle(export_onnx(bundle, tmp_path / "x"))
    assert onnx_bundle.calibrator is not None and onnx_bundle.calibrator.temperature == pytest.approx(2.5)
    feats = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    sessions = [LiveSession(bundle), LiveSession(onnx_bundle)]
    for i, row in enumerate(feats):
        got = [s.push_embedding(row, role="caller", start_sec=float(i), end_sec=i + 0.8)["p_negative"]
               for s in sessions]
        assert got[0] == pytest.approx(got[1], abs=1e-5)
    raw = bundle.score_window(feats, roles=["caller"] * 5, positions=np.arange(5),
                              time_feats=np.zeros((5, 2), np.float32))[0]
    assert abs(got[0] - raw) > 1e-3  # the temperature changed the alert probability
