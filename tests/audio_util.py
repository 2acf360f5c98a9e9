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


def dtmf_tones(digits: str, on: float = 0.08, off: float = 0.06) -> np.ndarray:
    keys = {d: (r, c) for r, row in enumerate(("123A", "456B", "789C", "*0#D")) for c, d in enumerate(row)}
    rows, cols = (697, 770, 852, 941), (1209, 1336, 1477, 1633)
    t = np.arange(int(on * 16000)) / 16000
    parts = [np.zeros(int(0.3 * 16000))]
    for d in digits:
        r, c = keys[d]
        parts += [
            (np.sin(2 * np.pi * rows[r] * t) + np.sin(2 * np.pi * cols[c] * t)) * 6000,
            np.zeros(int(off * 16000)),
        ]
    return np.concatenate(parts)
