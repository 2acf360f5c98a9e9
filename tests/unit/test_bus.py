"""The outbox's write cadence: audio shares writes, everything else goes out on the loop's next turn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import fakeredis
import pytest

from common import wire
from common.bus import Outbox
from common.keys import Keys

KEYS = Keys("pbx:")


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    r = fakeredis.FakeAsyncRedis()
    yield r
    await r.aclose()


async def _entries(redis: fakeredis.FakeAsyncRedis, proc: str) -> list[list[bytes]]:
    """Each XADD to `proc`'s inbox, as the list of the kinds it carried."""
    raw = await redis.xrange(KEYS.inbox(proc))
    return [[m["k"] for m in wire.unpack(fields[wire.FIELD])] for _id, fields in raw]


async def _running(outbox: Outbox) -> asyncio.Task[None]:
    task = asyncio.create_task(outbox.run())
    await asyncio.sleep(0)
    return task


async def test_audio_frames_within_the_linger_share_one_write(redis: fakeredis.FakeAsyncRedis) -> None:
    outbox = Outbox(redis, KEYS, linger=0.05)
    task = await _running(outbox)
    try:
        for i in range(5):
            outbox.send("m1", wire.msg(f"c{i}", wire.PCM, b"\0" * 640))
            outbox.send("m2", wire.msg(f"c{i}", wire.PCM, b"\0" * 640))
            await asyncio.sleep(0.005)
        assert await _entries(redis, "m1") == [], "audio waits for company"
        await asyncio.sleep(0.06)
        assert await _entries(redis, "m1") == [["pcm"] * 5]
        assert await _entries(redis, "m2") == [["pcm"] * 5]
    finally:
        task.cancel()


async def test_a_command_goes_out_on_the_next_turn_with_the_audio_before_it(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    outbox = Outbox(redis, KEYS, linger=10.0)
    task = await _running(outbox)
    try:
        outbox.send("m1", wire.msg("c1", wire.PCM, b"\0" * 640))
        outbox.send("m1", wire.msg("c1", wire.CMD, {"command": "history"}))
        for _ in range(20):
            await asyncio.sleep(0)
        assert await _entries(redis, "m1") == [["pcm", "cmd"]], "order kept, no 10 s linger"
    finally:
        task.cancel()


async def test_kick_writes_audio_at_once(redis: fakeredis.FakeAsyncRedis) -> None:
    outbox = Outbox(redis, KEYS, linger=10.0)
    task = await _running(outbox)
    try:
        for i in range(3):
            outbox.send("web", wire.msg(f"c{i}", wire.PCM, b"\0" * 640))
        outbox.kick()  # what the media clock does after each tick
        for _ in range(20):
            await asyncio.sleep(0)
        assert await _entries(redis, "web") == [["pcm"] * 3]
    finally:
        task.cancel()


async def test_audio_queued_during_a_write_goes_in_the_next_one(redis: fakeredis.FakeAsyncRedis) -> None:
    outbox = Outbox(redis, KEYS, linger=0.01)
    task = await _running(outbox)
    try:
        for n in range(3):
            for i in range(4):
                outbox.send("m1", wire.msg(f"c{i}", wire.PCM, bytes([n])))
            await asyncio.sleep(0.03)
        assert await _entries(redis, "m1") == [["pcm"] * 4] * 3, "one write per burst, none lost"
    finally:
        task.cancel()
