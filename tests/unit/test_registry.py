"""Registry, outbox/inbox and reaper logic against fakeredis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import fakeredis
import pytest

from common import wire
from common.bus import Outbox, read_inbox
from common.errors import DuplicateCall
from common.keys import Keys
from common.reaper import reap_once
from common.registry import Registry


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    redis = fakeredis.FakeAsyncRedis()
    yield Registry(redis, Keys("pbx:"))
    await redis.aclose()


async def test_register_duplicate_claim_remove(registry: Registry) -> None:
    await registry.register_pending("c1", "websocket", "web-1")
    with pytest.raises(DuplicateCall):
        await registry.register_pending("c1", "websocket", "web-2")
    assert await registry.claim("c1", "media-1") == 1
    assert await registry.claim("c1", "media-2") == 0
    assert await registry.claim("gone", "media-1") == -1
    entry = await registry.get("c1")
    assert entry is not None and entry.owner == "media-1" and entry.frontend == "web-1"
    assert [e.id for e in await registry.entries()] == ["c1"]
    assert await registry.remove("c1") is True
    assert await registry.remove("c1") is False, "only one remover wins"
    assert await registry.entries() == []
    await registry.update("c1", state="active")
    assert await registry.get("c1") is None, "update never resurrects a removed call"


async def test_listing_shape(registry: Registry) -> None:
    await registry.register_pending("c1", "sip", "web-1")
    (entry,) = await registry.entries()
    assert entry.listing()["option"] == {}, "an object from the start, as the API document shows it"
    await registry.update("c1", option='{"codec": "pcmu"}')
    (entry,) = await registry.entries()
    item = entry.listing()
    assert item["id"] == "c1" and item["call_type"] == "sip" and item["option"] == {"codec": "pcmu"}
    assert item["created_at"].endswith("Z") and "T" in item["created_at"]


async def test_outbox_batches_and_inbox_reads_in_order(registry: Registry) -> None:
    outbox = Outbox(registry.redis, registry.keys)
    for i in range(100):
        outbox.send("p1", wire.msg("c", wire.PCM, bytes([i])))
    task = asyncio.create_task(outbox.run())
    got: list[int] = []

    async def consume() -> None:
        async for batch in read_inbox(registry.redis, registry.keys, "p1", block_ms=50):
            got.extend(m["b"][0] for m in batch)
            if len(got) >= 100:
                return

    await asyncio.wait_for(consume(), 5)
    while outbox.sent_batches == 0:  # the writer resumes after its pipeline returns
        await asyncio.sleep(0.01)
    task.cancel()
    assert got == list(range(100))
    assert outbox.sent_batches == 1, "queued messages go out in one pipelined write"


async def test_reaper_notifies_frontend_of_dead_owner(registry: Registry) -> None:
    outbox = Outbox(registry.redis, registry.keys)
    await registry.heartbeat("web-1", {"role": "web"}, 5)
    await registry.register_pending("c1", "websocket", "web-1")
    await registry.claim("c1", "media-dead")
    await registry.register_pending("c2", "websocket", "web-1")
    await registry.heartbeat("media-live", {"role": "media"}, 5)
    await registry.claim("c2", "media-live")
    assert await reap_once(registry, outbox, claim_timeout=5) == 1
    assert [e.id for e in await registry.entries()] == ["c2"]
    await outbox.flush()
    batch = await anext(read_inbox(registry.redis, registry.keys, "web-1", block_ms=50))
    kinds = [(m["k"], m["b"].get("event") or m["b"].get("op")) for m in batch]
    assert kinds == [("evt", "error"), ("evt", "hangup"), ("ctl", "close")]
    assert batch[1]["b"]["reason"] == "worker_lost"


async def test_heartbeat_tells_a_lost_registry_and_restore_rebuilds_it(registry: Registry) -> None:
    assert await registry.heartbeat("media-1", {"role": "media"}, 5) is False, "first beat"
    assert await registry.heartbeat("media-1", {"role": "media"}, 5) is True
    await registry.redis.flushall()  # Redis restarted without its data
    assert await registry.heartbeat("media-1", {"role": "media"}, 5) is False
    fields: dict[str, str | int] = {
        "id": "c1", "call_type": "sip", "state": "active", "owner": "media-1", "frontend": "web-1",
        "created_at": 1700000000000, "option": '{"callee": "sip:a@b"}',
    }  # fmt: skip
    await registry.restore([fields])
    [entry] = await registry.entries()
    assert (entry.id, entry.owner, entry.frontend, entry.state) == ("c1", "media-1", "web-1", "active")
    listing = entry.listing()
    assert listing["created_at"] == "2023-11-14T22:13:20.000Z" and listing["option"] == {"callee": "sip:a@b"}
    assert await registry.claim("c1", "media-2") == 0, "the restored owner keeps it"


async def test_outbox_drops_a_message_it_cannot_pack_and_goes_on(registry: Registry) -> None:
    outbox = Outbox(registry.redis, registry.keys)
    outbox.send("web-1", wire.msg("c1", wire.EVT, {"event": "asrFinal", "text": "\ud800"}))
    outbox.send("web-1", wire.msg("c1", wire.EVT, {"event": "asrFinal", "text": "fine"}))
    await outbox.flush()
    batch = await anext(read_inbox(registry.redis, registry.keys, "web-1", block_ms=50))
    assert [m["b"]["text"] for m in batch] == ["fine"]


async def test_the_reapers_light_view_and_a_stale_index_entry(registry: Registry) -> None:
    await registry.register_pending("c1", "webrtc", "web-1")
    await registry.claim("c1", "media-1")
    await registry.update("c1", option='{"codec": "opus"}')
    await registry.register_pending("c2", "sip", "web-2")
    await registry.redis.zadd(registry.keys.calls, {"ghost": 1})  # its hash is gone (a lost write)
    (c1, c2) = sorted(await registry.owners(), key=lambda o: o.id)
    assert (c1.id, c1.owner, c1.frontend, c1.call_type) == ("c1", "media-1", "web-1", "webrtc")
    assert (c2.owner, c2.frontend, c2.call_type) == ("", "web-2", "sip") and c2.created_at > 0
    assert await registry.redis.zscore(registry.keys.calls, "ghost") is None, "the index is tidied"
