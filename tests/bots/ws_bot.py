"""A scriptable WebSocket bot for mediaPass tests: an aiohttp server in the test process, on a free port.

Each connection becomes a `BotConnection` that records every message the server sent it (with the time it
arrived) and that the test's script drives: `async def script(conn): ...` is run once per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

Script = Callable[["BotConnection"], Coroutine[Any, Any, None]]


class BotConnection:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.path = request.path
        self.query = dict(request.query)
        self.ws = ws
        self.binary: list[tuple[float, bytes]] = []
        self.texts: list[tuple[float, dict[str, Any]]] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._changed = asyncio.Condition()

    async def _record(self, msg: aiohttp.WSMessage) -> None:
        async with self._changed:
            now = time.monotonic()
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.binary.append((now, msg.data))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self.texts.append((now, json.loads(msg.data)))
            self._changed.notify_all()

    async def _ended(self) -> None:
        async with self._changed:
            self.close_code = self.ws.close_code
            self.closed.set()
            self._changed.notify_all()

    async def wait_for(self, check: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
        """Wait until `check()` returns something truthy (re-checked on every message)."""

        async def wait() -> Any:
            async with self._changed:
                while not (found := check()):
                    if self.closed.is_set():
                        raise AssertionError(f"bot socket closed while waiting for {what or check}")
                    await self._changed.wait()
                return found

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"bot: nothing like {what or check} within {timeout}s") from None

    async def event(self, name: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """The first text message with this `event` whose fields include `match` (Twilio dialect)."""

        def find() -> dict[str, Any] | None:
            for _, m in self.texts:
                if m.get("event") == name and all(m.get(k) == v for k, v in match.items()):
                    return m
            return None

        found: dict[str, Any] = await self.wait_for(find, timeout, f"{name} {match}")
        return found

    def abort(self) -> None:
        """Drop the connection without a close frame (the bot process died)."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for _, m in self.texts if m.get("event") == name]

    def pcm(self) -> np.ndarray:
        """Every binary message so far, as s16le samples (raw dialect)."""
        return np.frombuffer(b"".join(d for _, d in self.binary), dtype="<i2")


class BotServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[BotConnection] = []
        self.port = 0
        self._new = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/bot"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = BotConnection(request, ws)
        async with self._new:
            self.connections.append(conn)
            self._new.notify_all()
        task = asyncio.create_task(self.script(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            async for msg in ws:
                await conn._record(msg)
        finally:
            await conn._ended()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 2)
        return ws

    async def connection(self, index: int = 0, timeout: float = 5.0) -> BotConnection:
        async def wait() -> BotConnection:
            async with self._new:
                while len(self.connections) <= index:
                    await self._new.wait()
                return self.connections[index]

        return await asyncio.wait_for(wait(), timeout)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/bot", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def bot_server(script: Script) -> AsyncIterator[BotServer]:
    server = BotServer(script)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def idle(conn: BotConnection) -> None:
    """A bot that only listens."""
    await conn.closed.wait()
