"""Calls across hosts: listed and killed from another host, dispatched to a media process of the frontend's
own host while it has room and to another host when it has none, audio on time between a frontend and a
media process on different hosts, WebRTC answered with the media host's candidates."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.audio_util import peak_freq, rms, tone
from tests.e2e.client import CallClient, SseReader
from tests.e2e.test_playback import pcm, write_wav
from tests.e2e.test_recorder import read_stereo, stream
from tests.hosts.cluster import Cluster, ClusterHost
from tests.hosts.conftest import MAX_CALLS, hosts_root

pytestmark = [pytest.mark.e2e, pytest.mark.alone]


def new_id() -> str:
    return f"h.{uuid.uuid4()}"


async def listed(host: ClusterHost) -> dict[str, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"{host.base}/call/lists") as resp:
        assert resp.status == 200
        return {e["id"]: e for e in (await resp.json())["calls"]}


async def wait_owner(cluster: Cluster, call_id: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if owner := cluster.owner(call_id):
            return owner
        await asyncio.sleep(0.02)
    raise AssertionError(f"call {call_id} not claimed within {timeout}s")


def host_of(cluster: Cluster, proc: str) -> str:
    return next(h.name for h in cluster.hosts if proc in cluster.media_of(h))


async def test_a_call_on_host_a_is_listed_and_killed_from_host_b(cluster: Cluster) -> None:
    call_id = new_id()
    c = await CallClient.open(cluster.a.ws, call_id=call_id)
    try:
        await c.invite(codec="pcmu")
        assert c.frontend.startswith(f"web-{cluster.a.name}-")
        on_b = await listed(cluster.b)
        assert on_b[call_id]["call_type"] == "websocket"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{cluster.b.base}/call/kill/{call_id}") as resp:
                assert resp.status == 200 and await resp.json() is True, await resp.text()
        hangup = await c.event("hangup", timeout=3)
        assert hangup["reason"] == "killed" and hangup["initiator"] == "system"
        await c.wait_closed(3)
        assert call_id not in await listed(cluster.a) and call_id not in await listed(cluster.b)
    finally:
        await c.close()


async def test_dispatch_prefers_the_frontends_host(cluster: Cluster) -> None:
    """Calls placed on each host one after the other land on a media process of that host, every one."""
    clients = []
    try:
        for host in (cluster.a, cluster.b, cluster.a, cluster.b, cluster.a, cluster.b):
            call_id = new_id()
            c = await CallClient.open(host.ws, call_id=call_id)
            clients.append(c)
            owner = await wait_owner(cluster, call_id)
            assert owner in cluster.media_of(host), f"a call on {host.name}'s frontend went to {owner}"
            await c.invite(codec="pcmu")
        # The dashboard (any frontend) counts them by host, each host under its HOST_NAME.
        deadline = time.monotonic() + 5
        while True:
            data = cluster.b.get("/dashboard/data")
            if data["active"]["by_host"] == {cluster.a.name: 3, cluster.b.name: 3}:
                break
            assert time.monotonic() < deadline, data["active"]
            await asyncio.sleep(0.2)
        hosts = {p["proc"]: p["host"] for p in data["procs"]}
        assert {hosts[p] for p in cluster.media_of(cluster.a)} == {cluster.a.name}
    finally:
        for c in clients:
            await c.close()


async def test_precache_fills_every_hosts_media_cache(cluster: Cluster) -> None:
    """`/precache` on host A synthesizes on one media process of each host (HOST_NAME tells them apart):
    both hosts' caches hold the audio, and a call on host B plays it from its own cache."""
    key = f"hosts-{uuid.uuid4().hex[:8]}"
    tts = {"command": "tts", "text": "One moment please.", "cacheKey": key}
    async with aiohttp.ClientSession() as http, http.post(f"{cluster.a.base}/precache", json=tts) as resp:
        assert resp.status == 200, await resp.text()
        first = await resp.json()
    assert first["status"] == "cached" and first["bytes"] > 16000
    caches = [Path(h.env["MEDIA_CACHE_PATH"]) for h in cluster.hosts]
    deadline = time.monotonic() + 15  # only the first host's answer is waited for
    while not all(any(c.glob("tts-*")) for c in caches):
        assert time.monotonic() < deadline, [sorted(c.glob("*")) for c in caches]
        await asyncio.sleep(0.1)
    c = await CallClient.open(cluster.b.ws, call_id=new_id())
    try:
        await c.invite()
        assert await wait_owner(cluster, c.call_id) in cluster.media_of(cluster.b)
        await c.send({**tts, "playId": "p"})
        await c.event("trackEnd", playId="p", timeout=15)
        (metric,) = [e for e in c.events if e["event"] == "metrics" and e["key"].startswith("completed.tts")]
        # (Host B's own synthesis: Piper's noise makes two syntheses of a text differ by a few ms.)
        assert metric["data"]["cached"] is True and abs(metric["data"]["length"] - first["bytes"]) < 3200
    finally:
        await c.close()


