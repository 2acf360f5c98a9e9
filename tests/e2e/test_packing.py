"""Packing (worker/packing.py) on a real stack: new calls land on one media process until it holds
PACK_CALLS, then on the next; a call that only a process other than the target reads is still set up fast."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest

from common.keys import Keys
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.load import media_pids

KEYS = Keys()

pytestmark = [pytest.mark.e2e, pytest.mark.alone]

PACK = 3
# Seconds for a change to reach every media process's view: its heartbeat is written (at once when it fills
# up, else within 0.8 s) and the others read the heartbeats again within 0.8 s; a target that filled up
# blocks on for HANDOVER (1.6 s) after it last read as the target.
VIEW = 2.5
# A call set up by a process that polls waits up to PACK_POLL_MS (50) for it: well under this (s).
SETUP_BOUND = 1.0


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with running_stack(tmp_path_factory.mktemp("packing"), 2, 1, PACK_CALLS=str(PACK)) as info:
        yield info


def beats(info: StackInfo) -> dict[str, dict[str, object]]:
    out = {}
    for key in info.redis.scan_iter(match=KEYS.proc_pattern("media-*")):
        raw = info.redis.get(key)
        if raw:
            beat = json.loads(raw)
            out[str(beat["proc"])] = beat
    return out


async def settled(info: StackInfo) -> list[str]:
    """Once no call is left and every media process has seen so: the media processes' ids, in order."""
    deadline = time.monotonic() + 10
    while info.redis.zcard("pbx:calls") or any(b["calls"] for b in beats(info).values()):
        assert time.monotonic() < deadline, beats(info)
        await asyncio.sleep(0.1)
    await asyncio.sleep(VIEW)
    return sorted(media_pids(info.redis_url))


async def answered(info: StackInfo, call_id: str) -> tuple[CallClient, float]:
    """A call set up (answered), and the seconds from opening its socket to its `answer`."""
    t0 = time.monotonic()
    c = await CallClient.open(info.ws, call_id=call_id, dump="false")
    try:
        await c.invite()
    except BaseException:
        await c.close()
        raise
    return c, time.monotonic() - t0


def owners(info: StackInfo, calls: list[CallClient]) -> list[str]:
    return [(info.redis.hget(f"pbx:call:{c.call_id}", "owner") or b"").decode() for c in calls]


async def test_calls_pack_onto_one_media_process_until_pack_calls(packed: StackInfo) -> None:
    first, second = await settled(packed)
    calls: list[CallClient] = []
    try:
        for i in range(PACK):
            calls.append((await answered(packed, f"pack-{i}"))[0])
        assert owners(packed, calls) == [first] * PACK, "the first calls all land on the lowest proc id"
        deadline = time.monotonic() + 5
        while beats(packed)[first]["calls"] != PACK:
            assert time.monotonic() < deadline, beats(packed)
            await asyncio.sleep(0.05)
        await asyncio.sleep(VIEW)
        more = []
        for i in range(2):
            c, took = await answered(packed, f"pack-{PACK + i}")
            more.append(c)
            assert took < SETUP_BOUND, took
        calls += more
        assert owners(packed, more) == [second] * 2, "once the first holds PACK_CALLS, the next calls go on"
    finally:
        for c in calls:
            await c.close()


async def test_a_process_that_is_not_the_target_sets_calls_up_fast(packed: StackInfo) -> None:
    """A target that announces room but never reads (a heartbeat written by the test): both real media
    processes poll, and every call is claimed by one of them within a poll, not after the claim timeout."""
    procs = await settled(packed)
    stop = asyncio.Event()

    async def ghost() -> None:
        while not stop.is_set():
            now = int(time.time() * 1000)
            # (On the stack's host: each host packs on its own.)
            beat = {"role": "media", "proc": "media-0", "host": socket.gethostname(), "pid": 0, "warm": True,
                    "calls": 0, "capacity": 200,
                    "max_calls": 200, "load": {"pressure": 0.0, "admitting": True, "claiming": True},
                    "beat_at": now, "loop_at": now}  # fmt: skip
            packed.redis.set(KEYS.proc("media-0"), json.dumps(beat), px=3000)
            await asyncio.sleep(0.3)

    keeper = asyncio.create_task(ghost())
    calls: list[CallClient] = []
    setups: list[float] = []
    try:
        assert "media-0" < min(procs), "the ghost has the lowest proc id: it is the target"
        await asyncio.sleep(VIEW)
        for i in range(4):
            c, took = await answered(packed, f"polled-{i}")
            calls.append(c)
            setups.append(took)
        assert set(owners(packed, calls)) <= set(procs)
        shown = ", ".join(f"{s * 1000:.0f}" for s in setups)
        print(f"packing: calls set up by processes that poll in {shown} ms")
        assert max(setups) < SETUP_BOUND, setups
    finally:
        stop.set()
        await keeper
        packed.redis.delete(KEYS.proc("media-0"))
        for c in calls:
            await c.close()
