"""Audio helpers for tests: generated tones and simple measurements."""

from __future__ import annotations

import numpy as np


def tone(freq: float, seconds: float, rate: int = 16000, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.round(np.sin(2 * np.pi * freq * t) * amp * 32767).astype(np.int16)


def peak_freq(x: np.ndarray, rate: int = 16000) -> float:
    x = x.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0
