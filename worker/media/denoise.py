"""RNNoise on caller audio (the library shipped in the pyrnnoise wheel), batched off the event loop.

RNNoise works on 10 ms frames at 48 kHz, so each call's 16 kHz frames are resampled ×3 up and back down
(a 47-tap windowed-sinc filter, polyphase, with state across frames). Blocking: the listener runs it through
a FrameBatcher (worker/media/offload.py) on a thread of its own.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

_TAPS = 47
_n = np.arange(_TAPS) - (_TAPS - 1) / 2
_LOWPASS = np.sinc(_n / 3) / 3 * np.hamming(_TAPS)  # cut-off at 8 kHz of a 48 kHz stream
_LOWPASS /= _LOWPASS.sum()
RNN_FRAME = 480
# The ×3 interpolator as 3 phases of 16 taps (reversed for a sliding-window product): phase p of output k
# weighs input k-j by h[3j + p].
_PHASE_TAPS = 16
_padded = np.concatenate([_LOWPASS * 3, np.zeros(3 * _PHASE_TAPS - _TAPS)])
_UP_PHASES = np.stack([_padded[p::3][::-1] for p in range(3)])


def _library() -> Any:
    import pyrnnoise.rnnoise as rn  # loads librnnoise.so and declares its signatures

    return rn.lib


class Denoiser:
    """One call's RNNoise state and resampler histories."""

    def __init__(self) -> None:
        self._lib = _library()
        self._state = self._lib.rnnoise_create(None)
        self._up_hist = np.zeros(_PHASE_TAPS - 1)
        self._down_hist = np.zeros(_TAPS - 1)
        self._pending = np.zeros(0, dtype=np.float32)

    def process(self, frame: np.ndarray) -> np.ndarray:
        """20 ms at 16 kHz in, 20 ms at 16 kHz out (denoised). Blocking: call it off the event loop."""
        # Polyphase ×3 up: each output phase is a 16-tap filter over the input (no multiplies by zero).
        data = np.concatenate([self._up_hist, frame.astype(np.float64)])
        windows = sliding_window_view(data, _PHASE_TAPS)
        up = (windows @ _UP_PHASES.T).reshape(-1).astype(np.float32)
        self._up_hist = data[len(data) - (_PHASE_TAPS - 1) :]
        buf = np.concatenate([self._pending, up])
        usable = len(buf) - len(buf) % RNN_FRAME
        for i in range(0, usable, RNN_FRAME):
            chunk = np.ascontiguousarray(buf[i : i + RNN_FRAME])
            ptr = chunk.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            self._lib.rnnoise_process_frame(self._state, ptr, ptr)
            buf[i : i + RNN_FRAME] = chunk
        self._pending = buf[usable:]
        # ×3 down: filter only at the kept samples.
        data = np.concatenate([self._down_hist, buf[:usable].astype(np.float64)])
        down = sliding_window_view(data, _TAPS)[0::3] @ _LOWPASS[::-1]
        self._down_hist = data[len(data) - (_TAPS - 1) :]
        return np.clip(np.rint(down), -32768, 32767).astype(np.int16)

    def close(self) -> None:
        if self._state:
            self._lib.rnnoise_destroy(self._state)
            self._state = None
