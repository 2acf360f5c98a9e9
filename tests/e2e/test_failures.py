"""Failures over the real stack: a media process killed or stopped mid-call, a client that drops out."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
import wave
from pathlib import Path

import pytest

from common.keys import Keys
from tests.audio_util import tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, wait_healthy
from tests.e2e.load import CallLoad, media_pids
from tests.e2e.test_chaos import wait_until

KEYS = Keys()

pytestmark = pytest.mark.e2e


def owner_pid(stack: StackInfo, call_id: str) -> int:
    owner = stack.redis.hget(f"pbx:call:{call_id}", "owner")
    assert owner, "the call has an owner"
    beat = stack.redis.get(KEYS.proc(owner.decode()))
    assert beat
    return int(json.loads(beat)["pid"])


async def test_media_process_killed_mid_call(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(recorder={})
        for _ in range(10):
            await c.ws.send_bytes(tone(300, 0.02).astype("<i2").tobytes())
        pid = owner_pid(stack, call_id)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        err = await c.event("error", sender="worker", timeout=6)
        hangup = await c.event("hangup", timeout=6)
        elapsed = time.monotonic() - t0
        assert elapsed < 5.0, f"client told after {elapsed:.2f}s"
        assert hangup["reason"] == "worker_lost" and hangup["initiator"] == "system"
        assert c.events.index(err) < c.events.index(hangup)
        await c.wait_closed()
        assert stack.redis.exists(f"pbx:call:{call_id}") == 0
        assert call_id.encode() not in stack.redis.zrange("pbx:calls", 0, -1)
    finally:
        await c.close()

    # New calls succeed at once on the remaining process, and the supervisor replaces the dead one.
    for _ in range(4):
        c2 = await CallClient.open(stack.ws, call_id=f"{call_id}-after-{_}")
        try:
            await c2.invite()
            assert owner_pid(stack, c2.call_id) != pid
        finally:
            await c2.close()
    await asyncio.to_thread(wait_healthy, stack, 2, 2, 15.0)


async def test_client_drop_hangs_up_and_closes_recording(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    await c.invite(recorder={})
    for _ in range(25):
        await c.ws.send_bytes(tone(700, 0.02).astype("<i2").tobytes())
        await asyncio.sleep(0.02)
    await c.close()  # drop the socket without a hangup
    deadline = time.monotonic() + 5
    while stack.redis.exists(f"pbx:call:{call_id}") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert stack.redis.exists(f"pbx:call:{call_id}") == 0, "the call left the registry"
    lines = [
        json.loads(x) for x in (stack.recorder_path / f"{call_id}.events.jsonl").read_text().splitlines()
    ]
    last = json.loads(lines[-1]["content"])
    assert (
        last["event"] == "hangup" and last["reason"] == "connection_closed" and last["initiator"] == "caller"
    )
    with wave.open(str(stack.recorder_path / f"{call_id}.wav")) as w:
        assert w.getnchannels() == 2 and w.getnframes() >= 25 * 320


async def test_frontend_killed_mid_call_owner_hangs_up(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(recorder={})
        pid = int(c.frontend.split("-")[-2])
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while stack.redis.exists(f"pbx:call:{call_id}") and time.monotonic() - t0 < 6:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - t0
        assert stack.redis.exists(f"pbx:call:{call_id}") == 0 and elapsed < 5.0, f"{elapsed:.2f}s"
        await c.wait_closed()
    finally:
        await c.close()
    dump = stack.recorder_path / f"{call_id}.events.jsonl"
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and "hangup" not in dump.read_text():
        await asyncio.sleep(0.05)
    last = json.loads(json.loads(dump.read_text().splitlines()[-1])["content"])
    assert last["event"] == "hangup" and last["reason"] == "frontend_lost" and last["initiator"] == "system"
    with wave.open(str(stack.recorder_path / f"{call_id}.wav")) as w:
        assert w.getnchannels() == 2
    await asyncio.to_thread(wait_healthy, stack, 2, 2, 15.0)


def is_media_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"worker.child" in f.read()
    except OSError:
        return False


async def test_media_process_stopped_mid_call_is_replaced(stack: StackInfo, tmp_path: Path) -> None:
    """A media process that stops beating (SIGSTOP: its heartbeat thread stops with it) loses its calls to
    the reapers (`worker_lost`) and is killed and replaced by the supervisor, as one that exits would be."""
    await asyncio.to_thread(wait_healthy, stack, 2, 2, 15.0)
    load = CallLoad(stack.ws, stack.redis_url, tmp_path)
    pid = 0
    try:
        calls = await load.start(3, f"stop-{uuid.uuid4().hex[:6]}")
        before = media_pids(stack.redis_url)
        victim = max(before, key=lambda p: sum(c.owner == p for c in calls))
        hit = [c for c in calls if c.owner == victim]
        pid = before[victim]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        await wait_until(lambda: all(c.closed_at is not None for c in hit), 15.0)
        for c in hit:
            err, hangup = c.first("error", sender="worker"), c.first("hangup")
            assert err is not None and hangup is not None, f"{c.call_id}: {c.names()}"
            assert hangup[1]["reason"] == "worker_lost" and hangup[1]["initiator"] == "system"
        ended = max(c.first("hangup")[0] for c in hit) - t0  # type: ignore[index]
        await wait_until(lambda: not is_media_process(pid), 15.0)
        killed = time.monotonic() - t0
        health = await asyncio.to_thread(wait_healthy, stack, 2, 2, 30.0)
        replaced = time.monotonic() - t0
        after = media_pids(stack.redis_url)
        assert victim not in after and len(after) == 2 and pid not in after.values()
        assert len(set(after) - set(before)) == 1, "one new media process"
        print(f"SIGSTOP: {len(hit)} calls ended after {ended:.2f} s, process killed by {killed:.2f} s,",
              f"a warm replacement by {replaced:.2f} s: {health}")  # fmt: skip
    finally:
        # Never leave a stopped process behind (the supervisor replaces it once it exits).
        if pid and is_media_process(pid):
            os.kill(pid, signal.SIGKILL)
        await load.close()
    c2 = await CallClient.open(stack.ws, call_id=f"stop-after-{uuid.uuid4().hex[:6]}")
    try:
        await c2.invite()
        assert owner_pid(stack, c2.call_id) != pid
    finally:
        await c2.close()
