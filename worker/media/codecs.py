"""Per-call audio codecs of the WebSocket call type: bytes on the socket ⇄ 16 kHz int16 frames."""

from __future__ import annotations

from collections.abc import Callable

import G722
import numpy as np

from worker.media import g711
from worker.media.resample import Downsampler2x, Upsampler2x

# 16-bit little-endian samples, the PCM codec's bytes (int16 itself on every machine this runs on).
_INT16 = np.dtype("<i2")


class Codec:
    """One call's encoder and decoder; they keep separate state (filters, ADPCM predictors)."""

    name = "pcm"
    frame_bytes = 640

    def decode(self, payload: bytes) -> np.ndarray:
        """Client bytes to int16 at 16 kHz; PCM takes any even length (a trailing odd byte is dropped)."""
        # Read-only over the message's bytes, no copy: nothing downstream writes into caller audio (the
        # listener and the DTMF bank keep such frames as they are).
        return np.frombuffer(payload, dtype=_INT16, count=len(payload) // 2)

    def encode(self, frame: np.ndarray) -> bytes:
        """One 20 ms frame (320 samples at 16 kHz) to the bytes of one WebSocket message."""
        return frame.astype("<i2", copy=False).tobytes()


class G711(Codec):
    frame_bytes = 160

    def __init__(
        self, name: str, encode: Callable[[np.ndarray], bytes], decode: Callable[[bytes], np.ndarray]
    ) -> None:
        self.name = name
        self._encode = encode
        self._decode = decode
        self._up = Upsampler2x()
        self._down = Downsampler2x()

    def decode(self, payload: bytes) -> np.ndarray:
        return self._up.process(self._decode(payload))

    def encode(self, frame: np.ndarray) -> bytes:
        return self._encode(self._down.process(frame))


class G722Codec(Codec):
    name = "g722"
    frame_bytes = 160

    def __init__(self) -> None:
        self._enc = G722.G722(16000, 64000)
        self._dec = G722.G722(16000, 64000)

    def decode(self, payload: bytes) -> np.ndarray:
        return np.asarray(self._dec.decode(payload), dtype=np.int16)

    def encode(self, frame: np.ndarray) -> bytes:
        return bytes(self._enc.encode(frame.astype(np.int16, copy=False)))


def make_codec(name: str | None) -> Codec:
    match (name or "pcm").lower():
        case "pcmu":
            return G711("pcmu", g711.ulaw_encode, g711.ulaw_decode)
        case "pcma":
            return G711("pcma", g711.alaw_encode, g711.alaw_decode)
        case "g722":
            return G722Codec()
        case _:
            return Codec()
