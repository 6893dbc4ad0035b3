"""Samples handed over in memory (live scoring) as float32 in [-1, 1], whatever PCM type they came in.

Audio files are decoded by soundfile, which scales for us; arrays pushed by an integrating program are
not, and int16 cast to float would be 32768 times too loud (the encoder normalises the waveform, but
openSMILE features and the telephone-band check would not). Integer PCM is scaled by its type's range;
types whose range says nothing about the signal (int64, which is what `np.array([...])` of Python ints
gives, unsigned types other than 8-bit, bool, complex) are refused rather than guessed.
"""
from __future__ import annotations

import numpy as np

from ctxemo.errors import AudioError

# dtype -> (offset, scale): float = (pcm - offset) / scale; the WAV conventions (8-bit PCM is unsigned).
_PCM_SCALES = {
    np.dtype(np.int8): (0.0, 128.0),
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2147483648.0),
    np.dtype(np.uint8): (128.0, 128.0),
}


def pcm_to_float(samples, *, where: str) -> np.ndarray:
    """float32 samples in [-1, 1] from float or integer PCM.

    Args:
        samples: array-like of float (taken as already in [-1, 1]) or int8/int16/int32/uint8 PCM.
        where: what the samples are (named in the error).
    Raises:
        AudioError: an integer or other type whose scale is unknown.

    >>> pcm_to_float(np.array([-32768, 0, 16384], np.int16), where="x").tolist()
    [-1.0, 0.0, 0.5]
    >>> pcm_to_float(np.array([0, 128, 255], np.uint8), where="x").tolist()
    [-1.0, 0.0, 0.9921875]
    """
    array = np.asarray(samples)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    if array.dtype in _PCM_SCALES:
        offset, scale = _PCM_SCALES[array.dtype]
        return ((array.astype(np.float32) - np.float32(offset)) / np.float32(scale)).astype(np.float32)
    raise AudioError(f"{where}: samples of type {array.dtype} have no known PCM scale; pass float samples in "
                     "[-1, 1] or int16/int32/int8/uint8 PCM (e.g. np.asarray(samples, np.int16))")
