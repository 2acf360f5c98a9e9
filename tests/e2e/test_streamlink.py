"""The lean stream link (common/streamlink.py) against a real Redis server: the same replies as redis-py,
password and database selection, errors as redis-py's, and recovery after the server restarts."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from common.embedded import EmbeddedRedis, free_port, redis_server_binary
from common.streamlink import ClientStreams, LeanStreams, stream_io


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    s = EmbeddedRedis().start()
    yield s
    s.stop()


async def test_lean_and_client_links_agree(server: EmbeddedRedis) -> None:
    client = aioredis.Redis.from_url(server.url)
    lean = stream_io(client)
    assert isinstance(lean, LeanStreams)
    slow = ClientStreams(client)
    try:
        await lean.xadd_many([("a", b"m", b"\x00" * 700), ("b", b"m", b"two"), ("a", b"m", b"three")], 100)
        got = await lean.xread("a", b"0-0", 10, 10)
        assert [f for _, f in got] == [{b"m": b"\x00" * 700}, {b"m": b"three"}]
        assert got == await slow.xread("a", b"0-0", 10, 10)
        assert [f for _, f in await lean.xread("b", b"0-0", 10, 10)] == [{b"m": b"two"}]
        # Nothing new: BLOCK runs out and the reply is empty.
        assert await lean.xread("a", got[-1][0], 10, 50) == []
        with pytest.raises(ResponseError):
            await lean.xadd_many([("a", b"m", b"x")], -5)  # a Redis error reply, as redis-py raises it
    finally:
        await lean.close()
        await client.aclose()


async def test_blocking_read_wakes_on_write_and_survives_cancel(server: EmbeddedRedis) -> None:
    client = aioredis.Redis.from_url(server.url)
    reader, writer = stream_io(client), stream_io(client)
    try:
        pending = asyncio.create_task(reader.xread("s", b"0-0", 10, 5000))
        await asyncio.sleep(0.05)
        await writer.xadd_many([("s", b"m", b"hello")], 100)
        (entry,) = await asyncio.wait_for(pending, 2)
        assert entry[1] == {b"m": b"hello"}
        # A read cancelled mid-BLOCK must not leave its reply to be taken for the next command's.
        blocked = asyncio.create_task(reader.xread("s", entry[0], 10, 5000))
        await asyncio.sleep(0.05)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        await writer.xadd_many([("s", b"m", b"after")], 100)
        (after,) = await reader.xread("s", entry[0], 10, 100)
        assert after[1] == {b"m": b"after"}
    finally:
        await reader.close()
        await writer.close()
        await client.aclose()


@pytest.fixture
def password_server() -> Iterator[int]:
    """A Redis server that wants a password ("s3"); its port."""
    port = free_port()
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--requirepass", "s3"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    yield port
    proc.terminate()
    proc.wait()


async def test_password_and_database(password_server: int) -> None:
    port = password_server
    client = aioredis.Redis.from_url(f"redis://:s3@127.0.0.1:{port}/3")
    for _ in range(50):
        try:
            await client.ping()
            break
        except Exception:
            await asyncio.sleep(0.1)
    link = stream_io(client)
    await link.xadd_many([("s", b"m", b"x")], 100)
    assert await client.xlen("s") == 1, "written in database 3, where the client reads"
    wrong = stream_io(aioredis.Redis.from_url(f"redis://:nope@127.0.0.1:{port}/0"))
    with pytest.raises(ResponseError):
        await wrong.xadd_many([("s", b"m", b"x")], 100)  # the refused connection is not left open
    await link.close()
    await client.aclose()


async def test_errors_then_recovery_when_the_server_restarts() -> None:
    server = EmbeddedRedis().start()
    client = aioredis.Redis.from_url(server.url)
    link = stream_io(client)
    try:
        await link.xadd_many([("s", b"m", b"1")], 100)
        server.stop()
        with pytest.raises(RedisConnectionError):
            await link.xadd_many([("s", b"m", b"2")], 100)
        with pytest.raises(RedisConnectionError):
            await link.xread("s", b"0-0", 10, 10)
        server = EmbeddedRedis(server.port).start()
        await link.xadd_many([("s", b"m", b"3")], 100)
        assert [f for _, f in await link.xread("s", b"0-0", 10, 10)] == [{b"m": b"3"}]
    finally:
        await link.close()
        await client.aclose()
        server.stop()


def test_tls_clients_use_redis_py() -> None:
    assert isinstance(stream_io(aioredis.Redis.from_url("rediss://127.0.0.1:1/0")), ClientStreams)