@contextlib.asynccontextmanager
async def host_full(cluster: Cluster, host: ClusterHost) -> AsyncIterator[list[CallClient]]:
    """`host`'s media processes full (MAX_CALLS calls each, placed on its own frontend) for the block."""
    clients: list[CallClient] = []
    try:
        for _ in range(MAX_CALLS * len(cluster.media_of(host))):
            c = await CallClient.open(host.ws, call_id=new_id())
            clients.append(c)
            assert await wait_owner(cluster, c.call_id) in cluster.media_of(host)
            await c.invite(codec="pcmu")
            # (A frontend admits against its share of the room it last read, read every 0.25 s: with
            # MAX_CALLS 4 and two frontends, a third call within one read would be refused.)
            await asyncio.sleep(0.3)
        # Every process reads the heartbeats at least once a beat (0.8 s): all know it is full.
        await asyncio.sleep(1.0)
        yield clients
    finally:
        for c in clients:
            await c.close()


async def test_a_full_host_spills_over_and_the_remote_call_has_its_audio_on_time(cluster: Cluster) -> None:
    """With host A's media process full, A's next call goes to host B at once; its caller audio reaches B
    and the tone B plays reaches A's client in real time, over the direct link between the hosts."""
    wav = write_wav(hosts_root(cluster) / "tone-700.wav", tone(700, 2.0))
    async with host_full(cluster, cluster.a):
        call_id = new_id()
        opened = time.monotonic()
        c = await CallClient.open(cluster.a.ws, call_id=call_id)
        try:
            owner = await wait_owner(cluster, call_id)
            claimed = time.monotonic() - opened
            assert owner in cluster.media_of(cluster.b), "spilled over to host B"
            assert claimed < 1.0, f"claimed {claimed:.2f} s after the socket opened"
            await c.invite(codec="pcm", recorder={})
            caller = tone(1000, 2.0)
            frames = [caller[i : i + 320].tobytes() for i in range(0, len(caller), 320)]
            await c.send({"command": "play", "url": str(wav)})
            sent = asyncio.ensure_future(stream(c, frames))
            start = await c.event("trackStart", trackId="server-side-track")
            await c.event("trackEnd", trackId="server-side-track", timeout=6)
            await sent
            await c.send({"command": "hangup"})
            await c.wait_closed()
        finally:
            await c.close()
    assert start is not None
    heard = pcm(c.frames)
    loud = [(t, np.frombuffer(f, "<i2")) for t, f in c.frames if rms(np.frombuffer(f, "<i2")) > 1000]
    assert len(loud) >= 95, f"{len(loud)} loud frames of the 100 played"
    assert abs(peak_freq(heard) - 700) < 15, "host B's tone reached the client on host A"
    # Real time: 2 s of tone take ~2 s to arrive, no burst and no long gap (a frame is due every 20 ms).
    times = [t for t, _ in loud]
    span = times[-1] - times[0]
    gaps = np.diff(times)
    assert 1.7 <= span <= 2.4, f"the tone's frames arrived over {span:.2f} s"
    assert gaps.max() < 0.2, f"longest gap between frames {gaps.max() * 1000:.0f} ms"
    _, left, _ = read_stereo(Path(cluster.b.env["RECORDER_PATH"]) / f"{call_id}.wav")
    assert abs(peak_freq(left) - 1000) < 15 and rms(left) > 1000, "the caller's tone reached host B"


