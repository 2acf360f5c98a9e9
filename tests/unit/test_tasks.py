"""The task owner: named tasks, referenced while they run, failures logged, all cancelled on teardown."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.logs import call_id_var
from common.tasks import TaskSet

log = logging.getLogger("pbx.test.tasks")


async def test_tasks_are_named_and_kept_until_they_end() -> None:
    tasks = TaskSet(log, "call:c1:")
    gate = asyncio.Event()
    task = tasks.spawn(gate.wait(), "rx")
    assert task.get_name() == "call:c1:rx"
    assert task in tasks and len(tasks) == 1
    gate.set()
    await task
    await asyncio.sleep(0)  # the done callback
    assert len(tasks) == 0 and list(tasks) == []


async def test_a_failure_is_logged_with_the_task_name(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet(log, "web-1:")

    async def broken() -> None:
        raise RuntimeError("boom")

    task = tasks.spawn(broken(), "reaper")
    with caplog.at_level(logging.WARNING, logger=log.name):
        await asyncio.wait([task])
        await asyncio.sleep(0)
    [record] = caplog.records
    assert "web-1:reaper failed" in record.getMessage() and "boom" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is task.exception()
    assert len(tasks) == 0


async def test_cancellation_is_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet(log)
    task = tasks.spawn(asyncio.sleep(10), "sleeper")
    await asyncio.sleep(0)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        assert await tasks.cancel_all(1.0) == []
    assert task.cancelled()
    assert caplog.records == []


async def test_cancel_goes_newest_first_and_spares_the_caller() -> None:
    tasks = TaskSet(log)
    order: list[str] = []

    async def waits(name: str) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            order.append(name)
            raise

    first = tasks.spawn(waits("first"), "first")
    second = tasks.spawn(waits("second"), "second")

    async def hangup() -> None:
        # As a call's hangup, itself one of the call's tasks, ending the others.
        await asyncio.sleep(0)
        cancelled = tasks.cancel()
        assert cancelled == [second, first]
        await asyncio.sleep(0)

    ender = tasks.spawn(hangup(), "hangup")
    await ender
    assert not ender.cancelled()
    assert order == ["second", "first"]
    assert first.cancelled() and second.cancelled()


async def test_cancel_all_names_what_is_still_running() -> None:
    tasks = TaskSet(log, "media-1:")
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    stuck = tasks.spawn(stubborn(), "stubborn")
    tasks.spawn(asyncio.sleep(10), "clock")
    await asyncio.sleep(0)
    assert await tasks.cancel_all(0.05) == ["media-1:stubborn"]
    release.set()
    await stuck


async def test_a_task_runs_in_the_context_it_was_spawned_in() -> None:
    tasks = TaskSet(log)

    async def read() -> str:
        return call_id_var.get()

    token = call_id_var.set("c42")
    try:
        task = tasks.spawn(read(), "reader")
    finally:
        call_id_var.reset(token)
    assert await task == "c42"
