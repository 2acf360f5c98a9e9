"""Streaming 2× resamplers between 8 kHz and 16 kHz, continuous across 20 ms chunks."""

from __future__ import annotations

from typing import Any

import numpy as np

# Half-band low-pass (windowed sinc, cut-off at a quarter of the 16 kHz rate): keeps up to ~3.4 kHz,
# removes what would alias when dropping to 8 kHz, and fills in the zeros when going up to 16 kHz.
_TAPS = 31
_n = np.arange(_TAPS) - (_TAPS - 1) / 2
_LOWPASS = np.sinc(_n / 2) / 2 * np.hamming(_TAPS)
_LOWPASS /= _LOWPASS.sum()
_LOWPASS_X2 = _LOWPASS * 2  # the upsampler's filter: zero-stuffing halves the energy


class Downsampler2x:
    """16 kHz → 8 kHz: low-pass, then keep every second sample. Output length is len(input) // 2 overall."""

    def __init__(self) -> None:
        self._history = np.zeros(_TAPS - 1, dtype=np.float64)
        self._odd = False  # an unpaired sample from the last chunk is already in the history

    def process(self, x: np.ndarray) -> np.ndarray:
        data = np.concatenate([self._history, x.astype(np.float64)])
        filtered = np.convolve(data, _LOWPASS, mode="valid")
        start = 1 if self._odd else 0
        out = filtered[start::2]
        self._odd = (len(x) - start) % 2 == 1
        self._history = data[len(data) - (_TAPS - 1) :]
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


class Upsampler2x:
    """8 kHz → 16 kHz: insert zeros, then low-pass (gain 2). Output length is exactly 2 × len(input)."""

    def __init__(self) -> None:
        self._history = np.zeros(_TAPS - 1, dtype=np.float64)

    def process(self, x: np.ndarray) -> np.ndarray:
        stuffed = np.zeros(2 * len(x), dtype=np.float64)
        stuffed[0::2] = x
        data = np.concatenate([self._history, stuffed])
        out = np.convolve(data, _LOWPASS_X2, mode="valid")
        self._history = data[len(data) - (_TAPS - 1) :]
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


class RateConverter:
    """Any rate → 16 kHz (or another `dst`), stateful across chunks (libswresample through PyAV).

    For provider audio (Piper's 22.05 kHz, Tencent's 8/24 kHz): chunks of any length in, the converted
    samples out as they become available; `flush` returns what the filter still holds at the end.
    """

    def __init__(self, src: int, dst: int = 16000) -> None:
        self.src = src
        self.dst = dst
        self._resampler: Any = None
        if src != dst:
            import av

            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=dst)

    def process(self, x: np.ndarray) -> np.ndarray:
        if self._resampler is None or len(x) == 0:
            return x.astype(np.int16, copy=False)
        import av

        frame = av.AudioFrame.from_ndarray(
            x.astype(np.int16, copy=False).reshape(1, -1), format="s16", layout="mono"
        )
        frame.rate = self.src
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, dtype=np.int16)
        return self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames: list[Any]) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16, copy=False)
