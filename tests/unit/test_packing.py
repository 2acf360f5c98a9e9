"""Packing (worker/packing.py): which media process blocks on the dispatch stream, from the heartbeats."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from common.keys import Keys
from common.liveness import HEARTBEAT_EVERY
from common.registry import Registry
from tests.unit.test_liveness import Clock
from worker.packing import (
    HANDOVER,
    LOCAL_WAIT_MS,
    MAX_PASSES,
    PACK_PRESSURE,
    STALE_MS,
    Packing,
    full_for_packing,
    hosts_with_room,
    leave_for_its_host,
    packing_target,
)

KEYS = Keys("pbx:")
NOW = 1_800_000_000_000  # epoch ms
PACK = 50


def beat(proc: str, calls: int = 0, **fields: Any) -> dict[str, Any]:
    """A warm, admitting media process's heartbeat, written just now."""
    pressure = fields.pop("pressure", 0.0)
    out = {
        "role": "media",
        "proc": proc,
        "warm": True,
        "calls": calls,
        "capacity": 200,
        "max_calls": 200,
        "load": {"pressure": pressure, "admitting": True, "claiming": True},
        "beat_at": NOW - 300,
        "loop_at": NOW - 310,
    }
    out.update(fields)
    return out


def target(*beats: dict[str, Any], pack: int = PACK) -> str | None:
    return packing_target(list(beats), pack, NOW)


def test_the_lowest_proc_id_is_the_target() -> None:
    assert target(beat("media-b", 3), beat("media-a", 10), beat("media-c")) == "media-a"


def test_alone_it_is_the_target() -> None:
    assert target(beat("media-a", 12)) == "media-a"
    assert target(beat("media-a", PACK)) is None, "alone and full: it reads, as every process then does"


def test_full_by_calls_goes_to_the_next() -> None:
    assert full_for_packing(beat("media-a", PACK), PACK)
    assert not full_for_packing(beat("media-a", PACK - 1), PACK)
    assert target(beat("media-a", PACK), beat("media-b", 7)) == "media-b"
    assert target(beat("media-a", PACK + 5), beat("media-b", PACK - 1)) == "media-b"


def test_full_by_pressure_goes_to_the_next() -> None:
    busy = beat("media-a", 3, pressure=PACK_PRESSURE)
    assert full_for_packing(busy, PACK)
    assert not full_for_packing(beat("media-a", 3, pressure=PACK_PRESSURE - 0.01), PACK)
    assert target(busy, beat("media-b", 7)) == "media-b"


def test_full_by_the_pressure_its_calls_will_have() -> None:
    """A burst of dear calls: the load estimates 18 calls at TARGET_PRESSURE (0.9), so 10 reach about 0.5
    before the next sample shows it."""
    load = {"pressure": 0.3, "admitting": True, "limit": 18}
    assert full_for_packing(beat("media-a", 10, capacity=18, load=load), PACK)
    assert not full_for_packing(beat("media-a", 9, capacity=18, load=load), PACK)
    # No estimate yet (the limit is MAX_CALLS): calls and measured pressure only.
    idle = {"pressure": 0.01, "admitting": True, "limit": 200}
    assert not full_for_packing(beat("media-a", 49, load=idle), PACK)


def test_every_process_full_means_no_target() -> None:
    assert target(beat("media-a", PACK), beat("media-b", 3, pressure=0.7)) is None


def test_processes_that_take_no_calls_are_skipped() -> None:
    stale = beat("media-a", beat_at=NOW - STALE_MS - 1, loop_at=NOW - STALE_MS - 1)
    stuck = beat("media-a", beat_at=NOW - 100, loop_at=NOW - 100 - STALE_MS - 1)  # its loop stopped running
    cold = beat("media-a", warm=False, capacity=0)
    draining = beat("media-a", capacity=0, max_calls=0)
    overloaded = beat("media-a", 10, capacity=10, load={"pressure": 1.2, "admitting": False})
    at_max = beat("media-a", 200)
    web = beat("media-a", role="web")
    for skipped in (stale, stuck, cold, draining, overloaded, at_max, web):
        assert target(skipped, beat("media-b", 4)) == "media-b", skipped
        assert target(skipped) is None, skipped


