"""The failover scenario shared by the Redis Cluster and Sentinel tests: what a stack must do when the Redis
primary holding its dispatch stream dies under calls."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from scripts.stack import Stack
from tests.audio_util import tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, wait_healthy
from tests.e2e.test_playback import write_wav

# New calls answered again, and the list whole, within this long after the kill (the bound).
RECOVERY = 15.0


def stack_pids(stack: Stack) -> set[int]:
    """Every process of the stack: gunicorn's master and frontends, the supervisor and its media processes."""
    pids = set()
    for top in (stack.web, stack.worker):
        assert top is not None
        pids.add(top.pid)
        pids |= {c.pid for c in psutil.Process(top.pid).children(recursive=True)}
    return pids


async def listed(base: str) -> set[str]:
    async with aiohttp.ClientSession() as s, s.get(f"{base}/call/lists") as resp:
        assert resp.status == 200, await resp.text()
        return {c["id"] for c in (await resp.json())["calls"]}


def heard(c: CallClient, since: float = 0.0) -> np.ndarray:
    return np.frombuffer(b"".join(f for t, f in c.frames if t >= since), dtype="<i2")


def going_on(calls: list[CallClient], killed_at: float) -> set[str]:
    """The calls that go on with audio (the last 2 s heard), asserting that every other one ended with an
    error and a hangup: none went silent. Prints how many went on and the longest gap in their audio."""
    check_from = time.monotonic() - 2.0
    live = set()
    for c in calls:
        if c.closed.is_set():
            names = c.names()
            assert "hangup" in names and "error" in names, (c.call_id, c.events[-3:])
        else:
            assert len(heard(c, check_from)) >= 16000 * 1.5, f"{c.call_id} went silent"
            live.add(c.call_id)
    gaps = [max(np.diff([t for t, _ in c.frames if t > killed_at - 1]), default=0.0) for c in calls]
    print(f"calls going on {len(live)} of {len(calls)}; longest audio gap {max(gaps) * 1000:.0f} ms")
    return live


async def answered_within(ws: str, since: float, wav: Path, calls: list[CallClient]) -> float:
    """Tries a new call on the frontends at `ws` until one is answered (refused with 503 meanwhile, while
    Redis fails over), then plays `wav` on it; seconds after `since`. The call joins `calls`."""
    while time.monotonic() - since < RECOVERY + 5:
        try:
            c = await CallClient.open(ws, call_id=f"new.{uuid.uuid4()}")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 503, "while Redis is failing over, the refusal says so"
            await asyncio.sleep(0.5)
            continue
        try:
            await c.invite()
        except AssertionError:
            await c.close()
            await asyncio.sleep(0.5)
            continue
        calls.append(c)
        await c.send({"command": "play", "url": str(wav), "playId": "long"})
        return time.monotonic() - since
    raise AssertionError(f"no call answered at {ws} within {RECOVERY + 5} s")


async def playing(calls: list[CallClient], wav: Path) -> None:
    """Every call invited and playing `wav`, heard a second later."""
    for c in calls:
        await c.invite()
        await c.send({"command": "play", "url": str(wav), "playId": "long"})
    await asyncio.sleep(1.0)
    assert all(len(heard(c)) > 0 for c in calls)


async def survive_failover(info: StackInfo, stack: Stack, tmp_path: Path, kill: Callable[[], None]) -> None:
    """6 calls playing a long tone; `kill()` (the primary dies); then: no process of the stack exits, new
    calls are refused with 503 until they are answered again within RECOVERY seconds, `/call/lists` is whole
    again, and each call either goes on with audio or ended with an error and a hangup, none goes silent.
    Last, a media process started after the kill (its supervisor replaces a killed one) joins and is warm."""
    wav = write_wav(tmp_path / "tone.wav", tone(440, 30.0))
    pids = stack_pids(stack)
    calls = [await CallClient.open(info.ws, call_id=f"fo-{i}") for i in range(6)]
    try:
        await playing(calls, wav)
        killed_at = time.monotonic()
        kill()

        took = await answered_within(info.ws, killed_at, wav, calls)
        print(f"first new call answered {took:.1f} s after the kill")
        assert took < RECOVERY, "a new call within 15 s"

        await asyncio.sleep(max(0.0, killed_at + RECOVERY - time.monotonic()))
        live = going_on(calls, killed_at)
        assert live, "some calls went on"
        assert await listed(info.base) == live, "the list is whole again"
        assert stack_pids(stack) == pids, "no process of the stack exited"

        # A media process started now (the dead primary is gone for good) joins and takes calls.
        assert stack.worker is not None
        media = psutil.Process(stack.worker.pid).children()[0]
        media.kill()
        media.wait(5)
        deadline = time.monotonic() + 20
        procs: set[int] = set()
        while time.monotonic() < deadline:
            procs = {c.pid for c in psutil.Process(stack.worker.pid).children()}
            if media.pid not in procs and len(procs) == 2:
                break
            await asyncio.sleep(0.2)
        assert media.pid not in procs and len(procs) == 2, "the supervisor replaced it"
        # Its heartbeat is gone (the supervisor's tombstone), the new one's comes once it is warm.
        await asyncio.sleep(1.0)
        await asyncio.to_thread(wait_healthy, info, 2, 2, 45.0)
        for i in range(4):  # packing puts new calls on one process: enough of them to reach both
            c = await CallClient.open(info.ws, call_id=f"after-{i}")
            calls.append(c)
            await c.invite()
    finally:
        for c in calls:
            await c.close()
