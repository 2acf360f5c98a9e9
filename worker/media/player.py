"""Server-side track producers: a decoded file played out frame by frame."""

from __future__ import annotations

import numpy as np

FRAME = 320  # 20 ms at 16 kHz


class FilePlayer:
    """Plays a mono 16 kHz int16 buffer; `pause` holds the position, nothing is lost."""

    def __init__(self, samples: np.ndarray) -> None:
        self._samples = samples
        self._pos = 0
        self.paused = False

    @property
    def frames_total(self) -> int:
        return -(-len(self._samples) // FRAME)

    @property
    def finished(self) -> bool:
        return self._pos >= len(self._samples)

    @property
    def position_ms(self) -> int:
        return self._pos * 1000 // 16000

    def next_frame(self) -> np.ndarray | None:
        """The next 20 ms frame, or None once the buffer is played out."""
        if self._pos >= len(self._samples):
            return None
        frame = self._samples[self._pos : self._pos + FRAME]
        self._pos += FRAME
        if len(frame) < FRAME:
            frame = np.concatenate([frame, np.zeros(FRAME - len(frame), dtype=np.int16)])
        return frame
