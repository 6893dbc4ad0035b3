"""SegmentEncoder on tiny random configs of every family: padding invariance, chunking, layer choice,
trainable sets per finetune mode, adapters, loading from a local folder, Whisper without 30-s padding."""
import json

import pytest
import torch
from transformers import (
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from ctxemo.config import EncoderConfig, LoraConfig
from ctxemo.errors import BundleError, ConfigError
from ctxemo.models.backbones import tiny_model_config
from ctxemo.models.chunking import merge_chunks, split_into_chunks
from ctxemo.models.frontend import pad_waves
from ctxemo.models.segment_encoder import SegmentEncoder
from ctxemo.models.upstream import MaskedGroupNorm, WhisperUpstream

FAMILIES = ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"]
SR = 16000
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch, via WavLM


def make(family: str, seed: int = 0, **fields) -> SegmentEncoder:
    torch.manual_seed(seed)
    return SegmentEncoder.from_config(EncoderConfig(family=family, **fields), sample_rate=SR).eval()


def waves(*lengths: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [0.3 * torch.randn(n, generator=g) for n in lengths]


def encode_each(enc, items):
    return torch.cat([enc(w[None], torch.tensor([len(w)])) for w in items])


# ----------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_equals_each_segment_alone(family):
    enc = make(family, pooling="attentive_stats")
    torch.nn.init.normal_(enc.pooling.score.weight)  # make attention non-uniform
    items = waves(3200, 16000, 9000, 100)  # 100 samples: shorter than the CNN's receptive field
    batch, lens = pad_waves(items)
    with torch.no_grad():
        out = enc(batch, lens)
        alone = encode_each(enc, items)
    assert out.shape == (4, enc.output_dim) == (4, 64)
    torch.testing.assert_close(out, alone, atol=1e-5, rtol=0)


def test_masked_group_norm_equals_group_norm_on_the_unpadded_input():
    norm = MaskedGroupNorm(4, 4)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 4, 9)
    norm.frame_lens = torch.tensor([9, 5])
    padded = norm(x)
    norm.frame_lens = None
    torch.testing.assert_close(padded[1, :, :5], norm(x[1:, :, :5])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[0], norm(x[:1])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_long_segment_chunks_pool_like_their_concatenated_frames(family):
    """Invariant: a segment longer than the window (whisper 1.28 s here, wav2vec2 max_chunk_sec=0.5) is
    cut into ceil(len/window) equal chunks; its mean-pooled embedding equals the frame-count-weighted
    mean of the chunks encoded as separate segments, and does not depend on its batch mates."""
    enc = make(family, layers="weighted", max_chunk_sec=0.5)
    long_len = 48000 if family == "whisper" else 20000  # 3 s -> 3 chunks / 1.25 s -> 3 chunks
    window = enc.upstream.max_chunk_samples
    assert window < long_len
    long_wave, short_wave = waves(long_len, 4000)
    plan = split_into_chunks(long_wave[None], torch.tensor([long_len]), max_samples=window)
    assert len(plan.wave_lens) == 3 and int(plan.wave_lens.max()) <= window
    with torch.no_grad():
        whole = enc(long_wave[None], torch.tensor([long_len]))
        pieces = [long_wave[s: s + n] for s, n in zip([0, *plan.wave_lens.cumsum(0)[:-1].tolist()],
                                                        plan.wave_lens.tolist())]
        frames = [enc.encode_frames(p[None], torch.tensor([len(p)]))[1].sum() for p in pieces]
        expected = sum(n * encode_each(enc, [p]) for n, p in zip(frames, pieces)) / sum(frames)
        batch, lens = pad_waves([short_wave, long_wave])
        in_batch = enc(batch, lens)
    torch.testing.assert_close(whole, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(in_batch[1:], whole, atol=1e-5, rtol=0)


def test_merge_chunks_reassembles_valid_frames_in_order():
    plan = split_into_chunks(torch.zeros(2, 10), torch.tensor([10, 4]), max_samples=4)
    assert plan.owner.tolist() == [0, 0, 0, 1] and plan.wave_lens.tolist() == [4, 4, 2, 4]
    frames = torch.arange(4 * 3).float().reshape(4, 3, 1)
    merged, mask = merge_chunks(frames, torch.tensor([3, 2, 1, 3]), plan)
    assert merged[0, :6, 0].tolist() == [0, 1, 2, 3, 4, 6] and mask.sum(1).tolist() == [6, 3]


# ----------------------------------------------------------------------------- whisper specifics

def test_whisper_full_window_reproduces_transformers_encoder():
    """Our conv -> sliced positions -> layers path equals WhisperEncoder.forward on its own features,
    both with 30-s (here: full-window) padding and for a segment that fills the window exactly."""
    enc = make("whisper", layers="last", whisper_pad_to_30s=True)
    hf = enc.upstream.model
    window = enc.upstream.max_chunk_samples
    extractor = WhisperFeatureExtractor(feature_size=80)
    for n in (6000, window):
        (wave,) = waves(n)
        features = extractor(wave.numpy(), sampling_rate=SR, max_length=window, return_tensors="pt")["input_features"]
        with torch.no_grad():
            ref = hf(features).last_hidden_state
            for pad in (True, False):
                enc.upstream.pad_to_30s = pad
                hidden, frame_lens = enc.upstream(wave[None], torch.tensor([n]))
                if pad or n == window:
                    torch.testing.assert_close(hidden[-1], ref, atol=1e-4, rtol=0)
                assert int(frame_lens[0]) == -(-(n // 160) // 2)


def test_whisper_unpadded_is_shorter_and_128_mel_bins_work():
    enc = make("whisper", model_config={"num_mel_bins": 128})
    assert enc.upstream.mel.n_mels == 128
    hidden, frame_lens = enc.upstream(*pad_waves(waves(4000)))
    assert hidden[-1].shape[1] == 13 == int(frame_lens[0])  # 25 mel frames -> 13, not 64 (the full window)
    assert len(hidden) == enc.upstream.num_hidden_states == 3


# ----------------------------------------------------------------------------- layers

def test_layer_choices():
    items = pad_waves(waves(5000))
    base = make("wav2vec2", layers="weighted")
    hidden, frame_lens = base.upstream(*items)
    with torch.no_grad():
        uniform = base.encode_frames(*items)[0]
        torch.testing.assert_close(uniform, sum(hidden) / len(hidden), atol=1e-5, rtol=0)
        for layers, index in (("last", -1), (1, 1), ("0", 0)):
            enc = make("wav2vec2", layers=layers)
            torch.testing.assert_close(enc.encode_frames(*items)[0], hidden[index], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="hidden states"):
        make("wav2vec2", layers=7)
    assert make("wav2vec2", layers="weighted", model_config={"layerdrop": 0.3}).upstream.model.config.layerdrop == 0.0


# ----------------------------------------------------------------------------- training set-up

@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_only_adapters_layer_weights_and_pooling(family):
    enc = make(family, finetune="lora", pooling="attentive_stats")
    names = {n for n, p in enc.named_parameters() if p.requires_grad}
    head = {"layer_weights", "pooling.hidden.weight", "pooling.hidden.bias", "pooling.score.weight", "pooling.score.bias"}
    assert head <= names
    assert all("lora_" in n for n in names - head) and len(names - head) > 0
    assert not names & set(enc.cnn_parameter_names()) and enc.cnn_parameter_names()
    assert len(enc.trainable_parameters()) == len(names)
    # LoRA must act: a non-zero B changes the output (catches adapters that a backbone bypasses).
    x = pad_waves(waves(4000))
    with torch.no_grad():
        before = enc(*x)
        for n, p in enc.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
        assert (enc(*x) - before).abs().max() > 1e-4


def test_full_and_frozen_trainable_sets_and_cnn_never_trains():
    full = make("whisper", finetune="full")
    trainable = {n for n, p in full.named_parameters() if p.requires_grad}
    assert "upstream.model.layers.0.fc1.weight" in trainable
    assert not trainable & set(full.cnn_parameter_names())
    assert "upstream.model.embed_positions.weight" not in trainable
    frozen = make("hubert", finetune="frozen")
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {"layer_weights"}
    frozen.train()
    assert frozen.training and not frozen.upstream.training  # fixed feature extractor: no dropout
    lora = make("wav2vec2", finetune="lora")
    lora.train()
    emb = lora(*pad_waves(waves(4000, 3000)))
    emb.sum().backward()
    grads = {n for n, p in lora.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n or n == "layer_weights" for n in grads)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        enc = make("wav2vec2", finetune="lora", lora=LoraConfig(dropout=0.0), gradient_checkpointing=checkpointing)
        enc.train()
        with torch.no_grad():
            for n, p in enc.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.1)
        enc(*pad_waves(waves(4000, 2500))).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in enc.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_autocast_is_a_no_op_on_cpu():
    enc = make("wav2vec2")
    x = pad_waves(waves(3000))
    with torch.no_grad(), enc.autocast():
        out = enc(*x)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_round_trip(family, tmp_path):
    cfg = dict(finetune="lora", pooling="attentive_stats", lora=LoraConfig(rank=4))
    trained = make(family, **cfg)
    with torch.no_grad():
        for p in trained.trainable_parameters():
            p.normal_(std=0.3)
    trained.save_adapter(tmp_path / "adapter")
    fresh = make(family, **cfg)  # same seed: same base weights, fresh adapter
    x = pad_waves(waves(4000, 2000))
    with torch.no_grad():
        assert (fresh(*x) - trained(*x)).abs().max() > 1e-4
        fresh.load_adapter(tmp_path / "adapter")
        torch.testing.assert_close(fresh(*x), trained(*x), atol=1e-6, rtol=0)
    adapter_bytes = (tmp_path / "adapter" / "adapter.safetensors").stat().st_size
    model_bytes = sum(p.numel() * 4 for p in trained.parameters())
    assert adapter_bytes < 0.25 * model_bytes
    meta = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert meta["lora"]["rank"] == 4 and all("lora_" in k or "pooling" in k or k == "layer_weights" for k in meta["keys"])
    with pytest.raises(BundleError, match="rank"):
        make(family, **{**cfg, "lora": LoraConfig(rank=2)}).load_adapter(tmp_path / "adapter")
    with pytest.raises(BundleError, match="not found"):
        fresh.load_adapter(tmp_path / "nothing")


# ----------------------------------------------------------------------------- sources

@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm", "data2vec-audio"])
def test_local_folder_round_trip(family, tmp_path):
    original = make(family, seed=3)
    original.upstream.model.save_pretrained(tmp_path / "model")
    loaded = make(family, seed=99, source=str(tmp_path / "model"))
    x = pad_waves(waves(4000, 6000))
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x), original(*x), atol=1e-6, rtol=0)


def test_whisper_local_folder_holding_the_seq2seq_model(tmp_path):
    """Hub-style Whisper folders hold WhisperForConditionalGeneration; only the encoder is kept."""
    torch.manual_seed(5)
    full = WhisperForConditionalGeneration(WhisperConfig(**tiny_model_config("whisper"))).eval()
    full.save_pretrained(tmp_path / "whisper")
    loaded = make("whisper", seed=99, source=str(tmp_path / "whisper"))
    reference = SegmentEncoder(upstream=WhisperUpstream(model=full.model.encoder, pad_to_30s=False)).eval()
    x = pad_waves(waves(4000, 9000))
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x), reference(*x), atol=1e-6, rtol=0)
    assert not any("decoder" in n for n, _ in loaded.named_parameters())


