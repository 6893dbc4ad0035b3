import numpy as np
import pytest
import soundfile as sf

from ctxemo.data.audio import read_audio
from ctxemo.errors import AudioError


def test_resamples_to_target_rate(wav_factory):
    path = wav_factory("a.wav", seconds=1.0, sr=8000, freq=440.0)
    wave = read_audio(path, target_sr=16000)
    assert wave.dtype == np.float32 and abs(len(wave) - 16000) <= 1
    # the tone survives resampling: dominant frequency stays 440 Hz
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 5


def test_44k_down(wav_factory):
    wave = read_audio(wav_factory("b.wav", seconds=0.5, sr=44100), target_sr=16000)
    assert abs(len(wave) - 8000) <= 1


def test_stereo_mix_and_channel_pick(wav_factory):
    path = wav_factory("s.wav", seconds=0.25, channels=2)  # channel 1 is twice channel 0
    left, right, mix = (read_audio(path, channel=c) for c in (0, 1, -1))
    assert np.allclose(right, 2 * left, atol=1e-3)
    assert np.allclose(mix, 1.5 * left, atol=1e-3)
    with pytest.raises(AudioError, match="channel 2"):
        read_audio(path, channel=2)


def test_crop(wav_factory):
    path = wav_factory("c.wav", seconds=1.0)
    assert len(read_audio(path, start_sec=0.25, end_sec=0.75)) == 8000
    with pytest.raises(AudioError, match="outside the file"):
        read_audio(path, start_sec=2.0, end_sec=3.0)


def test_unreadable_missing_nan(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(AudioError, match="bad.wav"):
        read_audio(bad)
    with pytest.raises(AudioError, match="not found"):
        read_audio(tmp_path / "none.wav")
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        read_audio(nan)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        read_audio(empty)
