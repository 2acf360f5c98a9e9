"""Redis going away: new calls get HTTP 503 with the JSON error body; after it returns, calls work again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from common.embedded import EmbeddedRedis, free_port
from scripts.stack import Stack
from tests.e2e.client import CallClient
from tests.e2e.conftest import stack_env
from tests.e2e.test_shutdown import wait_for

pytestmark = pytest.mark.e2e

UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def test_new_calls_get_503_while_redis_is_down(tmp_path: Path) -> None:
    server = EmbeddedRedis().start()
    port = free_port()
    env = stack_env(tmp_path, port, server.url, WEB_CONCURRENCY="1", WORKER_PROCESSES="1", LOG_LEVEL="ERROR")
    stack = Stack(env, quiet=True).start()
    try:
        await asyncio.to_thread(wait_for, f"http://127.0.0.1:{port}/health", "media_warm", 1)
        server.stop()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/call", params={"id": "r1"}, headers=UPGRADE) as resp:
                assert resp.status == 503
                body = await resp.json()
                assert body["code"] == "SERVICE_UNAVAILABLE" and set(body) == {"error", "code", "details"}
            async with s.get(f"http://127.0.0.1:{port}/call/lists") as resp:
                assert resp.status == 503
            async with s.get(f"http://127.0.0.1:{port}/dashboard/data") as resp:
                assert resp.status == 503 and (await resp.json())["code"] == "SERVICE_UNAVAILABLE"
            async with s.get(f"http://127.0.0.1:{port}/health") as resp:
                assert resp.status == 503 and (await resp.json())["status"] == "degraded"
        server = EmbeddedRedis(server.port).start()  # back, and empty
        await asyncio.to_thread(wait_for, f"http://127.0.0.1:{port}/health", "media_warm", 1)
        c = await CallClient.open(f"ws://127.0.0.1:{port}", call_id="r2")
        try:
            await c.invite()
            await c.send({"command": "history", "speaker": "u", "text": "back"})
            await c.event("addHistory")
        finally:
            await c.close()
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/dashboard/data") as resp:
            assert resp.status == 200 and (await resp.json())["procs"]
        assert stack.alive(), "no process exited"
    finally:
        stack.stop()
        server.stop()
