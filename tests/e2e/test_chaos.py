"""Faults under load: 120 live calls while a media process or a frontend is killed, or Redis restarts."""

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
import redis

from common.embedded import EmbeddedRedis, free_port
from scripts.stack import Stack
from tests.audio_util import rms
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack, stack_env, wait_healthy
from tests.e2e.load import CallLoad, gap_report, media_pids
from tests.e2e.sip_peer import sip_peer
from tests.e2e.test_redis_outage import UPGRADE
from tests.e2e.test_sip_calls import dial

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.alone]

# PBX_CHAOS_CALLS=200 for the figures in docs/operations.md. More than twice PACK_CALLS (50, the default the
# stack runs with): packing fills one media process, then the other, so both carry calls when one is killed.
CALLS = int(os.environ.get("PBX_CHAOS_CALLS", "120"))
# What the other calls may lose: no silence longer than this around the fault.
MAX_GAP_MS = 100.0


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with running_stack(tmp_path_factory.mktemp("chaos"), 2, 2, MAX_CALLS="200") as info:
        yield info


async def wait_until(check: object, timeout: float, step: float = 0.05) -> float:
    """Seconds until `check()` is true; fails after `timeout`."""
    t0 = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - t0


@pytest.mark.timeout(180)
async def test_media_process_killed_under_load(chaos: StackInfo, tmp_path: Path) -> None:
    load = CallLoad(chaos.ws, chaos.redis_url, tmp_path)
    try:
        calls = await load.start(CALLS, "k9")
        pids = media_pids(chaos.redis_url)
        assert len(pids) == 2
        victim = max(pids, key=lambda p: sum(c.owner == p for c in calls))
        hit = [c for c in calls if c.owner == victim]
        spared = [c for c in calls if c.owner != victim]
        assert hit and spared, "both media processes carry calls"
        await asyncio.sleep(1.0)
        t_kill = time.monotonic()
        os.kill(pids[victim], signal.SIGKILL)
        await wait_until(lambda: all(c.closed_at is not None for c in hit), 6.0)
        for c in hit:
            err, hangup = c.first("error", sender="worker"), c.first("hangup")
            assert err is not None and hangup is not None, f"{c.call_id}: {c.names()}"
            assert hangup[1]["reason"] == "worker_lost" and hangup[1]["initiator"] == "system"
            assert err[0] <= hangup[0] and hangup[0] - t_kill < 5.0, f"{c.call_id} after {hangup[0] - t_kill}"
        # The others go on, without a gap, while the victim's calls are cleaned up and it is replaced.
        await asyncio.sleep(4.0)
        median, longest = gap_report(spared, t_kill - 1.0, t_kill + 4.0)
        ended = sorted(c.first("hangup")[0] - t_kill for c in hit)  # type: ignore[index]
        print(
            f"media kill: {len(hit)} calls got error + hangup after {ended[len(ended) // 2]:.2f} s (median),",
            f"{ended[-1]:.2f} s (last); the other {len(spared)} calls' longest gaps:",
            f"median {median:.0f} ms, max {longest:.0f} ms",
        )
        assert longest <= MAX_GAP_MS, f"a spared call went silent for {longest:.0f} ms"
        assert all(c.closed_at is None and c.first("hangup") is None for c in spared)
        assert load.listed() == {c.call_id for c in spared}, "no zombie in the registry"
        health = await asyncio.to_thread(wait_healthy, chaos, 2, 2, 20.0)
        new = media_pids(chaos.redis_url)
        print(f"media kill: replacement media process up {time.monotonic() - t_kill:.1f} s after the kill")
        assert victim not in new and len(new) == 2, health
    finally:
        await load.close()


@pytest.mark.timeout(180)
async def test_frontend_killed_under_load(chaos: StackInfo, tmp_path: Path) -> None:
    load = CallLoad(chaos.ws, chaos.redis_url, tmp_path)
    async with sip_peer() as peer:
        try:
            # SIP calls first: the victim is the frontend holding the first one, and it holds two.
            sip: list[CallClient] = []
            while sum(c.frontend == sip[0].frontend for c in sip) < 2 if sip else True:
                c = await dial(chaos, peer.uri, f"ksip-{len(sip)}")
                await c.event("answer", timeout=10)
                sip.append(c)
            victim = sip[0].frontend
            victim_legs = [peer.legs[i][1] for i, c in enumerate(sip) if c.frontend == victim]
            calls = await load.start(CALLS, "kweb")
            hit = [c for c in calls if c.frontend == victim]
            spared = [c for c in calls if c.frontend != victim]
            assert hit and spared, "both frontends carry calls"
            await asyncio.sleep(1.0)
            t_kill = time.monotonic()
            os.kill(int(victim.split("-")[-2]), signal.SIGKILL)
            gone = {c.call_id for c in hit} | {c.call_id for c in sip if c.frontend == victim}
            took = await wait_until(lambda: not (gone & load.listed()), 5.0)
            for phone in victim_legs:
                assert await phone.wait("ended", timeout=max(0.1, 5.0 - (time.monotonic() - t_kill))) == "bye"
            bye_after = time.monotonic() - t_kill
            await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - t_kill)))
            median, longest = gap_report(spared, t_kill - 1.0, t_kill + 4.0)
            print(
                f"frontend kill: {len(gone)} calls gone from the registry in {took:.2f} s,",
                f"SIP legs got BYE within {bye_after:.2f} s; the other {len(spared)} calls' longest gaps:",
                f"median {median:.0f} ms, max {longest:.0f} ms",
            )
            assert longest <= MAX_GAP_MS, f"a call on the other frontend went silent for {longest:.0f} ms"
            assert all(c.closed_at is None and c.first("hangup") is None for c in spared)
            for c in sip:
                if c.frontend != victim:
                    assert not c.closed.is_set() and "hangup" not in c.names()
            await asyncio.to_thread(wait_healthy, chaos, 2, 2, 20.0)
        finally:
            await load.close()
            for c in sip:
                await c.close()


