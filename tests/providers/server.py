"""A local aiohttp server for provider mocks, on a free loopback port."""

from __future__ import annotations

from aiohttp import web

from common.embedded import free_port


class MockServer:
    """Subclasses add routes in `routes()`; `async with` starts and stops it."""

    def __init__(self) -> None:
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        # Every WebSocket the server accepted, so a test can drop them.
        self.sockets: list[web.WebSocketResponse] = []

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> MockServer:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in self.sockets:
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
