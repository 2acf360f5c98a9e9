"""The two Redis commands on the audio path, XADD in batches and XREAD BLOCK, on connections of their own.

Every 20 ms frame crosses Redis twice, so the cost of these two commands is paid hundreds of times a second
by every process. redis-py spends ~140 µs of CPU on a pipeline of two XADDs and ~120 µs on an XREAD (its
pool, retry and instrumentation layers); writing the commands and parsing the replies with hiredis directly
costs ~50-65 µs each (`bench/streamlink.py`, docs/performance.md). Everything else keeps redis-py.

`stream_io(client)` gives this lean link for a plain TCP or Unix-socket client, and an adapter over the
client itself otherwise (TLS, fakeredis in unit tests): both have the same two methods. Errors are redis-py's
(`ConnectionError`, `ResponseError`), so callers retry as they always did; a broken link reconnects on the
next call.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Any, Protocol

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

# Entries as XREAD returns them: (entry id, {field: value}).
Entry = tuple[bytes, dict[bytes, bytes]]
CONNECT_TIMEOUT = 5.0


class StreamIO(Protocol):
    async def xadd_many(self, items: list[tuple[str, bytes, bytes]], maxlen: int) -> list[bytes]:
        """XADD each (stream, field, value), one write and one round trip for all of them: the new ids."""

    async def xread(self, stream: str, last: bytes, count: int, block_ms: int) -> list[Entry]:
        """XREAD COUNT BLOCK from one stream after `last`: its new entries, [] when none came in time."""

    async def close(self) -> None: ...


def _arg(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def encode(*args: str | bytes | int) -> bytes:
    """One command in RESP (the Redis wire format)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _arg(a)
        parts += (b"$%d\r\n" % len(b), b, b"\r\n")
    return b"".join(parts)


class _Link(asyncio.Protocol):
    """One connection: commands written in order, replies matched to their futures in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.waiting:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = self.waiting.popleft()
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(ResponseError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}")
        self.transport = None
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(self.lost)

    def send(self, payload: bytes, replies: int) -> list[asyncio.Future[Any]]:
        if self.transport is None or self.transport.is_closing():
            raise self.lost or RedisConnectionError("not connected to Redis")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self.waiting.extend(futures)
        self.transport.write(payload)
        return futures


class LeanStreams:
    """XADD batches and XREAD BLOCK over a connection of its own (see the module docstring)."""

    def __init__(self, kwargs: dict[str, Any], unix: bool) -> None:
        self._kwargs = kwargs
        self._unix = unix
        self._link: _Link | None = None

    async def _connected(self) -> _Link:
        link = self._link
        if link is not None and link.transport is not None and not link.transport.is_closing():
            return link
        self._link = None
        loop = asyncio.get_running_loop()
        k = self._kwargs
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if self._unix:
                    _, link = await loop.create_unix_connection(_Link, k["path"])
                else:
                    _, link = await loop.create_connection(
                        _Link, k.get("host", "localhost"), k.get("port", 6379)
                    )
                    sock = link.transport.get_extra_info("socket") if link.transport else None
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                hello = []
                if k.get("password"):
                    auth = (
                        ("AUTH", k["username"], k["password"])
                        if k.get("username")
                        else ("AUTH", k["password"])
                    )
                    hello.append(encode(*auth))
                if k.get("db"):
                    hello.append(encode("SELECT", k["db"]))
                if hello:
                    try:
                        for fut in link.send(b"".join(hello), len(hello)):
                            await fut
                    except BaseException:  # refused (a wrong password), timed out or cancelled: not kept
                        self._drop(link)
                        raise
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        self._link = link
        return link

    async def _call(self, payload: bytes, replies: int) -> list[Any]:
        link = await self._connected()
        futures = link.send(payload, replies)
        try:
            return [await f for f in futures]
        except asyncio.CancelledError:
            # A reply still on its way would be matched to the next command: start afresh.
            self._drop(link)
            raise

    def _drop(self, link: _Link) -> None:
        if link.transport is not None:
            link.transport.abort()
        if self._link is link:
            self._link = None

    async def xadd_many(self, items: list[tuple[str, bytes, bytes]], maxlen: int) -> list[bytes]:
        payload = b"".join(
            encode("XADD", stream, "MAXLEN", "~", maxlen, "*", field, value) for stream, field, value in items
        )
        return await self._call(payload, len(items))

    async def xread(self, stream: str, last: bytes, count: int, block_ms: int) -> list[Entry]:
        (reply,) = await self._call(
            encode("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", stream, last), 1
        )
        if not reply:
            return []
        entries = reply[0][1]
        # An entry deleted after it was listed comes back without fields: kept, so the reader moves past it.
        return [
            (entry_id, dict(zip(flat[::2], flat[1::2], strict=False)) if flat else {})
            for entry_id, flat in entries
        ]

    async def close(self) -> None:
        if self._link is not None:
            self._drop(self._link)


class ClientStreams:
    """The same two commands through a redis-py client (TLS connections, fakeredis in unit tests)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def xadd_many(self, items: list[tuple[str, bytes, bytes]], maxlen: int) -> list[bytes]:
        pipe = self._redis.pipeline(transaction=False)
        for stream, field, value in items:
            pipe.xadd(stream, {field: value}, maxlen=maxlen, approximate=True)
        ids = await pipe.execute()
        return [i if isinstance(i, bytes) else str(i).encode() for i in ids]

    async def xread(self, stream: str, last: bytes, count: int, block_ms: int) -> list[Entry]:
        reply: Any = await self._redis.xread({stream: last}, count=count, block=block_ms)
        if not reply:
            return []
        return [(entry_id, fields or {}) for _stream, entries in reply for entry_id, fields in entries]

    async def close(self) -> None:
        return None


def stream_io(redis: aioredis.Redis) -> StreamIO:
    """A lean link to the server `redis` talks to when it is plain TCP or a Unix socket, else an adapter."""
    pool = getattr(redis, "connection_pool", None)
    cls = getattr(pool, "connection_class", None)
    kwargs = dict(getattr(pool, "connection_kwargs", {}) or {})
    if cls is Connection:
        return LeanStreams(kwargs, unix=False)
    if cls is UnixDomainSocketConnection:
        return LeanStreams(kwargs, unix=True)
    return ClientStreams(redis)
