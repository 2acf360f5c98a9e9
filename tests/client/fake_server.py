"""A scripted stand-in for the call server, in the test's own loop: call sockets run a test's handler for
each command; REST routes answer what a test sets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import WSMsgType, web

from tests.local_http import serve_app

OnCommand = Callable[["Socket", dict[str, Any]], Awaitable[None]]


class Socket:
    """One call socket on the fake server."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.path = request.path
        self.query = dict(request.query)
        self.commands: list[dict[str, Any]] = []
        self.audio: list[bytes] = []

    async def event(self, name: str, **fields: Any) -> None:
        await self.ws.send_str(json.dumps({"event": name, "timestamp": 1, **fields}))


class FakeServer:
    def __init__(self, on_command: OnCommand | None = None) -> None:
        self.on_command = on_command
        self.sockets: list[Socket] = []
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.replies: dict[tuple[str, str], tuple[int, Any]] = {}
        self.sse: list[str] = []
        # Upgrades answer this status instead, `refusals` times (None: every time).
        self.refuse: int | None = None
        self.refusals: int | None = None
        self.url = ""

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if self.refuse is not None and self.refusals != 0:
            if self.refusals is not None:
                self.refusals -= 1
            raise _STATUS[self.refuse]()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sock = Socket(ws, request)
        for old in self.sockets:  # as the real server does when a resumable call gets a new socket
            if old.query.get("id") == sock.query.get("id") and not old.ws.closed:
                await old.ws.close(message=b"replaced by a new socket for this call")
        self.sockets.append(sock)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                cmd = json.loads(msg.data)
                sock.commands.append(cmd)
                if self.on_command is not None:
                    await self.on_command(sock, cmd)
            elif msg.type == WSMsgType.BINARY:
                sock.audio.append(msg.data)
        return ws

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        self.requests.append(
            (request.method, request.path, dict(request.headers), json.loads(body) if body else None)
        )
        if request.path.startswith("/events/") and (request.method, request.path) not in self.replies:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream;charset=utf-8"})
            await resp.prepare(request)
            for chunk in self.sse:
                await resp.write(chunk.encode())
            return resp
        status, data = self.replies.get((request.method, request.path), (404, {"error": "not here"}))
        return web.json_response(data, status=status)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeServer]:
        app = web.Application()
        for path in ("/call", "/call/webrtc", "/call/sip"):
            app.router.add_get(path, self._socket)
        app.router.add_route("*", "/{tail:.*}", self._rest)
        runner, port = await serve_app(app)
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            for sock in self.sockets:
                await sock.ws.close()
            await runner.cleanup()


_STATUS: dict[int, type[web.HTTPException]] = {
    401: web.HTTPUnauthorized,
    409: web.HTTPConflict,
    429: web.HTTPTooManyRequests,
}
