"""Model bundles: `ctxemo train` writes one, a reload scores the same, the rebuilt encoder reproduces the
cached embeddings, and a tampered bundle (missing file, other version, pickle, edited file, changed
encoder) is refused naming the file. Builders live in bundle_helpers.py."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from bundle_helpers import SR, call_arrays, random_bundle, small_corpus, tiny_config

from ctxemo.cli import main
from ctxemo.errors import BundleError
from ctxemo.evaluation.evaluate import Thresholds
from ctxemo.inference.bundle import (
    ENCODER_FILE,
    META_FILE,
    build_encoder,
    load_bundle,
    probe_signal,
    save_bundle,
)
from ctxemo.io import file_sha256
from ctxemo.models.call_model import build_call_model, feature_stats, forward_windowed
from ctxemo.taxonomy import Taxonomy

# ----------------------------------------------------------------------------- round trip

def test_round_trip_scores_like_the_saved_model(tmp_path):
    cfg = tiny_config(tmp_path, "data.features=unused.npy", "context.window=4", "data.use_operator_turns=true")
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    torch.manual_seed(1)
    stats = feature_stats(torch.randn(50, 6).numpy() * 3 + 1)
    model = build_call_model(cfg, d_in=6, taxonomy=taxonomy, train_stats=stats)
    save_bundle(tmp_path / "b", cfg=cfg, model=model, thresholds=Thresholds(0.4, np.full(11, 0.5)), d_in=6,
                time_features_used=True)
    bundle = load_bundle(tmp_path / "b")
    assert not bundle.has_encoder and bundle.d_in == 6 and bundle.thresholds.binary == 0.4
    torch.testing.assert_close(bundle.model.context.feat_mean, model.context.feat_mean)  # buffers travel too
    feats, roles, start, end = call_arrays(11, 6)
    scores = bundle.score_call(feats, roles=roles, start_sec=start, end_sec=end)
    # Reference: the original model, fed the way training feeds it (test_time_features_match_training).
    from ctxemo.data.datasets import call_inputs, time_features
    model.eval()
    with torch.no_grad():
        logits = forward_windowed(model, call_inputs(feats, roles=roles, positions=np.arange(11),
                                                     time_feats=time_features(start, end)), window=4)
    caller = np.array([r == "caller" for r in roles])
    p_negative, p_fine = model.probabilities(logits)
    np.testing.assert_allclose(scores.p_negative[caller], p_negative[0].numpy()[caller], atol=1e-6)
    np.testing.assert_allclose(scores.p_fine[caller], p_fine[0].numpy()[caller], atol=1e-6)
    assert np.isnan(scores.p_negative[~caller]).all() and np.isnan(scores.p_fine[~caller]).all()


def test_time_features_one_at_a_time_match_the_whole_call():
    """Live scoring pushes one segment at a time (previous_end = the last in-context end); offline scoring
    and training compute the whole call at once: the rows must agree, NaN (unknown) times included."""
    from ctxemo.data.datasets import time_features

    start = np.array([0.5, np.nan, 4.0, 3.0])
    end = np.array([1.5, 3.0, 5.0, 3.5])
    whole = time_features(start, end)
    one_by_one = [time_features(start[i:i + 1], end[i:i + 1], previous_end=end[i - 1] if i else None)[0]
                  for i in range(len(start))]
    np.testing.assert_array_equal(whole, np.stack(one_by_one))
    assert whole[0, 0] == 0.0 and whole[1, 1] == 0.0  # no previous segment; unknown start


def test_train_command_writes_a_bundle_on_features(features_config, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(features_config), "train.epochs=2", "--out", str(out), "--quiet"]) == 0
    for name in ("config.yaml", "run.json", "metrics.json", "history.json", "bundle/bundle.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["split"] == "inner_validation"
    bundle = load_bundle(out / "bundle")
    assert bundle.meta["embedding"] == "precomputed" and not bundle.uses_time  # the manifest has no start/end
    assert set(json.loads((out / "bundle/thresholds.json").read_text())["fine"]) == set(bundle.taxonomy.labels)
    assert not list(out.rglob("*.pt"))  # the training checkpoint is gone, nothing pickled stays


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    """`train_bundle` on a 4-call audio corpus (two-stage: tiny random-init encoder, cached embeddings)."""
    from ctxemo.embedding.corpus import load_corpus
    from ctxemo.studies.train_bundle import train_bundle

    root = tmp_path_factory.mktemp("audio_run")
    manifest = small_corpus(root / "corpus")
    cfg = tiny_config(root, f"data.manifest={manifest}", "context.causal=true", "context.window=3")
    data = load_corpus(cfg, progress=False)
    bundle = train_bundle(cfg, root / "run", progress=False, data=data, log=lambda m: None)
    return cfg, data, bundle


def test_rebuilt_encoder_reproduces_the_cached_embeddings(audio_run):
    cfg, data, path = audio_run
    bundle = load_bundle(path)
    info = json.loads((path / ENCODER_FILE).read_text())
    assert info["adapter"] is False and len(info["probe"]["embedding"]) == data.feats.shape[1]
    manifest = data.manifest
    rows = np.arange(len(manifest))[:10]
    waves = [sf.read(manifest.audio_path(r), dtype="float32")[0] for r in rows]
    np.testing.assert_allclose(bundle.embed(waves), data.feats[rows], atol=1e-5)
    assert bundle.warnings == []


def test_changed_encoder_config_is_refused(audio_run, tmp_path):
    import shutil

    _, _, path = audio_run
    copy = shutil.copytree(path, tmp_path / "b")
    text = (copy / "config.yaml").read_text().replace("seed: 0", "seed: 1")
    _rewrite(copy, "config.yaml", text)
    bundle = load_bundle(copy)  # the model itself still loads ...
    with pytest.raises(BundleError, match=r"encoder\.json.*fingerprint differs in: .*weights"):
        bundle.encoder()  # ... but the encoder it would score with is another one


def test_changed_probe_is_refused(audio_run, tmp_path):
    import shutil

    _, _, path = audio_run
    copy = shutil.copytree(path, tmp_path / "b")
    info = json.loads((copy / ENCODER_FILE).read_text())
    info["probe"]["embedding"][0] += 0.01
    _rewrite(copy, ENCODER_FILE, json.dumps(info))
    with pytest.raises(BundleError, match="probe embedding"):
        load_bundle(copy).encoder()


def test_fine_tuned_encoder_travels_as_an_adapter(tmp_path):
    cfg = tiny_config(tmp_path, "encoder.finetune=lora", "encoder.lora.rank=2")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))
        from ctxemo.models.segment_encoder import SegmentEncoder
        encoder = SegmentEncoder.from_config(cfg.encoder, sample_rate=SR)
    with torch.no_grad():  # "training": move every trainable weight
        for param in encoder.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))
    encoder.eval()
    path = random_bundle(tmp_path / "b", cfg)  # frozen rebuild ...
    assert not (path / "encoder_adapter").exists()
    taxonomy = Taxonomy.from_config(cfg.taxonomy)
    model = build_call_model(cfg, d_in=32, taxonomy=taxonomy)
    path = save_bundle(tmp_path / "b", cfg=cfg, model=model, thresholds=Thresholds(0.5, np.full(11, 0.5)), d_in=32,
                       time_features_used=False, encoder=encoder)  # ... replaced atomically by a tuned one
    assert (path / "encoder_adapter" / "adapter.safetensors").is_file()
    waves = [probe_signal(SR, 0.7), 0.1 * np.random.default_rng(0).standard_normal(9000).astype(np.float32)]
    from ctxemo.models.frontend import pad_waves
    with torch.no_grad():
        expected = encoder(*pad_waves(waves, min_samples=1600)).numpy()
    np.testing.assert_allclose(load_bundle(path).embed(waves), expected, atol=1e-5)
    assert not np.allclose(build_encoder(cfg)(*pad_waves(waves, min_samples=1600)).detach().numpy(), expected)


# ----------------------------------------------------------------------------- refusals

def _rewrite(folder, name, text):
    """Replace a bundle file and its recorded hash (a deliberate edit that passes the integrity check)."""
    (folder / name).write_text(text)
    meta = json.loads((folder / META_FILE).read_text())
    meta["files"][name] = file_sha256(folder / name)
    (folder / META_FILE).write_text(json.dumps(meta))


@pytest.fixture
def bundle_dir(tmp_path):
    return random_bundle(tmp_path / "bundle", tiny_config(tmp_path, "data.features=x.npy"), d_in=5)


def test_missing_file_is_refused(bundle_dir):
    (bundle_dir / "thresholds.json").unlink()
    with pytest.raises(BundleError, match=r"thresholds\.json: missing"):
        load_bundle(bundle_dir)
    (bundle_dir / META_FILE).unlink()
    with pytest.raises(BundleError, match=r"bundle\.json: missing"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(bundle_dir / "nowhere")


def test_other_format_version_is_refused(bundle_dir):
    meta = json.loads((bundle_dir / META_FILE).read_text())
    meta["format"] = "ctxemo-bundle/99"
    (bundle_dir / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"bundle\.json: bundle format 'ctxemo-bundle/99'"):
        load_bundle(bundle_dir)


def test_pickle_in_place_of_safetensors_is_refused(bundle_dir):
    from safetensors.torch import load_file

    state = load_file(str(bundle_dir / "model.safetensors"))
    (bundle_dir / "model.safetensors").unlink()
    torch.save(state, bundle_dir / "model.pt")
    with pytest.raises(BundleError, match=r"model\.pt: .*safetensors only"):
        load_bundle(bundle_dir)
    # The same pickle under the safetensors name (hash updated) is not parsed as weights either.
    (bundle_dir / "model.pt").rename(bundle_dir / "model.safetensors")
    meta = json.loads((bundle_dir / META_FILE).read_text())
    meta["files"]["model.safetensors"] = file_sha256(bundle_dir / "model.safetensors")
    (bundle_dir / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"model\.safetensors: not a safetensors file"):
        load_bundle(bundle_dir)


def test_modified_file_is_refused(bundle_dir):
    data = bytearray((bundle_dir / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bundle_dir / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.safetensors: modified"):
        load_bundle(bundle_dir)


def test_weights_that_do_not_fit_the_config_are_refused(bundle_dir):
    text = (bundle_dir / "config.yaml").read_text().replace("d_model: 16", "d_model: 8").replace("heads: 2", "heads: 1")
    _rewrite(bundle_dir, "config.yaml", text)
    with pytest.raises(BundleError, match=r"model\.safetensors: does not fit"):
        load_bundle(bundle_dir)
