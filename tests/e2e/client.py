"""A small WebSocket call client for the end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp


class CallClient:
    """Collects every event and audio frame the server sends on one call socket."""

    def __init__(
        self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, call_id: str, frontend: str
    ) -> None:
        self.session = session
        self.ws = ws
        self.call_id = call_id
        self.frontend = frontend
        self.events: list[dict[str, Any]] = []
        self.frames: list[tuple[float, bytes]] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        base: str,
        path: str = "/call",
        call_id: str | None = None,
        session: aiohttp.ClientSession | None = None,
        **query: str,
    ) -> CallClient:
        """`session`: one to open it through (the client closes it), such as `session_on_other_frontend`'s,
        whose kept-alive connection decides the frontend."""
        session = session or aiohttp.ClientSession()
        params = dict(query)
        if call_id:
            params["id"] = call_id
        try:
            ws = await session.ws_connect(f"{base}{path}", params=params, max_msg_size=0)
        except BaseException:  # refused (a 503, say): the session must not leak
            await session.close()
            raise
        frontend = ws._response.headers.get("X-Pbx-Proc", "")
        return cls(session, ws, call_id or "", frontend)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                async with self._changed:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self.events.append(json.loads(msg.data))
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        self.frames.append((time.monotonic(), msg.data))
                    self._changed.notify_all()
        finally:
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    async def send(self, command: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(command))

    async def event(self, name: str, timeout: float = 5.0, after: int = 0, **match: Any) -> dict[str, Any]:
        """The first event named `name` (at index >= after) whose fields include `match`."""

        def find() -> dict[str, Any] | None:
            for ev in self.events[after:]:
                if ev.get("event") == name and all(ev.get(k) == v for k, v in match.items()):
                    return ev
            return None

        async def wait() -> dict[str, Any]:
            async with self._changed:
                while True:
                    found = find()
                    if found is not None:
                        return found
                    if self.closed.is_set():
                        raise AssertionError(
                            f"socket closed without {name} {match}; events: {self.names()}{self._errors()}"
                        )
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {name} {match} within {timeout}s; events: {self.names()}{self._errors()}"
            ) from None

    def names(self) -> list[str]:
        return [e.get("event", "?") for e in self.events]

    def _errors(self) -> str:
        """The error events' texts, for a failed wait's message (what the server said went wrong)."""
        said = [
            f"{e.get('sender')} {e.get('code')}: {e.get('error')}"
            for e in self.events
            if e.get("event") == "error"
        ]
        return f"; errors: {said}" if said else ""

    async def wait_closed(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def invite(self, **option: Any) -> dict[str, Any]:
        await self.send({"command": "invite", "option": option})
        return await self.event("answer")

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await self.session.close()


async def session_on_other_frontend(base: str, frontend: str, within: float = 15.0) -> aiohttp.ClientSession:
    """An HTTP session whose kept-alive connection is served by a frontend process other than `frontend`.

    Tries for `within` seconds: a frontend that gunicorn has just started again (a test killed or stopped
    one) counts in `/health` before it takes connections, and until then every connection lands on the
    other one."""
    deadline = time.monotonic() + within
    while True:
        s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        async with s.get(f"{base}/health") as resp:
            if resp.headers["X-Pbx-Proc"] != frontend:
                return s
        await s.close()
        if time.monotonic() > deadline:
            raise AssertionError("every connection landed on the same frontend process")
        await asyncio.sleep(0.02)


class SseReader:
    """Reads a Server-Sent Events response into (event name, parsed data) frames as they come."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.frames: list[tuple[str, Any]] = []
        self.comments = 0
        self.ended = asyncio.Event()
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        name, data = "message", ""
        try:
            async for raw in self.resp.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    async with self._changed:
                        self.frames.append((name, json.loads(data)))
                        self._changed.notify_all()
                    name, data = "message", ""
        finally:
            self.ended.set()
            async with self._changed:
                self._changed.notify_all()

    async def frame(self, kind: str, name: str, timeout: float = 5.0) -> tuple[int, Any]:
        """The index and data of the first frame of `kind` (`event`, `command`) whose event or command is
        `name`."""
        key = "event" if kind == "event" else "command"

        def find() -> tuple[int, Any] | None:
            for i, (k, d) in enumerate(self.frames):
                if k == kind and isinstance(d, dict) and d.get(key) == name:
                    return i, d
            return None

        async def wait() -> tuple[int, Any]:
            async with self._changed:
                while (found := find()) is None:
                    if self.ended.is_set():
                        raise AssertionError(f"stream ended without {kind} {name}: {self.frames}")
                    await self._changed.wait()
                return found

        return await asyncio.wait_for(wait(), timeout)

    async def close(self) -> None:
        self._reader.cancel()
        self.resp.close()
