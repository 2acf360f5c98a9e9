"""Server-side track producers: a decoded file played out frame by frame."""

from __future__ import annotations

from collections import deque

import numpy as np

FRAME = 320  # 20 ms at 16 kHz
SAMPLES_PER_MS = FRAME // 20
SILENT_FRAME = np.zeros(FRAME, dtype=np.int16)  # what a leg sends while nothing plays


class FilePlayer:
    """Plays a mono 16 kHz int16 buffer from `offset_ms` into it (past its end: nothing plays); `pause`
    holds the position, nothing is lost."""

    def __init__(self, samples: np.ndarray, loop: bool = False, offset_ms: int = 0) -> None:
        if offset_ms:
            samples = samples[offset_ms * SAMPLES_PER_MS :]  # a view: the decoded file is not copied
        self._samples = samples
        self._pos = 0
        self.paused = False
        self.loop = loop and len(samples) > 0  # music on hold: starts over until replaced

    @property
    def finished(self) -> bool:
        return not self.loop and self._pos >= len(self._samples)

    def next_frame(self) -> np.ndarray | None:
        """The next 20 ms frame, or None once the buffer is played out."""
        if self._pos >= len(self._samples):
            if not self.loop:
                return None
            self._pos = 0
        frame = self._samples[self._pos : self._pos + FRAME]
        self._pos += FRAME
        if len(frame) < FRAME:
            frame = np.concatenate([frame, np.zeros(FRAME - len(frame), dtype=np.int16)])
        return frame


class BridgePlayer:
    """The far leg of a transfer as the server-side track: its audio, frame by frame, as it arrives.

    At most `depth` frames wait (older ones are dropped: latency stays bounded when the clocks drift);
    when none is there the caller hears silence. It finishes when the leg ends."""

    def __init__(self, depth: int = 6) -> None:
        self._frames: deque[np.ndarray] = deque(maxlen=depth)
        self._pending = np.zeros(0, dtype=np.int16)
        self.paused = False
        self.finished = False
        self._silence = np.zeros(FRAME, dtype=np.int16)

    def feed(self, pcm: np.ndarray) -> None:
        buf = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
        i = 0
        while i + FRAME <= len(buf):
            self._frames.append(buf[i : i + FRAME])
            i += FRAME
        self._pending = buf[i:].copy()

    def next_frame(self) -> np.ndarray | None:
        if self.finished:
            return None
        return self._frames.popleft() if self._frames else self._silence
