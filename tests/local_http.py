"""A test's own HTTP server on loopback (a media host, a webhook, an EOU service)."""

from __future__ import annotations

from aiohttp import web

from common.embedded import free_port


async def serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    """`app` served on 127.0.0.1 at a free port: its runner (clean it up) and the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port
