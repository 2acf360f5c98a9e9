"""A media process's way out: its tasks cancelled, none of them able to hold the exit."""

from __future__ import annotations

import asyncio
import logging
import time

from common.tasks import TaskSet


async def test_a_task_that_does_not_end_when_cancelled_holds_nothing_up() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        # As a task whose wake-up was lost: cancelled, yet it does not end (until the test lets it).
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    tasks = TaskSet(logging.getLogger("test"))
    clock = tasks.spawn(asyncio.sleep(10), "clock")
    reaper = tasks.spawn(stubborn(), "reaper")
    await asyncio.sleep(0)  # both running, waiting
    began = time.monotonic()
    assert await tasks.cancel_all(0.2) == ["reaper"]
    assert time.monotonic() - began < 1.0
    assert clock.cancelled() and not reaper.done()
    assert await TaskSet(logging.getLogger("test")).cancel_all(0.2) == []
    release.set()
    await reaper
