"""Neural voice-activity detection: silero-vad's speech probability per channel, fed block by block.

silero-vad ships its model inside the wheel (`pip install --no-deps silero-vad`: it needs only torch and
packaging; its torchaudio extra pins another torchaudio). Nothing is downloaded. When the package is
missing, `resolve_vad` falls back to the energy VAD and says so.
Legend: k = channels, t = samples, w = silero windows.
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional, Tuple

import numpy as np
import torch

from ctxemo.data.audio import resample

SILERO_RATES = {16000: 512, 8000: 256}  # the rates silero runs at natively -> samples per window
MISSING_SILERO = ("segmenter.vad=silero needs the silero-vad package (pip install --no-deps silero-vad); "
                  "using the energy VAD (segmenter.vad=energy) instead")


def silero_available() -> bool:
    try:
        import silero_vad  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_vad(requested: str) -> Tuple[str, Optional[str]]:
    """(the VAD that will run, a message when it is not the one requested)."""
    if requested == "silero" and not silero_available():
        return "energy", MISSING_SILERO
    return requested, None


@functools.lru_cache(maxsize=1)
def _silero_model():
    from silero_vad import load_silero_vad

    with warnings.catch_warnings():  # torch.jit.load's deprecation notice, not ours to act on
        warnings.simplefilter("ignore")
        model = load_silero_vad()
    return model.eval()


class SileroStream:
    """Speech probability per channel of a recording pushed in blocks (the model's state runs across
    blocks, so a block edge is not a restart). All channels go through the model as one batch.

    Rates other than 8/16 kHz are resampled to 16 kHz block by block (edge effects of a few samples
    per block are far below what changes a 32-ms speech probability).
    """

    def __init__(self, n_channels: int, sample_rate: int):
        self.sample_rate = sample_rate
        self.model_rate = sample_rate if sample_rate in SILERO_RATES else 16000
        self.window = SILERO_RATES[self.model_rate]
        self.window_sec = self.window / self.model_rate
        self._carry = np.zeros((n_channels, 0), dtype=np.float32)
        self._model = _silero_model()
        self._model.reset_states()
        self._probs: list = []

    def push(self, block: np.ndarray) -> None:
        """block: float32 [k, t] at `sample_rate`."""
        if self.model_rate != self.sample_rate:
            block = np.stack([resample(ch, orig_sr=self.sample_rate, target_sr=self.model_rate) for ch in block])
        buf = np.concatenate([self._carry, block.astype(np.float32, copy=False)], axis=1)
        n = buf.shape[1] // self.window
        self._run(buf[:, : n * self.window])
        self._carry = buf[:, n * self.window:]

    def finish(self) -> np.ndarray:
        """float32 [k, w]: one probability per window of `window_sec`, from the start of the recording."""
        if self._carry.shape[1]:
            tail = np.zeros((self._carry.shape[0], self.window), dtype=np.float32)
            tail[:, : self._carry.shape[1]] = self._carry
            self._run(tail)
            self._carry = self._carry[:, :0]
        k = self._carry.shape[0]
        return np.concatenate(self._probs, axis=1) if self._probs else np.zeros((k, 0), dtype=np.float32)

    def _run(self, samples: np.ndarray) -> None:
        if samples.shape[1] == 0:
            return
        x = torch.from_numpy(np.ascontiguousarray(samples))
        out = np.empty((samples.shape[0], samples.shape[1] // self.window), dtype=np.float32)
        with torch.inference_mode():
            for j in range(out.shape[1]):
                out[:, j] = self._model(x[:, j * self.window:(j + 1) * self.window], self.model_rate)[:, 0].numpy()
        self._probs.append(out)
