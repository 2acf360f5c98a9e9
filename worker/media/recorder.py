"""The call recorder: stereo 16 kHz WAV, caller left, server side right, driven by the media clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from worker.media.wavwriter import StereoWavWriter

log = logging.getLogger("pbx.worker.recorder")

FRAME_BYTES = 640
# Write to disk every 10 frames (200 ms, RustPBX's default recorder ptime).
FLUSH_FRAMES = 10
# Caller audio that runs ahead of the clock by more than this is written at once rather than held.
MAX_CALLER_BACKLOG = 16000 * 2 * 5


class CallRecorder:
    """Aligns both directions on the 20 ms clock and hands 200 ms blocks to a disk thread; `on_write` is told
    the bytes of each block (the recorder quota counts them)."""

    def __init__(self, path: str, io: Executor, on_write: Callable[[int], None] | None = None) -> None:
        self.path = path
        self._io = io
        self._on_write = on_write
        self._writer: StereoWavWriter | None = None
        self._caller = bytearray()
        self._left = bytearray()
        self._right = bytearray()
        self._frames = 0
        self._pending: asyncio.Future[None] | None = None
        self.closed = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._writer = await loop.run_in_executor(self._io, StereoWavWriter, self.path)

    def caller(self, pcm: bytes) -> None:
        """Caller audio as it arrives (s16le 16 kHz, any length)."""
        self._caller += pcm
        if len(self._caller) > MAX_CALLER_BACKLOG:
            # A client sending faster than real time: record its audio now, against silence.
            extra = len(self._caller) - MAX_CALLER_BACKLOG
            extra -= extra % FRAME_BYTES
            self._left += self._caller[:extra]
            self._right += bytes(extra)
            del self._caller[:extra]

    def tick(self, server: bytes | None) -> None:
        """One 20 ms step: one frame of caller audio (or silence) against the server frame (or silence)."""
        take = self._caller[:FRAME_BYTES]
        del self._caller[:FRAME_BYTES]
        self._left += take
        if len(take) < FRAME_BYTES:
            self._left += bytes(FRAME_BYTES - len(take))
        self._right += server if server is not None else bytes(FRAME_BYTES)
        self._frames += 1
        if self._frames >= FLUSH_FRAMES:
            self._submit()

    def _submit(self) -> None:
        if self._writer is None or not self._left:
            return
        left = np.frombuffer(bytes(self._left), dtype="<i2")
        right = np.frombuffer(bytes(self._right), dtype="<i2")
        self._left.clear()
        self._right.clear()
        self._frames = 0
        writer = self._writer
        if self._on_write is not None:
            self._on_write(left.nbytes + right.nbytes)
        self._pending = asyncio.get_running_loop().run_in_executor(self._io, writer.write, left, right)
        self._pending.add_done_callback(self._written)

    def _written(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("recorder write to %s failed: %s", self.path, fut.exception())

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._caller:
            rest = len(self._caller) - len(self._caller) % 2
            self._left += self._caller[:rest]
            self._right += bytes(rest)
            self._caller.clear()
        self._submit()
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(self._io, self._writer.close)
