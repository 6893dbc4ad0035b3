"""Front-end: padding, valid-sample normalisation, and Whisper log-mel agreement with transformers."""
import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from ctxemo.models.frontend import (
    WhisperLogMel,
    lengths_to_mask,
    normalize_waves,
    pad_waves,
    whisper_mel_filters,
)

# Our log-mel vs transformers' (both float32, scaled (log10 + 4) / 4): measured ~2e-6 for 80 bins,
# ~2e-5 for 128 bins (narrower filters, larger relative rounding); we promise 1e-4 absolute.
MEL_ATOL = 1e-4


def _speechlike(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    envelope = np.abs(np.sin(np.linspace(0, 6 * np.pi, n))) + 0.05
    return (0.2 * envelope * rng.standard_normal(n)).astype(np.float32)


def test_lengths_to_mask_and_pad_waves():
    assert lengths_to_mask(torch.tensor([1, 3])).tolist() == [[True, False, False], [True, True, True]]
    waves, lens = pad_waves([np.ones(3), np.ones(5), np.ones(1)], min_samples=2)
    assert waves.shape == (3, 5) and lens.tolist() == [3, 5, 2]
    assert waves[0, 3:].abs().sum() == 0 and waves[2, 1:].abs().sum() == 0


def test_normalize_matches_transformers_and_ignores_padding():
    waves = [_speechlike(n, i) + 0.3 for i, n in enumerate((800, 1600, 1234))]
    batch, lens = pad_waves(waves)
    ours = normalize_waves(batch, lens)
    for i, w in enumerate(waves):
        ref = Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm([w], attention_mask=None)[0]
        np.testing.assert_allclose(ours[i, : len(w)].numpy(), ref, atol=1e-5)
        assert ours[i, len(w):].abs().sum() == 0


def test_mel_filters_match_transformers():
    for n_mels in (80, 128):
        ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
                              sampling_rate=16000, norm="slaney", mel_scale="slaney")
        np.testing.assert_allclose(whisper_mel_filters(n_mels).numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_log_mel_agrees_with_feature_extractor(n_mels):
    """Valid frames equal transformers' (30-s padded) frames; the batch equals each clip alone."""
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    mel_fn = WhisperLogMel(n_mels=n_mels)
    waves = [_speechlike(n, i) for i, n in enumerate((3200, 16037, 8123, 150))]
    batch, lens = pad_waves(waves)
    mel, mel_lens = mel_fn(batch, lens)
    assert mel.shape[:2] == (4, n_mels) and mel_lens.tolist() == [20, 100, 50, 1]
    for i, w in enumerate(waves):
        ref = extractor(w, sampling_rate=16000, return_tensors="np")["input_features"][0]
        n = int(mel_lens[i])
        np.testing.assert_allclose(mel[i, :, :n].numpy(), ref[:, :n], atol=MEL_ATOL)
        alone, _ = mel_fn(torch.from_numpy(w)[None], torch.tensor([len(w)]))
        np.testing.assert_allclose(alone[0, :, :n].numpy(), mel[i, :, :n].numpy(), atol=1e-6)
        assert mel[i, :, n:].abs().sum() == 0  # padding frames are zero for the conv front-end


def test_whisper_log_mel_pad_to_30s_is_the_feature_extractor():
    extractor = WhisperFeatureExtractor(feature_size=80)
    wave = _speechlike(8000, 3)
    mel, mel_lens = WhisperLogMel(n_mels=80)(torch.from_numpy(wave)[None], torch.tensor([8000]),
                                              pad_to_samples=480000)
    ref = extractor(wave, sampling_rate=16000, return_tensors="np")["input_features"][0]
    assert mel.shape == (1, 80, 3000) and int(mel_lens[0]) == 50
    np.testing.assert_allclose(mel[0].numpy(), ref, atol=MEL_ATOL)


def test_pad_waves_rounds_the_width_up_but_keeps_the_true_lengths():
    import numpy as np

    from ctxemo.models.frontend import pad_waves

    padded, lens = pad_waves([np.ones(4100, np.float32), np.ones(900, np.float32)], multiple=4000)
    assert padded.shape == (2, 8000) and lens.tolist() == [4100, 900]
    assert padded[0, 4100:].abs().sum() == 0 and padded[1, 900:].abs().sum() == 0
    assert pad_waves([np.ones(4000, np.float32)], multiple=4000)[0].shape == (1, 4000)
