"""Failures over the real stack: a media process killed mid-call, a client that drops its socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import wave

import pytest

from tests.audio_util import tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, wait_healthy

pytestmark = pytest.mark.e2e


def owner_pid(stack: StackInfo, call_id: str) -> int:
    owner = stack.redis.hget(f"pbx:call:{call_id}", "owner")
    assert owner, "the call has an owner"
    beat = stack.redis.get(f"pbx:proc:{owner.decode()}")
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
