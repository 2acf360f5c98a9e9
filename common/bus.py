"""Process-to-process messaging over Redis streams: a batching outbox and an inbox reader."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common import wire
from common.backoff import Backoff
from common.keys import Keys
from common.metrics import AUDIO_DROPPED, BUS_BATCHES, redis_error
from common.peerlink import InboxCursor, Links
from common.streamlink import stream_io

log = logging.getLogger("pbx.bus")

INBOX_MAXLEN = 20_000
# Audio waiting for a Redis that is down is dropped past this many messages; events and commands are kept.
MAX_PENDING_AUDIO = 5_000
# Inbox reads between trims of what has been read.
TRIM_EVERY = 64
# Audio waits at most this long (s) for other calls' audio to share its write: below saturation nearly every
# frame was its own XADD, its own inbox wake-up and its own loop hops in three processes. A frontend writes
# about 1/linger batches a second at any load, and each costs a wake-up in it, in Redis and in every media
# process it reaches (~40-80 µs of CPU each on a 2-core VM); 10 ms instead of 5 saved 0.4-1.3 ms per
# call-second at 50 calls for 2.5 ms more mean delay of caller audio (docs/performance.md, "Low load and
# the setup tail").
AUDIO_LINGER = 0.010


def new_proc_id(role: str, host: str | None = None) -> str:
    """A process id: `{role}-{host}-{pid}-{random}`, `host` being HOST_NAME (Settings.host_name)."""
    return f"{role}-{host or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Outbox:
    """Collects messages for other processes and writes each batch with one pipelined round trip.

    Commands, events and control messages go out on the loop's next turn, with whatever else was queued in
    the same turn. Audio waits up to `linger` seconds for company (a media process writes its tick's frames
    at once with `kick`), so one write per destination carries many calls' frames at any load. Messages
    queued while a write is in flight go out together in the next write. A batch for a process with a
    direct link up (`links`, common/peerlink.py) goes over it; the others go to the inbox streams.
    """

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, linger: float = AUDIO_LINGER, links: Links | None = None
    ) -> None:
        self._streams = stream_io(redis)
        self._keys = keys
        self.linger = linger
        self.links = links
        # The last entry this process wrote to each inbox stream: a link starts after it (common/peerlink.py).
        self._last_id: dict[str, bytes] = {}
        self._pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.sent_batches = 0

    def send(self, proc: str, message: dict[str, Any]) -> None:
        self._pending[proc].append(message)
        if message["k"] != wire.PCM:
            self.kick()
        elif self._timer is None and self._loop is not None and not self._wake.is_set():
            self._timer = self._loop.call_later(self.linger, self.kick)

    def kick(self) -> None:
        """Write what is queued without waiting out the linger."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._pending:
            self._wake.set()
        backoff = Backoff(0.05, 2.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch, self._pending = self._pending, defaultdict(list)
            if not batch:
                continue
            try:
                await self._write(batch)
                backoff.reset()
            except RedisError as exc:
                redis_error("outbox_write")
                delay = backoff.next()
                log.warning("redis write failed (%s); retrying in %.2fs", exc, delay)
                self._requeue(batch)
                await asyncio.sleep(delay)
                self._wake.set()

    async def flush(self, timeout: float = 2.0) -> None:
        """Write whatever is queued now (used on shutdown)."""
        batch, self._pending = self._pending, defaultdict(list)
        if batch:
            try:
                await asyncio.wait_for(self._write(batch), timeout)
            except (RedisError, TimeoutError) as exc:
                redis_error("outbox_flush")
                log.warning("final flush failed: %s", exc)

    async def _write(self, batch: dict[str, list[dict[str, Any]]]) -> None:
        links = self.links
        items, procs = [], []
        for proc, messages in batch.items():
            blob = self._pack(proc, messages)
            if links is not None and links.send(proc, blob, self._last_id.get(proc)):
                _LINKED.value += 1
                continue
            items.append((self._keys.inbox(proc), wire.FIELD, blob))
            procs.append(proc)
        if items:
            try:
                ids = await self._streams.xadd_many(items, INBOX_MAXLEN)
            except RedisError:
                # Only what went to Redis goes round again (the linked batches left already).
                for proc in batch.keys() - set(procs):
                    del batch[proc]
                raise
            _STREAMED.value += len(items)
            for proc, entry_id in zip(procs, ids, strict=False):
                self._last_id[proc] = entry_id
        self.sent_batches += 1

    async def close(self) -> None:
        """Close the outbox's own Redis connection (after the last `flush`)."""
        await self._streams.close()

    def _pack(self, proc: str, messages: list[dict[str, Any]]) -> bytes:
        """The batch as one blob; a message that cannot be packed (a lone surrogate in some provider's text,
        an integer beyond 64 bits) is logged and left out, so it cannot stop this process's messaging."""
        try:
            return wire.pack(messages)
        except (TypeError, ValueError, OverflowError) as exc:  # UnicodeError is a ValueError
            good = []
            for m in messages:
                try:
                    wire.pack([m])
                    good.append(m)
                except (TypeError, ValueError, OverflowError):
                    log.error("dropped a %s message for %s to %s that cannot be packed: %s",
                              m.get("k"), m.get("c"), proc, exc)  # fmt: skip
            return wire.pack(good)

    def _requeue(self, batch: dict[str, list[dict[str, Any]]]) -> None:
        for proc, messages in batch.items():
            merged = messages + self._pending.get(proc, [])
            audio = sum(1 for m in merged if m["k"] == wire.PCM)
            if audio > MAX_PENDING_AUDIO:
                kept = [m for m in merged if m["k"] != wire.PCM]
                AUDIO_DROPPED.labels("redis_backlog").inc(audio)
                merged = kept
            self._pending[proc] = merged


_LINKED = BUS_BATCHES.labels("link")
_STREAMED = BUS_BATCHES.labels("redis")


async def read_inbox(
    redis: aioredis.Redis, keys: Keys, proc: str, block_ms: int = 1000, cursor: InboxCursor | None = None
) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield batches of messages addressed to `proc`, in order, forever; survives Redis restarts.

    `cursor` learns each entry once the consumer has handled its batch (links wait on it)."""
    stream = keys.inbox(proc)
    streams = stream_io(redis)
    last = b"0-0"
    reads = 0
    backoff = Backoff(0.05, 2.0)
    while True:
        try:
            entries = await streams.xread(stream, last, 500, block_ms)
            backoff.reset()
        except RedisError as exc:
            redis_error("inbox_read")
            delay = backoff.next()
            log.warning("inbox read failed (%s); retrying in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            continue
        if not entries:
            continue
        for entry_id, fields in entries:
            last = entry_id
            blob = fields.get(wire.FIELD)
            messages = None
            try:
                messages = wire.unpack(blob) if blob is not None else None
            except Exception:  # a foreign or corrupt entry must not stop the reader
                log.exception("undecodable inbox entry %s", entry_id)
            if messages is not None:
                yield messages
            if cursor is not None:
                cursor.advance(entry_id)
        reads += 1
        if reads % TRIM_EVERY == 0:
            # Entries are read once by their only reader; trimming now and then keeps memory flat.
            try:
                await redis.xtrim(stream, minid=last, approximate=True)
            except RedisError:
                redis_error("inbox_trim")
