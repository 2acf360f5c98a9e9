"""A burst of commands on one call (a streamed reply relayed at once) does not hold the process's event loop:
the frontend's socket reader and the media session's command queue both give the loop a turn every few ms,
so every other call's audio keeps its 20 ms pace."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator, Awaitable
from types import SimpleNamespace
from typing import Any

from aiohttp import WSMsgType

from common import wire
from common.config import Settings
from common.protocol import History, command_body
from frontend.connection import CallConnection
from tests.unit.callfakes import FakeHost, fake_services
from worker.call.session import CallSession

BURST = 50_000


async def largest_gap(work: Awaitable[Any]) -> float:
    """The most CPU time the loop spent without running a 1 ms ticker while `work` ran.

    CPU time of this thread, not wall time: while the whole process waits for a core (the suite's earlier
    servers still winding down) the loop is not being held by the code under test. The heap the earlier tests
    left is frozen, so a full garbage collection of it is not counted either."""
    gaps: list[float] = []

    async def tick() -> None:
        last = time.thread_time()
        while True:
            await asyncio.sleep(0.001)
            now = time.thread_time()
            gaps.append(now - last)
            last = now

    gc.collect()
    gc.freeze()
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    try:
        await work
    finally:
        ticker.cancel()
        gc.unfreeze()
    took = time.perf_counter() - start
    assert took > 0.2, f"the burst took {took:.3f} s: too short to show anything"
    return max(gaps)


def history(i: int) -> str:
    return json.dumps({"command": "history", "speaker": "u", "text": str(i)})


class BurstSocket:
    """A client socket whose messages have all arrived already: iterating it never suspends."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        for text in self.texts:
            yield SimpleNamespace(type=WSMsgType.TEXT, data=text)

    async def send_str(self, data: str) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_the_frontend_reads_a_burst_in_slices() -> None:
    sent: list[dict[str, Any]] = []
    hub = SimpleNamespace(
        settings=Settings(ws_max_commands_per_sec=0), proc_id="web-t", send=lambda proc, m: sent.append(m)
    )
    conn = CallConnection(hub, "c1", "websocket", BurstSocket([history(i) for i in range(BURST)]))  # type: ignore[arg-type]
    conn.owner = "media-1"
    gap = await largest_gap(conn.serve())
    assert len([m for m in sent if m["k"] == wire.CMD]) == BURST, "every command was forwarded"
    assert gap < 0.1, f"the loop was held {gap * 1000:.0f} ms"


async def test_the_media_session_runs_a_burst_of_commands_in_slices(tmp_path: Any) -> None:
    host = FakeHost()
    sent = host.sent
    services = fake_services(Settings(recorder_path=str(tmp_path)))
    session = CallSession(services, host, "c1", "websocket", "web-1", False, 0)
    session.start()
    for i in range(BURST):
        body = command_body(History(speaker="u", text=str(i)))
        session.deliver(wire.CMD, {**body, wire.SEQ: i})

    async def all_acked() -> None:
        while sum(1 for m in sent if m["k"] == wire.CTL) < BURST:
            await asyncio.sleep(0.001)

    gap = await largest_gap(all_acked())
    assert [m["b"]["text"] for m in sent if m["k"] == wire.EVT] == [str(i) for i in range(BURST)]
    assert gap < 0.1, f"the loop was held {gap * 1000:.0f} ms"
    for task in session._tasks:
        task.cancel()


async def test_a_streams_pieces_are_not_timed_so_not_acknowledged() -> None:
    sent: list[dict[str, Any]] = []
    hub = SimpleNamespace(settings=Settings(), proc_id="web-t", send=lambda proc, m: sent.append(m))
    frames = [
        json.dumps({"command": "tts", "text": t, "playId": "llm", "streaming": True, "endOfStream": t == ""})
        for t in ("Hi", " there", "!", "")
    ]
    conn = CallConnection(hub, "c1", "websocket", BurstSocket([history(0), *frames, history(1)]))  # type: ignore[arg-type]
    conn.owner = "media-1"
    await conn.serve()
    forwarded = [m["b"] for m in sent if m["k"] == wire.CMD]
    assert [(b["command"], b["args"].text, wire.SEQ in b) for b in forwarded] == [
        ("history", "0", True),
        ("tts", "Hi", True),  # it opens the stream: a command like the others
        ("tts", " there", False),
        ("tts", "!", False),
        ("tts", "", True),  # the end is: one a stream
        ("history", "1", True),
    ]
