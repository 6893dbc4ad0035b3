"""Embedding cache: reuse without recomputation, recompute exactly what changed, resume after an
interruption, seeded random init, and checks on precomputed feature files."""
import os
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

import ctxemo.embedding.encode as embed
from ctxemo.config import load_config
from ctxemo.embedding.cache import embed_manifest, encoder_fingerprint
from ctxemo.embedding.encode import (
    AudioSpec,
    EmbedSettings,
    batch_plan,
    build_cache_encoder,
    encode_rows,
    length_buckets,
    pad_segments,
)
from ctxemo.errors import AudioError, ConfigError
from ctxemo.models.frontend import pad_waves
from ctxemo.models.segment_encoder import SegmentEncoder

SR = 16000


@pytest.fixture
def corpus(tmp_path):
    """Five one-turn files (0.2-1.0 s) and one two-channel 'call' cropped into three segments."""
    rng = np.random.default_rng(0)
    audio = tmp_path / "audio"
    audio.mkdir()
    rows = []
    for i, sec in enumerate((0.2, 1.0, 0.5, 0.7, 0.3)):
        path = audio / f"turn{i}.wav"
        sf.write(path, (0.2 * rng.standard_normal(int(sec * SR))).astype(np.float32), SR)
        rows.append(AudioSpec(path))
    call = audio / "call.wav"
    sf.write(call, (0.2 * rng.standard_normal((int(1.5 * SR), 2))).astype(np.float32), SR)
    rows += [AudioSpec(call, 0.0, 0.4), (call, 0.4, 1.1), {"path": call, "start_sec": 1.1, "end_sec": None}]
    return rows


def config(*overrides):
    return load_config(overrides=["encoder.family=wav2vec2", "encoder.batch_size=3", "encoder.max_batch_sec=2.0",
                                  "data.channel=0", *overrides])


@pytest.fixture
def count_rows(monkeypatch):
    """Counts segments that go through SegmentEncoder.forward."""
    counter = {"rows": 0}
    original = SegmentEncoder.forward

    def counting(self, waves, wave_lens):
        counter["rows"] += len(wave_lens)
        return original(self, waves, wave_lens)

    monkeypatch.setattr(SegmentEncoder, "forward", counting)
    return counter


