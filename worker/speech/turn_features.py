"""Whisper log-mel features of the last 8 s of a caller's audio, as the Smart Turn v3 model reads them.

The same numbers as `transformers.WhisperFeatureExtractor(chunk_length=8)` with `do_normalize=True` on audio
left-padded with zeros to 8 s (what pipecat's `LocalSmartTurnAnalyzerV3` feeds the model; pipecat vendors that
extractor as `pipecat/audio/turn/smart_turn/_whisper_features.py`, BSD-2, itself derived from transformers,
Apache-2.0). Written again here for cost: a turn is mostly padding, and every frame that lies wholly in the
padding has the same spectrum, so it is computed once instead of per frame (1 ms for a 1 s turn, 2.5 ms for
8 s; pipecat's ~2.9 ms whatever the turn, bench/smart_turn.py).
"""

from __future__ import annotations

import functools

import numpy as np

RATE = 16000
SECONDS = 8
SAMPLES = RATE * SECONDS
N_FFT = 400
HOP = 160
N_MELS = 80
FRAMES = SAMPLES // HOP  # 800: Whisper drops the last of its 801 frames


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    mels = 3.0 * freq / 200.0
    high = freq >= 1000.0
    mels[high] = 15.0 + np.log(freq[high] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    freq = 200.0 * mels / 3.0
    high = mels >= 15.0
    freq[high] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[high] - 15.0))
    return freq


@functools.cache
def _mel_filters() -> np.ndarray:
    """[N_MELS, N_FFT // 2 + 1]: Slaney-normalised triangles from 0 Hz to 8 kHz."""
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([RATE / 2.0]))[0], N_MELS + 2)
    )
    bins = np.linspace(0, RATE // 2, N_FFT // 2 + 1)
    slopes = edges[None, :] - bins[:, None]
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    filters = np.maximum(0.0, np.minimum(down, up)) * (2.0 / (edges[2:] - edges[:-2]))[None, :]
    return np.ascontiguousarray(filters.T)


@functools.cache
def _window() -> np.ndarray:
    return np.hanning(N_FFT + 1)[:-1]  # periodic Hann, as torch.hann_window


def log_mel(audio: np.ndarray) -> np.ndarray:
    """[N_MELS, FRAMES] float32 features of 16 kHz audio (int16, or float in [-1, 1]); only its last 8 s
    count, and shorter audio is padded with silence in front."""
    x = audio.astype(np.float64)
    if audio.dtype == np.int16:
        x /= 32768.0
    x = x[-SAMPLES:]
    lead = SAMPLES - len(x)
    # Normalised over the whole padded window (zeros included), as the reference does.
    mean = x.sum() / SAMPLES
    var = max(0.0, float(np.dot(x, x)) / SAMPLES - mean * mean)
    scale = 1.0 / np.sqrt(var + 1e-7)
    pad_value = -mean * scale
    signal = np.full(SAMPLES, pad_value)
    signal[lead:] = (x - mean) * scale
    half = N_FFT // 2
    padded = np.pad(signal, (half, half), mode="reflect")
    # Frames before `first` lie wholly in the constant padding (reflected padding included).
    first = 0 if lead <= half + N_FFT else min(FRAMES, (lead + half - N_FFT) // HOP + 1)
    window = _window()
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][first : FRAMES + 1]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # [frames, bins]
    mel = np.empty((N_MELS, FRAMES + 1))
    mel[:, first:] = _mel_filters() @ power.T
    if first:
        flat = np.abs(np.fft.rfft(np.full(N_FFT, pad_value) * window)) ** 2
        mel[:, :first] = (_mel_filters() @ flat)[:, None]
    spec = np.log10(np.maximum(mel, 1e-10))[:, :FRAMES]
    spec = np.maximum(spec, spec.max() - 8.0)
    return ((spec + 4.0) / 4.0).astype(np.float32)
