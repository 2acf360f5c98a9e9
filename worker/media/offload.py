"""Run per-call, per-frame native work (RNNoise, TEN VAD) off the event loop, many calls per hop.

Every job of a tick goes to the batcher's thread in one hand-off; the native libraries release the GIL
while they run, so the event loop keeps its 20 ms rhythm. Jobs of one call run and report in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("pbx.worker.offload")

# Jobs waiting at most: ~1.5 s of 20 ms frames for 200 calls. Past it the oldest half is dropped.
MAX_BACKLOG = 15_000


@dataclass(slots=True)
class _Job:
    owner: object
    work: Callable[[np.ndarray], Any]
    frame: np.ndarray
    ts_ms: int
    done: Callable[[Any, int], None]


def _run_jobs(jobs: list[_Job]) -> list[Any]:
    return [job.work(job.frame) for job in jobs]


class FrameBatcher:
    """Queue of frame jobs; the media clock `kick`s it after each tick and `run` works through the queue."""

    def __init__(self, name: str, run_off_loop: Callable[..., Awaitable[Any]]) -> None:
        self.name = name
        self._run_off_loop = run_off_loop
        self._queue: list[_Job] = []
        self._wake = asyncio.Event()
        self.dropped = 0

    def submit(
        self,
        owner: object,
        work: Callable[[np.ndarray], Any],
        frame: np.ndarray,
        ts_ms: int,
        done: Callable[[Any, int], None],
    ) -> None:
        self._queue.append(_Job(owner, work, frame, ts_ms, done))
        if len(self._queue) > MAX_BACKLOG:
            # Overloaded: keep up with real time by dropping the oldest work (counted and logged).
            drop = len(self._queue) - MAX_BACKLOG // 2
            del self._queue[:drop]
            self.dropped += drop
            log.warning(
                "%s is behind real time: dropped %d frames (%d so far)", self.name, drop, self.dropped
            )

    def forget(self, owner: object) -> None:
        self._queue = [j for j in self._queue if j.owner is not owner]

    def kick(self) -> None:
        if self._queue:
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                jobs, self._queue = self._queue, []
                try:
                    results = await self._run_off_loop(_run_jobs, jobs)
                except Exception:
                    log.exception("%s batch of %d failed", self.name, len(jobs))
                    continue
                for job, result in zip(jobs, results, strict=True):
                    job.done(result, job.ts_ms)
