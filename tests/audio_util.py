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


def noise(kind: str, seconds: float, level_dbfs: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Background noise at `level_dbfs` RMS, as float samples: `white`, `pink` (-3 dB an octave), `brown`
    (-6 dB an octave), both above 50 Hz as any microphone or codec chain cuts, or `hum` (50 Hz mains and its
    harmonics over a little white noise)."""
    n = int(round(seconds * rate))
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(n)
    if kind == "white":
        x = white
    elif kind in ("pink", "brown"):
        freqs = np.fft.rfftfreq(n, 1 / rate)
        slope = 0.5 if kind == "pink" else 1.0
        gain = np.where(freqs < 50, 0.0, np.maximum(freqs, 1.0) ** -slope)
        x = np.fft.irfft(np.fft.rfft(white) * gain, n)
    elif kind == "hum":
        t = np.arange(n) / rate
        x = sum(np.sin(2 * np.pi * 50 * h * t + h) / h for h in range(1, 6)) + 0.1 * white
    else:
        raise ValueError(kind)
    x = x - x.mean()
    return x / np.sqrt(np.mean(x**2)) * 32768 * 10 ** (level_dbfs / 20)


def onsets(clean: np.ndarray, level_dbfs: float = -40.0, gap_ms: int = 500, rate: int = 16000) -> list[int]:
    """Where speech starts in a clean recording (ms): a 10 ms block at or above `level_dbfs` RMS after at
    least `gap_ms` of blocks below it (or at the start)."""
    block = rate // 100
    n = len(clean) // block
    levels = np.sqrt(np.mean(clean[: n * block].astype(np.float64).reshape(n, block) ** 2, axis=1))
    out: list[int] = []
    last = -gap_ms - 10
    for i in np.nonzero(levels >= 32768 * 10 ** (level_dbfs / 20))[0]:
        t = int(i) * 10
        if t - last > gap_ms:
            out.append(t)
        last = t
    return out
