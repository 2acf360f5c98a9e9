"""Stopping: SIGTERM drains the media pool; Ctrl-C on the run command stops every process cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import aiohttp
import psutil
import pytest

from common.embedded import EmbeddedRedis, free_port
from scripts.stack import ROOT, Stack
from tests.audio_util import tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import stack_env
from tests.e2e.test_playback import write_wav

pytestmark = pytest.mark.e2e


def wait_for(url: str, key: str, value: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if json.loads(resp.read()).get(key) == value:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never had {key}={value}")


async def wait_capacity_zero(url: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url) as resp:
                if (await resp.json()).get("capacity") == 0:
                    return
            assert time.monotonic() < deadline, "the draining media process still announces capacity"
            await asyncio.sleep(0.1)


async def test_sigterm_drains_media_pool(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "long.wav", tone(440, 20.0))
    with EmbeddedRedis() as server:
        port = free_port()
        env = stack_env(
            tmp_path,
            port,
            server.url,
            WEB_CONCURRENCY="1",
            WORKER_PROCESSES="1",
            DRAIN_TIMEOUT="2",
            PBX_CLAIM_TIMEOUT="2",
        )
        stack = Stack(env, quiet=True).start()
        clients: list[CallClient] = []
        try:
            wait_for(f"http://127.0.0.1:{port}/health", "media_processes", 1)
            c = await CallClient.open(f"ws://127.0.0.1:{port}", call_id="drain-1")
            clients = [c]
            await c.invite(recorder={})
            await c.send({"command": "play", "url": str(wav)})
            await c.event("trackStart", trackId="server-side-track")
            assert stack.worker is not None
            t0 = time.monotonic()
            stack.worker.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            # A draining process announces capacity 0 in its next heartbeat; from then on a new call is
            # refused at once.
            await wait_capacity_zero(f"http://127.0.0.1:{port}/health")
            late = await CallClient.open(f"ws://127.0.0.1:{port}", call_id="drain-2")
            clients.append(late)
            n = len(c.frames)
            await asyncio.sleep(0.5)
            assert len(c.frames) > n + 15, "the live call keeps its audio while draining"
            hangup = await c.event("hangup", timeout=6)
            elapsed = time.monotonic() - t0
            assert hangup["reason"] == "shutdown" and 1.8 <= elapsed <= 5.0, elapsed
            err = await late.event("error", timeout=1)
            assert err["sender"] == "worker" and err["code"] == 503
            assert (await late.event("hangup"))["reason"] == "no_capacity"
            assert stack.worker.wait(10) == 0
            with wave.open(str(tmp_path / "rec" / "drain-1.wav")) as w:
                assert w.getnframes() >= 16000 * 2
            last = (tmp_path / "rec" / "drain-1.events.jsonl").read_text().splitlines()[-1]
            assert json.loads(json.loads(last)["content"])["event"] == "hangup"
        finally:
            for client in clients:
                await client.close()
            stack.stop()


def test_ctrl_c_stops_the_whole_stack(tmp_path: Path) -> None:
    port = free_port()
    env = stack_env(tmp_path, port, None, WEB_CONCURRENCY="2", WORKER_PROCESSES="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.stack"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", "media_processes", 2)
        family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) >= 7, (
            "launcher, redis, gunicorn master + 2 workers, supervisor + 2 media processes"
        )
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in family
        ):
            time.sleep(0.1)
        left = [
            p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        assert left == [], f"processes still running after Ctrl-C: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
