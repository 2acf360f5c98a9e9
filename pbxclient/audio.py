"""Audio on a call socket: frames that carry their rate, the codecs of `/call`, and a resampler.

Pure functions and small stateful codecs, numpy in and numpy out; the call only moves their bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pbxclient import g711
from pbxclient.errors import PbxClientError

FRAME_MS = 20
# The codecs a `/call` socket carries and their sample rates on the wire (g722 is 16 kHz audio in 8,000
# bytes a second).
CODEC_RATES = {"pcm": 16000, "pcmu": 8000, "pcma": 8000, "g722": 16000}
_S16LE = np.dtype("<i2")


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Mono int16 samples with their rate. `track` is set on `option.subscribe` frames (0: the server-side
    track, 1: the peer's); `at` is the `loop.time()` the frame arrived."""

    samples: np.ndarray
    sample_rate: int
    track: int | None = None
    at: float = field(default=0.0, compare=False)

    @property
    def duration(self) -> float:
        """Seconds of audio in the frame."""
        return len(self.samples) / self.sample_rate


def as_samples(
    pcm: np.ndarray | bytes | bytearray | memoryview | AudioFrame,
) -> tuple[np.ndarray, int | None]:
    """int16 samples from what `send_audio` accepts, and their rate when the input says it."""
    if isinstance(pcm, AudioFrame):
        return pcm.samples.astype(np.int16, copy=False), pcm.sample_rate
    if isinstance(pcm, bytes | bytearray | memoryview):
        raw = bytes(pcm)
        return np.frombuffer(raw, dtype=_S16LE, count=len(raw) // 2).astype(np.int16), None
    array = np.asarray(pcm)
    if array.ndim != 1:
        raise ValueError(f"expected mono samples (a 1-D array), got shape {array.shape}")
    if array.dtype != np.int16:
        if np.issubdtype(array.dtype, np.floating):
            raise ValueError("expected int16 samples; scale floats to int16 first (x * 32767)")
        array = np.clip(array, -32768, 32767).astype(np.int16)
    return array, None


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """`samples` at `to_rate`: band-limited (FFT) resampling of the whole block, any ratio.

    Made for whole clips and for tests: each call treats its block on its own, so resampling a stream piece
    by piece leaves small edge effects at the joins."""
    if from_rate == to_rate or len(samples) == 0:
        return samples.astype(np.int16, copy=False)
    n_out = int(round(len(samples) * to_rate / from_rate))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    bins = n_out // 2 + 1
    if bins <= len(spectrum):
        spectrum = spectrum[:bins]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(bins - len(spectrum), dtype=spectrum.dtype)])
    out = np.fft.irfft(spectrum, n_out) * (n_out / len(samples))
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def rms(samples: np.ndarray) -> float:
    """Root mean square of int16 samples (0 for none)."""
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


def concat(frames: list[AudioFrame]) -> np.ndarray:
    """The samples of several frames of one rate, end to end."""
    rates = {f.sample_rate for f in frames}
    if len(rates) > 1:
        raise ValueError(f"frames of several rates: {sorted(rates)}")
    return np.concatenate([f.samples for f in frames]) if frames else np.zeros(0, dtype=np.int16)


class UnsupportedCodec(PbxClientError):
    """A codec this client cannot encode or decode."""


def _g722() -> Any:
    try:
        import G722  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise UnsupportedCodec(
            "the g722 codec needs the G722 package (pip install G722); pcm, pcmu and pcma need nothing"
        ) from None
    return G722.G722(16000, 64000)


class Encoder:
    """int16 samples at the codec's rate to the payloads of 20 ms socket messages. Samples that do not fill
    a frame wait for the next call (`flush` pads them with silence)."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.sample_rate = CODEC_RATES[codec]
        self.frame_samples = self.sample_rate * FRAME_MS // 1000
        self._rest = np.zeros(0, dtype=np.int16)
        self._g722 = _g722() if codec == "g722" else None

    def _one(self, frame: np.ndarray) -> bytes:
        if self.codec == "pcmu":
            return g711.ulaw_encode(frame)
        if self.codec == "pcma":
            return g711.alaw_encode(frame)
        if self._g722 is not None:
            return bytes(self._g722.encode(frame))
        return frame.astype(_S16LE, copy=False).tobytes()

    def encode(self, samples: np.ndarray) -> list[bytes]:
        if len(self._rest):
            samples = np.concatenate([self._rest, samples])
        n = len(samples) // self.frame_samples * self.frame_samples
        self._rest = samples[n:].copy()
        return [self._one(samples[i : i + self.frame_samples]) for i in range(0, n, self.frame_samples)]

    def flush(self) -> list[bytes]:
        """The held samples, padded with silence to a whole frame (nothing when none are held)."""
        if not len(self._rest):
            return []
        pad = np.zeros(self.frame_samples - len(self._rest), dtype=np.int16)
        return self.encode(pad)


class Decoder:
    """Socket messages of one codec to int16 samples. `sample_rate` is the rate of what the server sends,
    which for `pcm` depends on the server (RustPBX and active-call send 8 kHz, this server 16 kHz)."""

    def __init__(self, codec: str, sample_rate: int | None = None) -> None:
        self.codec = codec
        self.sample_rate = sample_rate or CODEC_RATES[codec]
        self._g722 = _g722() if codec == "g722" else None

    def decode(self, payload: bytes) -> np.ndarray:
        if self.codec == "pcmu":
            return g711.ulaw_decode(payload)
        if self.codec == "pcma":
            return g711.alaw_decode(payload)
        if self._g722 is not None:
            return np.asarray(self._g722.decode(payload), dtype=np.int16)
        return np.frombuffer(payload, dtype=_S16LE, count=len(payload) // 2).astype(np.int16)