@pytest.mark.timeout(180)
async def test_redis_restart_under_load(tmp_path: Path) -> None:
    server = EmbeddedRedis().start()
    port = free_port()
    env = stack_env(tmp_path, port, server.url, WEB_CONCURRENCY="2", WORKER_PROCESSES="2", MAX_CALLS="200")
    stack = Stack(env, quiet=os.environ.get("PBX_TEST_LOGS") != "1").start()
    info = StackInfo(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", server.url, tmp_path / "rec",
                     tmp_path / "cache", redis.Redis.from_url(server.url), int(env["SIP_PORT"]))  # fmt: skip
    load = CallLoad(info.ws, server.url, tmp_path)
    try:
        await asyncio.to_thread(wait_healthy, info, 2, 2)
        async with sip_peer() as peer:
            phone_call = await dial(info, peer.uri, "rr-sip")
            try:
                await phone_call.event("answer", timeout=10)
                _, phone = await peer.leg()
                await phone_call.send({"command": "play", "url": str(load.wav)})
                await phone_call.event("trackStart", trackId="server-side-track")
                calls = await load.start(CALLS, "rr")
                everyone = {c.call_id for c in calls} | {"rr-sip"}
                assert load.listed() == everyone
                before = phone.heard().size
                await asyncio.sleep(1.0)
                rate = phone.heard().size - before  # samples per second the SIP phone hears
                assert rate > 0

                server.stop()
                t_down = time.monotonic()
                heard_at_stop = phone.heard().size
                async with aiohttp.ClientSession() as s:
                    async with s.get(f"{info.base}/call", params={"id": "rr-new"}, headers=UPGRADE) as resp:
                        assert resp.status == 503 and (await resp.json())["code"] == "SERVICE_UNAVAILABLE"
                await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - t_down)))
                # The SIP call's media is the owner's own: it kept playing all along.
                outage = time.monotonic() - t_down
                during = phone.heard()[heard_at_stop:]
                assert during.size >= 0.9 * rate * outage
                frame = rate // 50
                loud = [rms(during[i : i + frame]) > 1000 for i in range(0, during.size - frame + 1, frame)]
                assert sum(loud) >= 0.95 * len(loud), "the tone went on playing to the SIP phone"
                # The WebSocket calls' audio crosses the frontends' direct links to the media processes
                # (common/peerlink.py), not Redis: it went on too.
                quiet = [
                    c.call_id for c in calls if not any(t_down + 1 < t < t_down + outage for t in c.arrivals)
                ]
                assert not quiet, f"calls that heard nothing while Redis was down: {quiet}"

                server = EmbeddedRedis(server.port).start()  # back, and empty
                t_up = time.monotonic()
                took = await wait_until(lambda: load.listed() == everyone, 10.0, step=0.1)
                # Signalling resumes: commands reach their owners, events come back, audio flows again.
                probe = calls[::10]
                for c in probe:
                    await c.ws.send_str(json.dumps({"command": "history", "speaker": "u", "text": "back"}))
                await wait_until(lambda: all(c.first("addHistory") for c in probe), 5.0)
                resumed = await wait_until(lambda: all(c.arrivals[-1] > t_up for c in calls), 5.0)
                await wait_until(lambda: all(c.arrivals[-1] > t_up + 1.0 for c in calls), 5.0)
                print(
                    f"redis restart: {outage:.1f} s outage; registry rebuilt {took:.2f} s after it was back",
                    f"({len(everyone)} calls); audio to every WebSocket client again after {resumed:.2f} s",
                )
                assert all(c.closed_at is None and c.first("hangup") is None for c in calls)
                assert "hangup" not in phone_call.names() and not phone_call.closed.is_set()
                # The rebuilt entries know their owners: a kill from REST works.
                async with aiohttp.ClientSession() as s:
                    async with s.post(f"{info.base}/call/kill/{calls[0].call_id}") as resp:
                        assert resp.status == 200
                await wait_until(lambda: calls[0].first("hangup") is not None, 5.0)
                fresh = await CallClient.open(info.ws, call_id="rr-after")
                try:
                    await fresh.invite()
                finally:
                    await fresh.close()
                assert stack.alive(), "no process exited"
            finally:
                await phone_call.close()
    finally:
        await load.close()
        stack.stop()
        info.redis.close()
        server.stop()