def test_source_errors_say_where_they_looked(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path / "missing")):
        make("wav2vec2", source=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(ConfigError, match="model.safetensors"):
        make("wav2vec2", source=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="offline"):
        make("wav2vec2", source="facebook/wav2vec2-base")
    make("hubert").upstream.model.save_pretrained(tmp_path / "hubert")
    with pytest.raises(ConfigError, match="hubert"):
        make("wav2vec2", source=str(tmp_path / "hubert"))
    with pytest.raises(ConfigError, match="hidden_sise"):
        make("wav2vec2", model_config={"hidden_sise": 8})
    with pytest.raises(ConfigError, match="16000"):
        SegmentEncoder.from_config(EncoderConfig(family="whisper"), sample_rate=8000)
    with pytest.raises(ConfigError, match="silently ignored"):
        make("wavlm", finetune="lora", lora=LoraConfig(target_modules=["q_proj"]))


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_trainable_layers_after_the_chosen_hidden_state_are_refused(family):
    """encoder.layers=0 (the demo) with finetune=full/lora would mark transformer layers trainable that
    hidden state 0 never depends on: refused before anything trains, naming the layers."""
    for finetune in ("full", "lora"):
        with pytest.raises(ConfigError, match=r"encoder.layers=0 .*layers\.0.*never receive a gradient"):
            make(family, layers="0", finetune=finetune)
    make(family, layers="0", finetune="frozen")  # nothing trains in the backbone: nothing to refuse
    make(family, layers="-1", finetune="full")  # the last state depends on every layer


def test_layer_check_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    make_then = SegmentEncoder.from_config(EncoderConfig(family="wav2vec2", layers="-1", finetune="full"),
                                           sample_rate=SR)
    after = torch.rand(1)
    torch.manual_seed(5)
    SegmentEncoder.from_config(EncoderConfig(family="wav2vec2", layers="-1", finetune="frozen"), sample_rate=SR)
    assert torch.equal(torch.rand(1), after) and make_then is not None