async def test_webrtc_answered_on_host_b_uses_host_bs_candidates(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WebRTC call placed on host A's frontend while A is full is answered by host B's media process: its
    answer offers host B's address only, and audio flows both ways between the peer and host B."""
    import aioice.ice

    from tests.e2e.rtc_client import RtcCaller
    from tests.e2e.test_webrtc import call, loud_span

    # The peer is in the root namespace and gathers on the bridge's address (rtc_client.py: loopback).
    gateway = cluster.net.gateway
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [gateway] if use_ipv4 else []
    )
    beep = write_wav(hosts_root(cluster) / "beep-1000.wav", tone(1000, 1.0))
    async with host_full(cluster, cluster.a):
        peer = RtcCaller(freq=440, seconds=3.0)
        call_id = new_id()
        c = await CallClient.open(cluster.a.ws, "/call/webrtc", call_id=call_id)
        try:
            answer = await call(c, peer, recorder={})
            assert await wait_owner(cluster, call_id) in cluster.media_of(cluster.b)
            candidates = [x for x in str(answer["sdp"]).splitlines() if x.startswith("a=candidate")]
            assert candidates, answer["sdp"]
            addresses = {x.split()[4] for x in candidates}
            assert addresses == {cluster.b.address}, f"host B's candidates only: {candidates}"
            connection = [x for x in str(answer["sdp"]).splitlines() if x.startswith("c=")]
            assert connection == [f"c=IN IP4 {cluster.b.address}"], connection
            await c.event("mediaReady", timeout=5)
            mark = time.monotonic()
            await c.send({"command": "play", "url": str(beep), "playId": "beep"})
            await c.event("trackEnd", playId="beep", timeout=5)
            await asyncio.sleep(0.5)
            heard = peer.audio(after=mark)
            start, end = loud_span(heard)
            assert abs((end - start) / 16000 - 1.0) < 0.1, "host B's second of tone, heard in real time"
            assert abs(peak_freq(heard[start + 1600 : end - 1600]) - 1000) < 15
            ice = peer.pc.getTransceivers()[0].receiver.transport.transport._connection  # aioice's
            pair = ice._nominated.get(1)  # the pair ICE chose for RTP
            assert pair is not None and pair.remote_candidate.host == cluster.b.address
            await c.send({"command": "hangup"})
            await c.wait_closed()
        finally:
            await peer.close()
            await c.close()
    _, left, _ = read_stereo(Path(cluster.b.env["RECORDER_PATH"]) / f"{call_id}.wav")
    loud = left[np.abs(left) > 0]
    assert rms(left) > 300 and abs(peak_freq(loud) - 440) < 15, "the peer's tone reached host B"


async def test_a_call_on_host_a_is_watched_driven_and_resumed_from_host_b(cluster: Cluster) -> None:
    """active-call's API and `option.resume` across hosts: host B's `/events` streams a call of host A,
    B's `/command` reaches it while it has no socket, and a new socket on B's frontend resumes it."""
    call_id = new_id()
    first = await CallClient.open(cluster.a.ws, call_id=call_id)
    clients = [first]
    watcher = aiohttp.ClientSession()
    try:
        await first.invite(codec="pcm", resume={"timeout": 10})
        assert await wait_owner(cluster, call_id) in cluster.media_of(cluster.a)
        sse = SseReader(await watcher.get(f"{cluster.b.base}/events/{call_id}"))
        await asyncio.sleep(0.2)
        await first.ws.close()
        await first.wait_closed()
        await asyncio.sleep(0.2)
        body = {"command": "history", "speaker": "bot", "text": "while away"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{cluster.b.base}/command/{call_id}", json=body) as resp,
        ):
            assert resp.status == 200, await resp.text()
        second = await CallClient.open(cluster.b.ws, call_id=call_id)
        clients.append(second)
        assert second.frontend.startswith(f"web-{cluster.b.name}-")
        await second.event("addHistory", text="while away")
        assert not [e for e in second.events if e["event"] == "answer"], "only what the first socket missed"
        await second.send({"command": "hangup", "reason": "done"})
        hangup = await second.event("hangup")
        assert hangup["reason"] == "done"
        _, seen = await sse.frame("event", "addHistory")
        assert seen["text"] == "while away"
        await sse.frame("event", "hangup")
        await asyncio.wait_for(sse.ended.wait(), 5)
        await sse.close()
    finally:
        for c in clients:
            await c.close()
        await watcher.close()