def test_a_heartbeat_without_times_is_fresh_and_a_broken_one_is_skipped() -> None:
    own = {k: v for k, v in beat("media-a").items() if k not in ("beat_at", "loop_at")}
    assert target(own, beat("media-b")) == "media-a", "a process's own fields have no times: fresh"
    broken = beat("media-0", calls="many")
    assert target(broken, beat("media-b")) == "media-b"
    assert target({"role": "media"}, beat("media-b")) == "media-b"


# --- one process's view, from Redis --------------------------------------------------------------------


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    redis = fakeredis.FakeAsyncRedis()
    yield Registry(redis, KEYS)
    await redis.aclose()


async def write(registry: Registry, *beats: dict[str, Any]) -> None:
    """Heartbeats as the heartbeat threads write them, just now."""
    now = int(time.time() * 1000)
    for b in beats:
        await registry.redis.set(KEYS.proc(b["proc"]), json.dumps({**b, "beat_at": now, "loop_at": now}))


def view(
    registry: Registry, proc: str, own: dict[str, Any], pack: int = PACK, changes: list[bool] | None = None
) -> tuple[Packing, Clock]:
    """Media process `proc`'s packing, its own heartbeat fields `own`, on a virtual clock."""
    clock, changed = Clock(), changes if changes is not None else []
    packing = Packing(
        registry, proc, pack, 50.0, lambda: own, on_change=lambda: changed.append(True), clock=clock
    )
    return packing, clock


async def test_only_the_target_blocks(registry: Registry) -> None:
    a, b = beat("media-a", 2), beat("media-b", 0)
    await write(registry, a, b)
    on_a, _ = view(registry, "media-a", a)
    on_b, _ = view(registry, "media-b", b)
    assert await on_a.blocks() is True
    assert await on_b.blocks() is False
    assert on_b.poll == 0.05


async def test_own_fields_count_at_once_and_the_heartbeats_once_a_heartbeat(registry: Registry) -> None:
    own = beat("media-a", 2)
    await write(registry, own, beat("media-b", 0))
    changes: list[bool] = []
    on_a, clock = view(registry, "media-a", own, changes=changes)
    assert await on_a.blocks() is True and on_a.leads
    assert changes == [True], "the target says it leads at once"
    own["calls"] = PACK  # its own calls: seen now, and its heartbeat is asked for at once
    assert await on_a.blocks() is True and changes == [True, True], "it goes on blocking until media-b does"
    assert on_a.target == "media-b" and not on_a.leads
    clock.now += HANDOVER - 0.25
    assert await on_a.blocks() is True
    assert on_a.block_ms() == 100, "no blocking read outlasts its next look at the heartbeats"
    clock.now += 0.25
    assert await on_a.blocks() is False, "media-b never said it leads: the handover ends all the same"
    # media-b fills up, but media-a reads the heartbeats again only a heartbeat later.
    await write(registry, beat("media-b", PACK))
    clock.now += HEARTBEAT_EVERY + 0.01
    assert await on_a.blocks() is True, "every process full: everyone reads"
    assert on_a.target is None
    own["calls"] = PACK - 1
    assert await on_a.blocks() is True and changes == [True, True, True]
    assert on_a.target == "media-a"


async def test_a_full_target_stops_blocking_once_the_next_says_it_leads(registry: Registry) -> None:
    own = beat("media-a", PACK - 1)
    await write(registry, own, beat("media-b", 0))
    on_a, clock = view(registry, "media-a", own)
    on_b, clock_b = view(registry, "media-b", beat("media-b", 0))
    assert await on_a.blocks() is True and await on_b.blocks() is False
    own["calls"] = PACK
    assert await on_a.blocks() is True, "full: it blocks while media-b has not read so"
    assert on_a.batch(8) == 1, "one request a read while it hands over"
    await write(registry, own)  # its heartbeat, written at once
    clock_b.now += HEARTBEAT_EVERY + 0.01
    assert await on_b.blocks() is True and on_b.leads and on_b.batch(8) == 8
    clock.now += 0.05
    assert await on_a.blocks() is True, "its last look is 50 ms old: media-b's heartbeat is not read yet"
    await write(registry, {**beat("media-b", 0), "leads": on_b.leads})
    clock.now += 0.06
    assert await on_a.blocks() is False, "read a tenth of a second after the last look, long before HANDOVER"


