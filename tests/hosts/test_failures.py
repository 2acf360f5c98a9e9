"""A host lost or restarted: `kill -9` of every process of host B under calls that cross the hosts both ways,
and a rolling restart of host B (SIGTERM, drain, start again) while host A takes the new calls. Each test
leaves host B running again."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from tests.audio_util import tone
from tests.e2e.client import CallClient
from tests.e2e.test_playback import write_wav
from tests.hosts.cluster import Cluster, ClusterHost
from tests.hosts.conftest import MAX_CALLS, hosts_root
from tests.hosts.test_calls import listed, new_id, wait_owner

pytestmark = [pytest.mark.e2e, pytest.mark.alone]

# A frontend admits new calls against its share of the room it read last (half of it, with two frontends),
# read again every 0.25 s (frontend/limits.py): with MAX_CALLS 4, a third call within one read would be
# refused. The tests fill hosts one call at a time, a read apart.
FRONTEND_VIEW = 0.3


async def place(cluster: Cluster, host: ClusterHost, on: ClusterHost) -> CallClient:
    """A call on `host`'s frontend, which must land on a media process of `on`."""
    c = await CallClient.open(host.ws, call_id=new_id())
    owner = await wait_owner(cluster, c.call_id)
    assert owner in cluster.media_of(on), f"a call on {host.name}'s frontend went to {owner}, not {on.name}"
    await c.invite(codec="pcmu")
    await asyncio.sleep(FRONTEND_VIEW)
    return c


def dumped_hangup(host: ClusterHost, call_id: str) -> dict[str, object]:
    """The `hangup` event of a call's dump, on the host of its media process."""
    lines = (Path(host.env["RECORDER_PATH"]) / f"{call_id}.events.jsonl").read_text().splitlines()
    events = [json.loads(json.loads(line)["content"]) for line in lines]
    return next(e for e in events if e.get("event") == "hangup")


async def gone_from_lists(host: ClusterHost, ids: set[str], since: float, timeout: float) -> float:
    """Seconds from `since` (monotonic) until none of `ids` is in `host`'s `/call/lists`."""
    while time.monotonic() - since < timeout:
        if not ids & set(await listed(host)):
            return time.monotonic() - since
        await asyncio.sleep(0.1)
    raise AssertionError(f"still listed {timeout}s on: {ids & set(await listed(host))}")


@pytest.mark.timeout(120)
async def test_kill_9_of_every_process_of_host_b(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    fillers: list[CallClient] = []
    others: list[CallClient] = []
    try:
        # A's media process full; the next call on A goes to B (A's frontend, B's media: `x`).
        for _ in range(MAX_CALLS):
            fillers.append(await place(cluster, a, a))
        await asyncio.sleep(1.0)
        x = await place(cluster, a, b)
        # Room for one more on A again; B's media process filled by calls on B; the next call on B goes to
        # A (B's frontend, A's media: `y`).
        await fillers.pop().close()
        for _ in range(MAX_CALLS - 1):
            others.append(await place(cluster, b, b))
        await asyncio.sleep(1.0)
        y = await place(cluster, b, a)
        others += [x, y]
        on_b = {c.call_id for c in others if c is not y and c is not x}

        killed_at = time.monotonic()
        pids = b.host.kill_all(signal.SIGKILL)
        assert len(pids) >= 4, f"gunicorn, its frontend, the supervisor and a media process: {pids}"
        # x's client (on A's frontend) hears that its media process is gone.
        hangup = await x.event("hangup", timeout=6)
        x_ended = time.monotonic() - killed_at
        assert hangup["reason"] == "worker_lost" and hangup["initiator"] == "system"
        await x.wait_closed(2)
        # y's socket went with B's frontend; its owner on A hangs it up as frontend_lost.
        await y.wait_closed(2)
        listed_gone = await gone_from_lists(a, {y.call_id, x.call_id, *on_b}, killed_at, timeout=8)
        y_hangup = dumped_hangup(a, y.call_id)
        assert y_hangup["reason"] == "frontend_lost", y_hangup
        print(f"kill -9 of host B: worker_lost on A's client {x_ended:.2f} s after, every call of B out of "
              f"/call/lists {listed_gone:.2f} s after")  # fmt: skip
        assert x_ended < 5.0
        # (Its owner notices y's frontend gone at its next heartbeat after the grace: up to ~0.8 s later.)
        assert listed_gone < 6.0
        # A keeps serving: its calls go on, a new call works, and only A's calls are listed.
        assert {c.call_id for c in fillers} == set(await listed(a))
        assert not any(c.closed.is_set() for c in fillers)
        # (Once A's frontend has read that y's call is over: it reads the heartbeats every 0.25 s.)
        await asyncio.sleep(1.0)
        fresh = await place(cluster, a, a)
        fillers.append(fresh)
        await fresh.send({"command": "hangup"})
        await fresh.event("hangup")
    finally:
        for c in fillers + others:
            await c.close()
        b.restart()
        cluster.wait_healthy()


@pytest.mark.timeout(120)
async def test_rolling_restart_of_host_b_while_host_a_takes_the_new_calls(cluster: Cluster) -> None:
    """docs/operations.md: SIGTERM to a host's `worker` and `web`; its calls go on until they end (within
    DRAIN_TIMEOUT, 5 s here), no new call goes to it, the other host takes them; then it starts again."""
    a, b = cluster.a, cluster.b
    wav = write_wav(hosts_root(cluster) / "two-seconds.wav", tone(440, 2.0))
    running: list[CallClient] = []
    new: list[CallClient] = []
    try:
        for _ in range(2):
            c = await place(cluster, b, b)
            await c.send({"command": "play", "url": str(wav), "autoHangup": True})
            await c.event("trackStart", trackId="server-side-track")
            running.append(c)
        stopping = asyncio.ensure_future(asyncio.to_thread(b.drain))
        # New calls go to A (a load balancer sends them to A's frontend: B's listener is closed). B's
        # frontend starts draining within a second of the SIGTERM (gunicorn's aiohttp worker looks once a
        # second), and says so in its heartbeat: until then A's frontend leaves it half the room.
        await asyncio.sleep(1.5)
        for _ in range(3):
            c = await place(cluster, a, a)
            new.append(c)
            await c.send({"command": "play", "url": str(wav)})
            await c.event("trackStart", trackId="server-side-track")
        for c in running:
            hangup = await c.event("hangup", timeout=6)
            assert hangup["reason"] == "autohangup", "B's calls ended by themselves, not cut"
            frames = len(c.frames)
            assert frames >= 95, f"B's call heard its whole tone while B drained: {frames} frames"
        await asyncio.wait_for(stopping, 30)
        assert all(not c.closed.is_set() for c in new), "A's calls go on"
        assert {c.call_id for c in new} == set(await listed(a))
    finally:
        for c in running + new:
            await c.close()
        b.restart()
        cluster.wait_healthy()
    # Back in service: B's frontend's calls go to B's media process again.
    c = await place(cluster, b, b)
    await c.close()
