"""Graceful drain: SIGTERM to gunicorn or to a media process lets calls finish, then hangs up the rest."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from common.keys import Keys
from tests.audio_util import tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack, wait_healthy
from tests.e2e.load import media_pids
from tests.e2e.test_playback import write_wav

KEYS = Keys()

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.alone]

DRAIN = 3.0


@pytest.fixture
def drained(tmp_path: Path) -> Iterator[tuple[StackInfo, Path]]:
    with running_stack(tmp_path, 1, 2, DRAIN_TIMEOUT=str(DRAIN)) as info:
        yield info, tmp_path


async def playing(info: StackInfo, call_id: str, wav: Path, **play: object) -> CallClient:
    c = await CallClient.open(info.ws, call_id=call_id)
    await c.invite(recorder={})
    await c.send({"command": "play", "url": str(wav), **play})
    await c.event("trackStart", trackId="server-side-track")
    return c


@pytest.mark.timeout(90)
async def test_sigterm_to_gunicorn_drains_then_hangs_up(drained: tuple[StackInfo, Path]) -> None:
    info, root = drained
    long_wav = write_wav(root / "long.wav", tone(440, 60.0))
    short_wav = write_wav(root / "short.wav", tone(440, 1.0))
    long = await playing(info, "dr-long", long_wav)
    short = await playing(info, "dr-short", short_wav, autoHangup=True)
    try:
        web_pid = gunicorn_master(info)
        t0 = time.monotonic()
        os.kill(web_pid, signal.SIGTERM)
        # The call that ends by itself ends as it would have.
        hangup = await short.event("hangup", timeout=5)
        assert hangup["reason"] == "autohangup"
        # New calls are not taken any more: the listener is closed.
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as s:
            with pytest.raises((aiohttp.ClientError, OSError)):
                await s.ws_connect(f"{info.ws}/call", params={"id": "dr-late"})
        n = len(long.frames)
        await asyncio.sleep(0.5)
        assert len(long.frames) > n + 15, "the live call keeps its audio while draining"
        hangup = await long.event("hangup", timeout=DRAIN + 5)
        elapsed = time.monotonic() - t0
        assert hangup["reason"] == "shutdown" and hangup["initiator"] == "system"
        assert DRAIN - 0.2 <= elapsed <= DRAIN + 3, elapsed
        await long.wait_closed()
        assert long.names()[-2:] == ["trackEnd", "hangup"]
        last = (root / "rec" / "dr-long.events.jsonl").read_text().splitlines()[-1]
        assert json.loads(json.loads(last)["content"])["reason"] == "shutdown", "dump complete"
        assert info.redis.zcard("pbx:calls") == 0
    finally:
        await long.close()
        await short.close()


@pytest.mark.timeout(90)
async def test_sigterm_to_one_frontend_spares_the_other(drained: tuple[StackInfo, Path]) -> None:
    info, root = drained
    wav = write_wav(root / "long.wav", tone(440, 60.0))
    # The frontends share gunicorn's listening socket and whichever is woken first accepts, so nothing spreads
    # the calls evenly: six calls all landed on one now and then. Calls are opened until both hold some.
    calls = [await playing(info, f"dr1-{i}", wav) for i in range(6)]
    try:
        while len({c.frontend for c in calls}) < 2 and len(calls) < 30:
            calls.append(await playing(info, f"dr1-{len(calls)}", wav))
        assert len({c.frontend for c in calls}) == 2, "the calls landed on both frontends"
        victim = calls[0].frontend
        os.kill(int(victim.split("-")[-2]), signal.SIGTERM)
        for c in calls:
            if c.frontend == victim:
                assert (await c.event("hangup", timeout=DRAIN + 5))["reason"] == "shutdown"
        for c in calls:
            if c.frontend != victim:
                assert "hangup" not in c.names() and not c.closed.is_set()
                n = len(c.frames)
                await asyncio.sleep(0.2)
                assert len(c.frames) > n
        await asyncio.to_thread(wait_healthy, info, 1, 2, 20.0)
    finally:
        for c in calls:
            await c.close()


def gunicorn_master(info: StackInfo) -> int:
    """The pid of gunicorn's arbiter: the parent of the frontend processes."""
    import psutil

    beat = next(info.redis.scan_iter(match=KEYS.proc_pattern("web-*")))
    pid = int(beat.decode().rsplit(":", 1)[1].split("-")[-2])
    return int(psutil.Process(pid).ppid())


@pytest.mark.timeout(120)
async def test_rolling_restart_of_media_processes_loses_no_call(tmp_path: Path) -> None:
    with running_stack(tmp_path, 2, 1, DRAIN_TIMEOUT="8") as info:
        wav = write_wav(tmp_path / "two.wav", tone(440, 2.0))
        endings: dict[str, str] = {}

        async def one_call(call_id: str) -> None:
            c = await CallClient.open(info.ws, call_id=call_id)
            try:
                await c.invite()
                await c.send({"command": "play", "url": str(wav), "autoHangup": True})
                endings[call_id] = str((await c.event("hangup", timeout=20))["reason"])
            except AssertionError as exc:
                endings[call_id] = f"failed: {exc}"
            finally:
                await c.close()

        stop = asyncio.Event()

        async def churn() -> list[asyncio.Task[None]]:
            tasks = []
            while not stop.is_set():
                tasks.append(asyncio.create_task(one_call(f"roll-{len(tasks)}")))
                await asyncio.sleep(0.1)
            return tasks

        churning = asyncio.create_task(churn())
        await asyncio.sleep(2.0)
        for victim, pid in media_pids(info.redis_url).items():
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while (
                victim in (now := media_pids(info.redis_url)) or len(now) < 2
            ) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert victim not in now and len(now) == 2, f"{victim} was not replaced: {now}"
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*await churning)
        lost = {k: v for k, v in endings.items() if v != "autohangup"}
        print(f"rolling restart: {len(endings)} calls, {len(lost)} not ending by themselves")
        assert len(endings) > 50 and not lost, lost
