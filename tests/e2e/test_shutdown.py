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

pytestmark = [pytest.mark.e2e, pytest.mark.alone]


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


# Seconds from Ctrl-C until every process of the stack is gone (issue 17: it took 11 s, killing each media
# process after a 10 s wait).
STOP_S = 2.0


def launch(tmp_path: Path, port: int, redis_url: str | None, **settings: str) -> subprocess.Popen[bytes]:
    """`python -m scripts.stack` (what ./scripts/serve runs), its output in tmp_path/out.log."""
    env = stack_env(tmp_path, port, redis_url, WEB_CONCURRENCY="2", WORKER_PROCESSES="2", **settings)
    with (tmp_path / "out.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "scripts.stack"],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def running(pids: list[int]) -> list[int]:
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def stopped_within(pids: list[int], limit: float) -> float:
    """Seconds until none of `pids` runs any more (fails past `limit`)."""
    began = time.monotonic()
    while running(pids) and time.monotonic() - began < limit + 10:
        time.sleep(0.02)
    took = time.monotonic() - began
    assert not running(pids), f"processes still running {took:.1f} s after Ctrl-C: {running(pids)}"
    assert took <= limit, f"the stack took {took:.2f} s to stop"
    return took


def error_lines(log: Path) -> list[str]:
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "ERROR" in line or "Traceback" in line
    ]


async def test_ctrl_c_stops_the_whole_stack(tmp_path: Path) -> None:
    port = free_port()
    proc = launch(tmp_path, port, None)
    c: CallClient | None = None
    try:
        await asyncio.to_thread(wait_for, f"http://127.0.0.1:{port}/health", "media_warm", 2)
        family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) >= 7, (
            "launcher, redis, gunicorn master + 2 workers, supervisor + 2 media processes"
        )
        c = await CallClient.open(f"ws://127.0.0.1:{port}", call_id="ctrl-c")
        await c.invite()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        hangup = await c.event("hangup", timeout=STOP_S)
        assert hangup["reason"] == "shutdown" and hangup["initiator"] == "system"
        await asyncio.to_thread(stopped_within, family, STOP_S)
        assert proc.wait(1) == 0
        assert error_lines(tmp_path / "out.log") == []
    finally:
        if c is not None:
            await c.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ctrl_c_while_the_models_load_stops_at_once(tmp_path: Path) -> None:
    # A model load (here a 10 s one, as on a busy machine) cannot be interrupted: the process must not wait
    # for it on its way out. SIGINT goes to every process of the stack at once, as a process manager or a
    # terminal does when they share its process group.
    with EmbeddedRedis() as server:
        port = free_port()
        proc = launch(tmp_path, port, server.url, PBX_TEST_WARMUP_SECONDS="10")
        try:
            wait_for(f"http://127.0.0.1:{port}/health", "media_processes", 2)
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
            assert health["media_warm"] == 0, health
            family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
            for pid in family:
                os.kill(pid, signal.SIGINT)
            stopped_within(family, STOP_S)
            assert proc.wait(1) == 0
            assert error_lines(tmp_path / "out.log") == []
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
