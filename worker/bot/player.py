"""What a bot says, as the server-side track: its audio, played one 20 ms frame per tick, and its marks.

A mark stands at the position in the queue where the bot put it; it is answered once every sample queued
before it has been played to the caller, or at once when that audio is dropped (the bot's `clear`, an
`interrupt`, the queue overflowing). The player lives as long as the bot's connection: the session puts it on
the server-side track for each stretch of bot speech, which ends after `IDLE_END_FRAMES` with nothing to play.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np

FRAME = 320  # 20 ms at 16 kHz
# The bot's speech counts as one track until nothing has been there to play for this long (200 ms): a bot
# that sends audio just in time leaves short gaps that must not split its sentence into tracks.
IDLE_END_FRAMES = 10
# Bot audio queued beyond this (60 s) pushes out the oldest.
MAX_QUEUED = 16000 * 60
# After an interrupt, audio the bot keeps sending without a pause this long (ms) is the rest of what was cut.
CUT_GAP_MS = 200
# A bot that streams in real time keeps a steady backlog, and each of its packets that comes just after a
# tick adds a frame to it for the rest of the call. When a whole window (1 s) went by with at least a frame
# always waiting, the next quiet frame (peak under QUIET) is skipped: latency comes back down, unheard.
TRIM_WINDOW = 50
QUIET = 300


class BotPlayer:
    def __init__(self, on_mark: Callable[[str], None]) -> None:
        self._on_mark = on_mark
        self._audio = bytearray()  # s16le at 16 kHz, not yet played
        self.queued = 0  # samples ever queued: marks are positions on this count
        self.played = 0  # samples played or dropped
        self._marks: deque[tuple[int, str]] = deque()
        self._idle = IDLE_END_FRAMES
        self._cutting = False
        self._last_audio = 0.0
        self.paused = False
        self.closed = False  # the bot has gone: nothing more will be queued
        self.dropped = 0  # samples dropped (overflow, clear, interrupt)
        self.trimmed = 0  # quiet frames skipped to bring a standing backlog down
        self._window = 0
        self._least = MAX_QUEUED  # the smallest backlog (samples) left after a tick in this window
        self._trim = False

    @property
    def pending(self) -> int:
        """Samples waiting to be played."""
        return len(self._audio) // 2

    @property
    def finished(self) -> bool:
        return not self._audio and (self.closed or self._idle >= IDLE_END_FRAMES)

    def add(self, pcm: np.ndarray) -> bool:
        """Queue bot audio (16 kHz int16); False when it is dropped as the rest of an interrupted sentence."""
        now = time.monotonic()
        if self._cutting:
            if (now - self._last_audio) * 1000 < CUT_GAP_MS:
                self._last_audio = now
                self.dropped += len(pcm)
                return False
            self._cutting = False
        self._last_audio = now
        self._audio += pcm.astype("<i2", copy=False).tobytes()
        self.queued += len(pcm)
        self._idle = 0
        excess = len(self._audio) // 2 - MAX_QUEUED
        if excess > 0:
            self._drop(excess)
        return True

    def mark(self, name: str) -> None:
        """A mark after what is queued now (answered at once when nothing is)."""
        if self.played >= self.queued:
            self._on_mark(name)
        else:
            self._marks.append((self.queued, name))

    def clear(self) -> None:
        """Drop everything queued (the bot's `clear`); every mark waiting is answered, in order."""
        self._drop(self.pending)
        self._cutting = False
        self._idle = IDLE_END_FRAMES

    def cut(self) -> None:
        """An interrupt: drop what is queued, and the rest of the sentence the bot is still sending."""
        self.clear()
        self._cutting = True
        self._last_audio = time.monotonic()

    def next_frame(self) -> np.ndarray | None:
        """The next 20 ms, or None when nothing is there to play (a partial frame waits one tick for more)."""
        available = len(self._audio) // 2
        if available >= FRAME or (available and (self._idle >= 1 or self.closed)):
            take = min(FRAME, available)
            frame = np.frombuffer(bytes(self._audio[: take * 2]), dtype="<i2")
            del self._audio[: take * 2]
            self.played += take
            self._idle = 0
            self._watch_backlog()
            self._answer_marks()
            if take < FRAME:
                frame = np.concatenate([frame, np.zeros(FRAME - take, dtype=np.int16)])
            return frame
        self._idle += 1
        self._least = 0
        return None

    def _watch_backlog(self) -> None:
        backlog = len(self._audio) // 2
        if self._trim and backlog >= FRAME:
            peak = np.abs(np.frombuffer(bytes(self._audio[: FRAME * 2]), dtype="<i2")).max()
            if peak < QUIET:
                self._drop(FRAME)
                self.dropped -= FRAME
                self.trimmed += 1
                self._trim = False
                backlog -= FRAME
        elif backlog < FRAME:
            self._trim = False
        self._least = min(self._least, backlog)
        self._window += 1
        if self._window >= TRIM_WINDOW:
            if self._least >= FRAME:
                self._trim = True
            self._window = 0
            self._least = MAX_QUEUED

    def _drop(self, samples: int) -> None:
        del self._audio[: samples * 2]
        self.played += samples
        self.dropped += samples
        self._answer_marks()

    def _answer_marks(self) -> None:
        while self._marks and self._marks[0][0] <= self.played:
            self._on_mark(self._marks.popleft()[1])