async def test_gone_target_and_packing_off(registry: Registry) -> None:
    b = beat("media-b", 0)
    await write(registry, beat("media-a", 1), b)
    on_b, clock = view(registry, "media-b", b)
    assert await on_b.blocks() is False
    await registry.redis.delete(KEYS.proc("media-a"))  # killed: its heartbeat deleted by the supervisor
    clock.now += 1.0
    assert await on_b.blocks() is True, "alone now, it is the target"
    off, _ = view(registry, "media-z", beat("media-z", 0), pack=0)
    assert await off.blocks() is True, "PACK_CALLS=0: every process blocks"


async def test_a_poller_takes_only_what_waited_a_whole_poll(registry: Registry) -> None:
    on_b, _ = view(registry, "media-b", beat("media-b", 0))
    stream = KEYS.dispatch
    assert await on_b.overdue(stream) is False, "nothing waits"
    first = await registry.redis.xadd(stream, {"call_id": "c1"})
    assert await on_b.overdue(stream) is False, "new: the target may take it yet"
    assert await on_b.overdue(stream) is True, "still there a poll later"
    await registry.redis.xdel(stream, first)
    await registry.redis.xadd(stream, {"call_id": "c2"})
    assert await on_b.overdue(stream) is False, "taken; the next one is new"


async def test_a_quiet_poller_waits_for_the_next_request_instead_of_looking_every_poll(
    registry: Registry,
) -> None:
    on_b, _ = view(registry, "media-b", beat("media-b", 0))
    stream = KEYS.dispatch
    began = time.monotonic()
    assert await on_b.overdue(stream, wait_ms=300) is False, "nothing came"
    assert time.monotonic() - began >= 0.25, "it waited, rather than returning at once"

    async def arrive() -> None:
        await asyncio.sleep(0.1)
        await registry.redis.xadd(stream, {"call_id": "c1"})

    began = time.monotonic()
    task = asyncio.create_task(arrive())
    assert await on_b.overdue(stream, wait_ms=5000) is False, "new: the target may take it yet"
    assert time.monotonic() - began < 2.0, "woken by the request, not by the end of the wait"
    await task
    began = time.monotonic()
    assert await on_b.overdue(stream, wait_ms=5000) is True, "still there a poll later: a plain look"
    assert time.monotonic() - began < 1.0


async def test_the_target_while_a_lower_one_warms_looks_again_soon(registry: Registry) -> None:
    cold = {**beat("media-a", 0), "warm": False}
    b = beat("media-b", 0)
    await write(registry, cold, b)
    on_b, clock = view(registry, "media-b", b)
    assert await on_b.blocks() is True, "media-a takes no call yet"
    assert on_b.block_ms() == 100, "its blocking read lasts no longer than its next look"
    await write(registry, beat("media-a", 0))  # warm now
    clock.now += 0.15
    assert await on_b.blocks() is False, "read again a tenth of a second later, not a heartbeat later"
    on_a, _ = view(registry, "media-a", beat("media-a", 0))
    assert await on_a.blocks() is True and on_a.block_ms() == 1000, "the real target blocks for a second"


async def test_a_poller_that_sees_calls_waiting_looks_again_soon(registry: Registry) -> None:
    b = beat("media-b", 0)
    await write(registry, beat("media-a", 3), b)
    on_b, clock = view(registry, "media-b", b)
    assert await on_b.blocks() is False
    await write(registry, beat("media-a", PACK))  # filled up in a burst, unseen so far
    clock.now += 0.15
    assert await on_b.blocks() is False, "no call seen waiting: the heartbeats are read once a heartbeat"
    await registry.redis.xadd(KEYS.dispatch, {"call_id": "c1"})
    assert await on_b.overdue(KEYS.dispatch) is False  # seen waiting
    clock.now += 0.05
    assert await on_b.blocks() is True, (
        "read again soon, not a heartbeat later: media-a is full, media-b is next"
    )


