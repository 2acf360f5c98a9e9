"""What a test speech service "hears": sentences found by energy in the audio it actually received.

The provider mocks send results derived from the bytes that reached them, so a test sees whether the
client streamed all the audio, in order, and how the provider's offsets line up with the call's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME = 640  # bytes of 16 kHz s16le in 20 ms
LOUD = 500.0  # RMS of a frame that counts as speech
QUIET_FRAMES = 25  # 500 ms of quiet closes a sentence
INTERIM_FRAMES = 20  # an interim result every 400 ms of speech


@dataclass
class Result:
    index: int
    final: bool
    start_ms: int  # offsets from the first byte received
    end_ms: int


class Segmenter:
    def __init__(self) -> None:
        self._pending = bytearray()
        self.received = 0  # bytes
        self.frames = 0
        self.index = 0
        self._start: int | None = None
        self._last_loud = 0
        self._since_interim = 0

    def feed(self, data: bytes) -> list[Result]:
        self.received += len(data)
        self._pending += data
        out: list[Result] = []
        while len(self._pending) >= FRAME:
            frame = np.frombuffer(bytes(self._pending[:FRAME]), dtype="<i2").astype(np.float64)
            del self._pending[:FRAME]
            at = self.frames * 20
            self.frames += 1
            loud = float(np.sqrt(np.mean(frame**2))) > LOUD
            if loud:
                self._last_loud = at + 20
                if self._start is None:
                    self._start = at
                    self._since_interim = 0
            if self._start is None:
                continue
            self._since_interim += 1
            if at + 20 - self._last_loud >= QUIET_FRAMES * 20:
                out.append(Result(self.index, True, self._start, self._last_loud))
                self.index += 1
                self._start = None
            elif loud and self._since_interim >= INTERIM_FRAMES:
                self._since_interim = 0
                out.append(Result(self.index, False, self._start, at + 20))
        return out

    def flush(self) -> list[Result]:
        """The end of the audio closes a sentence still open."""
        if self._start is None:
            return []
        result = Result(self.index, True, self._start, self._last_loud)
        self.index += 1
        self._start = None
        return [result]


def sentence_text(script: list[str], index: int, final: bool) -> str:
    """The text the mock 'recognized' for a sentence: the script's line, its first half while interim."""
    text = script[index % len(script)] if script else f"sentence {index}"
    if final:
        return text
    words = text.split()
    return " ".join(words[: max(1, len(words) // 2)])