def test_first_run_matches_the_encoder_and_second_run_reuses(corpus, tmp_path, count_rows, monkeypatch):
    cfg = config()
    first = embed_manifest(cfg, corpus, cache_dir=tmp_path / "cache", progress=False)
    assert first.shape == (8, 32) and first.dtype == np.float32 and count_rows["rows"] == 8
    # Row i is the encoder applied to row i's audio alone (bucketing and padding change nothing).
    enc = embed.build_cache_encoder(cfg)
    wave = sf.read(corpus[6][0], start=int(0.4 * SR), stop=int(1.1 * SR), dtype="float32")[0][:, 0]
    with torch.no_grad():
        direct = enc(*pad_waves([wave])).numpy()
    np.testing.assert_allclose(first[6], direct[0], atol=1e-5)

    def no_build(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(SegmentEncoder, "from_config", no_build)
    count_rows["rows"] = 0
    again = embed_manifest(cfg, corpus, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(again, first)
    assert count_rows["rows"] == 0
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1 and {p.name for p in folders[0].iterdir()} >= {"embeddings.npy", "embeddings.json"}
    assert not list(folders[0].glob("partial/shard-*.npy"))  # partial shards are cleaned up


def test_changed_audio_file_recomputes_its_rows_only(corpus, tmp_path, count_rows):
    cfg = config()
    before = embed_manifest(cfg, corpus, cache_dir=tmp_path / "cache", progress=False)
    path = corpus[2].path
    sf.write(path, np.zeros(int(0.5 * SR), dtype=np.float32) + 0.1, SR)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a distinct mtime even on coarse file systems
    count_rows["rows"] = 0
    after = embed_manifest(cfg, corpus, cache_dir=tmp_path / "cache", progress=False)
    assert count_rows["rows"] == 1
    assert np.abs(after[2] - before[2]).max() > 1e-3
    np.testing.assert_array_equal(np.delete(after, 2, axis=0), np.delete(before, 2, axis=0))


def test_changed_encoder_config_gets_its_own_cache(corpus, tmp_path, count_rows):
    embed_manifest(config(), corpus, cache_dir=tmp_path / "cache", progress=False)
    other = embed_manifest(config("encoder.layers=last"), corpus, cache_dir=tmp_path / "cache", progress=False)
    assert count_rows["rows"] == 16 and other.shape == (8, 32)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_interrupted_run_resumes_and_equals_an_uninterrupted_one(corpus, tmp_path, count_rows):
    cfg = config()

    def crash_after_two(shards_done):
        if shards_done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_manifest(cfg, corpus, cache_dir=tmp_path / "cache", progress=False, shard_rows=3,
                       on_shard_done=crash_after_two)
    assert count_rows["rows"] == 6
    assert len(list((tmp_path / "cache").glob("*/partial/shard-*.npy"))) == 2
    resumed = embed_manifest(cfg, corpus, cache_dir=tmp_path / "cache", progress=False, shard_rows=3)
    assert count_rows["rows"] == 8  # only the last shard (2 rows) was encoded
    straight = embed_manifest(cfg, corpus, cache_dir=tmp_path / "other", progress=False)
    np.testing.assert_allclose(resumed, straight, atol=1e-5)


def test_random_init_is_seeded(corpus, tmp_path):
    a = embed_manifest(config(), corpus[:3], cache_dir=tmp_path / "a", progress=False)
    b = embed_manifest(config(), corpus[:3], cache_dir=tmp_path / "b", progress=False)
    c = embed_manifest(config("seed=1"), corpus[:3], cache_dir=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_local_weights_enter_the_fingerprint(tmp_path):
    torch.manual_seed(0)
    enc = SegmentEncoder.from_config(config().encoder, sample_rate=SR)
    enc.upstream.model.save_pretrained(tmp_path / "model")
    cfg = config(f"encoder.source={tmp_path / 'model'}")
    fp, description = encoder_fingerprint(cfg)
    assert description["weights"]["kind"] == "local" and description["model_config"] is None
    weights = tmp_path / "model" / "model.safetensors"
    os.utime(weights, ns=(2_000_000_000, 2_000_000_000))
    assert encoder_fingerprint(cfg)[0] != fp
    # A fine-tuned encoder passed in is identified by its trained tensors.
    with torch.no_grad():
        enc.layer_weights.add_(1.0)
    assert encoder_fingerprint(config(), encoder=enc)[0] != encoder_fingerprint(config())[0]


def test_missing_audio_is_named(tmp_path):
    with pytest.raises(AudioError, match="nope.wav"):
        embed_manifest(config(), [AudioSpec(tmp_path / "nope.wav")], cache_dir=tmp_path / "cache", progress=False)


def test_length_buckets_respect_both_caps():
    durations = [1.0, 14.0, 1.1, 0.9, 3.0, 2.5, 16.0, 1.05]
    batches = length_buckets(durations, batch_size=3, max_batch_sec=8.0, max_padding_frac=0.25)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for batch in batches:
        longest, real = max(durations[i] for i in batch), sum(durations[i] for i in batch)
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * longest <= min(8.0, 1.25 * real))
    assert batches[0] == [3, 0, 7]  # shortest first
    assert batches[1:] == [[2], [5, 4], [1], [6]]  # 1.1 s + 2.5 s would pad too much; 14 s + 16 s too long


def test_cpu_plan_pads_nothing_beyond_a_segment_alone_and_gpu_plan_buckets():
    durations = [1.0, 14.0, 1.1, 0.9, 3.0, 2.9, 16.0, 1.05, 0.95, 0.3]
    settings = EmbedSettings(batch_size=16, max_batch_sec=160.0)
    cpu = batch_plan(durations, settings=settings, device=torch.device("cpu"))
    assert sorted(i for b in cpu for i in b) == list(range(len(durations)))
    for batch in cpu:
        # The batch's width is what each of its segments would get alone (0.25-s grid): no extra padding.
        waves = [np.zeros(int(durations[i] * SR), np.float32) for i in batch]
        width = pad_segments(settings, waves)[0].shape[1]
        assert all(pad_segments(settings, [w])[0].shape[1] == width for w in waves)
        assert width * len(batch) <= embed.CPU_BATCH_SEC * SR or len(batch) == 1
    assert sorted(map(sorted, cpu)) == [[0, 3, 8], [1], [2, 7], [4, 5], [6], [9]]
    gpu = batch_plan(durations, settings=settings, device=torch.device("cuda"))
    assert gpu == length_buckets(durations, batch_size=16, max_batch_sec=160.0)
    assert len(gpu) < len(cpu)


def test_cpu_batches_of_equal_width_are_capped_by_the_cpu_budget():
    cpu = batch_plan([1.0] * 20, settings=EmbedSettings(batch_size=16), device=torch.device("cpu"))
    assert [len(b) for b in cpu] == [8, 8, 4]  # 8 x 1 s = CPU_BATCH_SEC, not batch_size 16


def test_batch_width_rounding_never_exceeds_whisper_window(tmp_path):
    """Widths are rounded up to 0.25 s; a segment just under Whisper's window (tiny config: 1.28 s)
    must still fit in one window (the padding past it is cut, not given positions)."""
    path = tmp_path / "long.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(int(1.27 * SR))).astype(np.float32), SR)
    cfg = load_config(overrides=["encoder.family=whisper", "data.channel=0"])
    emb = encode_rows(EmbedSettings.from_config(cfg), build_cache_encoder(cfg), [AudioSpec(path)])
    assert emb.shape[0] == 1 and np.isfinite(emb).all()


def test_processes_sharing_a_cache_folder_take_turns(tmp_path):
    """The cache folder's lock: a second user waits while another holds it, then finds its result."""
    import fcntl
    import threading

    from ctxemo.embedding.cache import LOCK_FILE, cache_lock, cached_rows
    from ctxemo.embedding.encode import AudioSpec

    folder, wav = tmp_path / "cache" / "x", tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    specs = [AudioSpec(path=str(wav), start_sec=None, end_sec=None)]
    calls = []

    def encode(rows, bar):
        calls.append(len(rows))
        return np.ones((len(rows), 3), np.float32)

    def run():
        out.append(cached_rows(specs, ["h0"], folder=folder, fingerprint="fp", description={}, encode=encode,
                               progress=False))

    out = []
    with cache_lock(folder):  # another process embedding into the same folder
        other = threading.Thread(target=run)
        other.start()
        other.join(timeout=1.0)
        assert other.is_alive() and not calls  # blocked on the lock, nothing computed
    other.join(timeout=30)
    assert not other.is_alive() and calls == [1] and out[0].shape == (1, 3)
    assert (folder / LOCK_FILE).is_file()
    with open(folder / LOCK_FILE) as handle:  # released after use
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
def test_concurrent_cpu_passes_equal_the_one_thread_loop(corpus, monkeypatch):
    """With 2 torch threads the CPU loop runs 2 one-thread passes at once on one encoder; the masked
    GroupNorm's per-call lengths are per thread, so every row equals the serial one-thread embedding."""
    cfg = config("encoder.batch_size=1")  # one segment per batch: many passes to interleave
    settings, encoder = EmbedSettings.from_config(cfg), build_cache_encoder(cfg)
    corpus = [embed.as_audio_spec(row) for row in corpus]
    serial = encode_rows(settings, encoder, corpus)
    threads_seen = set()
    original = SegmentEncoder.forward

    def spying(self, waves, wave_lens):
        threads_seen.add(threading.get_ident())
        return original(self, waves, wave_lens)

    monkeypatch.setattr(SegmentEncoder, "forward", spying)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        concurrent = encode_rows(settings, encoder, corpus)
        assert torch.get_num_threads() == 2  # restored after the passes
    finally:
        torch.set_num_threads(before)
    assert len(threads_seen) == 2
    np.testing.assert_array_equal(concurrent, serial)


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_bfloat16_pass_stays_close_to_float32_and_gets_its_own_cache(corpus, tmp_path, family):
    """encoder.precision=bfloat16: the backbone's weights are stored in bf16 and the pass runs under bf16
    autocast; the rows come back float32 and within bf16 rounding of the exact pass, in their own cache."""
    exact_cfg, bf16_cfg = config(f"encoder.family={family}"), config(f"encoder.family={family}",
                                                                     "encoder.precision=bfloat16")
    encoder = build_cache_encoder(bf16_cfg)
    assert {p.dtype for p in encoder.upstream.model.parameters()} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for n, p in encoder.named_parameters() if not n.startswith("upstream."))
    exact = embed_manifest(exact_cfg, corpus, cache_dir=tmp_path / "cache", progress=False)
    rounded = embed_manifest(bf16_cfg, corpus, cache_dir=tmp_path / "cache", progress=False)
    assert rounded.dtype == np.float32 and len(list((tmp_path / "cache").iterdir())) == 2
    assert not np.array_equal(rounded, exact)  # the switch really changes the arithmetic
    cosine = (rounded * exact).sum(1) / np.linalg.norm(rounded, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosine.min() > 0.999, cosine


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="encoder.precision"):
        config("encoder.precision=float16")


def test_a_subset_run_keeps_the_other_rows_and_a_changed_file_replaces_its_row(corpus, tmp_path, count_rows):
    """Embedding a subset, then the whole corpus again, encodes nothing twice; a file that changed in between
    is encoded again and its old row is not carried on."""
    cfg = config()
    whole = embed_manifest(cfg, corpus, cache_dir=tmp_path / "cache", progress=False)
    count_rows["rows"] = 0
    subset = [corpus[i] for i in (6, 1, 3)]
    np.testing.assert_array_equal(embed_manifest(cfg, subset, cache_dir=tmp_path / "cache", progress=False),
                                  whole[[6, 1, 3]])
    assert count_rows["rows"] == 0
    # a manifest of one known and one changed row: one row encoded, the rest of the corpus still stored
    path = corpus[2].path
    sf.write(path, np.zeros(int(0.5 * SR), dtype=np.float32) + 0.1, SR)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    mixed = embed_manifest(cfg, [corpus[0], corpus[2]], cache_dir=tmp_path / "cache", progress=False)
    assert count_rows["rows"] == 1 and np.abs(mixed[1] - whole[2]).max() > 1e-3
    (folder,) = list((tmp_path / "cache").iterdir())
    assert np.load(folder / "embeddings.npy").shape[0] == 8  # 2 current + 6 kept, the stale version of row 2 gone
    count_rows["rows"] = 0
    again = embed_manifest(cfg, corpus, cache_dir=tmp_path / "cache", progress=False)
    assert count_rows["rows"] == 0
    np.testing.assert_array_equal(np.delete(again, 2, axis=0), np.delete(whole, 2, axis=0))
    np.testing.assert_array_equal(again[2], mixed[1])
    # rows of a file that is gone are not carried on by the next write (a manifest with a new row)
    corpus[4].path.unlink()
    embed_manifest(cfg, [corpus[0], AudioSpec(corpus[5].path, 0.2, 0.9)], cache_dir=tmp_path / "cache",
                   progress=False)
    assert np.load(folder / "embeddings.npy").shape[0] == 8  # 2 current + the 6 others whose files are still there