async def test_a_target_that_fills_up_reads_the_heartbeats_at_once(registry: Registry) -> None:
    own = beat("media-a", PACK - 1)
    await write(registry, own, {**beat("media-b", 0), "warm": False})
    on_a, clock = view(registry, "media-a", own)
    assert await on_a.blocks() is True and on_a.target == "media-a"
    await write(registry, beat("media-b", 0))  # warm now; media-a's view is from before
    clock.now += 0.1
    own["calls"] = PACK
    assert await on_a.blocks() is True
    assert on_a.target == "media-b", "who takes over is decided on a fresh view, not on one from its warm-up"


# --- several hosts ---------------------------------------------------------------------------------------


def test_each_host_packs_on_its_own() -> None:
    beats = [
        beat("media-a-0", 3, host="a"),
        beat("media-a-1", host="a"),
        beat("media-b-0", PACK, host="b"),
        beat("media-b-1", 1, host="b"),
    ]
    assert packing_target(beats, PACK, NOW) == "media-a-0", "without a host: the lowest id of all"
    assert packing_target(beats, PACK, NOW, host="a") == "media-a-0"
    assert packing_target(beats, PACK, NOW, host="b") == "media-b-1", "b's first is full for packing"
    assert packing_target(beats, PACK, NOW, host="c") is None, "no media process there: none"


def test_hosts_with_room() -> None:
    beats = [
        beat("media-a-0", 200, host="a"),  # full
        beat("media-b-0", 3, host="b"),
        beat("media-c-0", host="c", beat_at=NOW - STALE_MS - 1),  # stale
        beat("media-d-0", host="d", warm=False),
        {"role": "web", "proc": "web-e-1", "host": "e"},
    ]
    assert hosts_with_room(beats, NOW) == {"b"}


def request(host: str | None, age_ms: int = 5, passes: int | None = None) -> dict[bytes, bytes]:
    fields = {b"call_id": b"c1", b"created_at": str(NOW - age_ms).encode()}
    if host is not None:
        fields[b"host"] = host.encode()
    if passes is not None:
        fields[b"passes"] = str(passes).encode()
    return fields


def test_a_request_is_left_for_its_frontends_host_while_it_has_room() -> None:
    room = {"a", "b"}
    assert leave_for_its_host(request("a"), "b", room, NOW)
    assert not leave_for_its_host(request("b"), "b", room, NOW), "its own host's: taken"
    assert not leave_for_its_host(request(None), "b", room, NOW), "a frontend that does not say: taken"
    assert not leave_for_its_host(request("a"), "b", {"b"}, NOW), "a has no room: taken (spill-over)"
    assert not leave_for_its_host(request("w"), "b", room, NOW), "a web-only host: taken"
    assert not leave_for_its_host(request("a", age_ms=LOCAL_WAIT_MS), "b", room, NOW), "waited enough"
    assert leave_for_its_host(request("a", passes=MAX_PASSES - 1), "b", room, NOW)
    assert not leave_for_its_host(request("a", passes=MAX_PASSES), "b", room, NOW), "left enough times"
    assert not leave_for_its_host({b"host": b"a", b"created_at": b"x"}, "b", room, NOW), "unreadable: taken"


async def test_hosts_with_room_reads_the_heartbeats_when_its_view_is_too_old(registry: Registry) -> None:
    own = beat("media-b-0", 0, host="b")
    await write(registry, own, beat("media-a-0", 0, host="a"))
    packing = Packing(registry, "media-b-0", PACK, 50.0, lambda: own, clock=(clock := Clock()), host="b")
    assert await packing.hosts_with_room() == {"a", "b"}
    await write(registry, beat("media-a-0", 200, host="a"))  # host a fills up
    clock.now += 0.5
    assert await packing.hosts_with_room() == {"a", "b"}, "a heartbeat old at most: not read again yet"
    assert await packing.hosts_with_room(max_age=0.1) == {"b"}, "a fresh view"
    own["calls"] = 200  # its own fields count at once
    assert await packing.hosts_with_room(max_age=0.1) == set()
