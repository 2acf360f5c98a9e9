"""A call outlives its app socket (`option.resume`) over the real stack: drops mid-`tts`, during ringing and
twice in a row, resumption on either frontend, a socket replaced while the old one is still open, `/events`
watchers across it, and the call's end when nobody comes back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.audio_util import peak_freq, tone
from tests.e2e.client import CallClient, SseReader, session_on_other_frontend
from tests.e2e.conftest import StackInfo, wait_healthy
from tests.e2e.rtc_client import RtcCaller
from tests.e2e.sip_peer import sip_peer
from tests.e2e.test_playback import write_wav

pytestmark = pytest.mark.e2e

LONG = "This sentence is long enough to still be playing when the socket goes away, and then some more."


def unique(*clients: CallClient) -> list[dict[str, Any]]:
    """Every event the sockets got, in order; fails if any came twice."""
    seen: list[dict[str, Any]] = [e for c in clients for e in c.events]
    keys = [json.dumps(e, sort_keys=True) for e in seen]
    twice = {k for k in keys if keys.count(k) > 1}
    assert not twice, f"events delivered twice: {twice}"
    return seen


async def test_dropped_mid_tts_twice_and_resumed_on_another_frontend(stack: StackInfo, call_id: str) -> None:
    first = await CallClient.open(stack.ws, call_id=call_id)
    clients = [first]
    try:
        await first.invite(codec="pcm", resume={"timeout": 10})
        await first.send({"command": "tts", "text": LONG, "playId": "long"})
        await first.event("trackStart", playId="long", timeout=10)
        await asyncio.sleep(0.3)
        await first.ws.close()  # gone mid-sentence
        await first.wait_closed()
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{stack.base}/list") as resp:
                assert call_id in [x["id"] for x in (await resp.json())["active_calls"]], (
                    "up without a socket"
                )
            body = {"command": "history", "speaker": "bot", "text": "while away"}
            async with s.post(f"{stack.base}/command/{call_id}", json=body) as resp:
                assert resp.status == 200
        await asyncio.sleep(0.2)

        second = await CallClient.open(stack.ws, call_id=call_id)
        clients.append(second)
        await second.event("addHistory", text="while away")
        ended = await second.event("trackEnd", playId="long", timeout=15)
        assert ended["trackId"] == "server-side-track"
        replayed = [e for e in second.events if e["event"] in ("answer", "trackStart")]
        assert not replayed, "only what the first socket missed"

        # Dropped again twice: each one resumes, the last on the other frontend (a connection chosen so).
        for i in range(2):
            await clients[-1].send({"command": "history", "speaker": "user", "text": f"live {i}"})
            await clients[-1].event("addHistory", text=f"live {i}")
            await clients[-1].ws.close()
            await clients[-1].wait_closed()
            await asyncio.sleep(0.1)
            other = await session_on_other_frontend(stack.base, clients[-1].frontend) if i else None
            clients.append(await CallClient.open(stack.ws, call_id=call_id, session=other))
        assert clients[-1].frontend != clients[-2].frontend, "resumed on the other frontend"
        last = clients[-1]
        await last.send({"command": "hangup", "reason": "done"})
        hangup = await last.event("hangup")
        assert hangup["reason"] == "done"
        await last.wait_closed()

        got = unique(*clients)
        names = [e["event"] for e in got]
        assert names.count("trackEnd") == 2 and names.count("hangup") == 1  # the tts's, the caller's
        texts = [e.get("text") for e in got if e["event"] == "addHistory"]
        assert texts == ["while away", *(f"live {i}" for i in range(len(texts) - 1))]
    finally:
        for c in clients:
            await c.close()


async def test_a_new_socket_replaces_an_open_one_and_watchers_see_it_through(
    stack: StackInfo, call_id: str
) -> None:
    old = await CallClient.open(stack.ws, call_id=call_id)
    clients = [old]
    watcher = aiohttp.ClientSession()
    try:
        await old.invite(codec="pcm", resume={"timeout": 10})
        sse = SseReader(await watcher.get(f"{stack.base}/events/{call_id}"))
        await asyncio.sleep(0.2)
        # The app lost it, the server has not noticed: the new socket takes over at once.
        new = await CallClient.open(stack.ws, call_id=call_id)
        clients.append(new)
        await old.wait_closed(timeout=5)
        assert old.ws.close_code == 1000
        await new.send({"command": "history", "speaker": "user", "text": "taken over"})
        await new.event("addHistory", text="taken over")
        assert not [e for e in old.events if e.get("text") == "taken over"]
        await new.send({"command": "hangup"})
        await new.event("hangup")
        _, seen = await sse.frame("event", "addHistory")
        assert seen["text"] == "taken over"
        await sse.frame("event", "hangup")
        await asyncio.wait_for(sse.ended.wait(), 5)
        await sse.close()
        unique(*clients)
    finally:
        for c in clients:
            await c.close()
        await watcher.close()


async def test_nobody_back_ends_the_call_as_a_drop_does(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(codec="pcm", resume={"timeout": 1})
        await c.ws.close()
        await c.wait_closed()
        async with aiohttp.ClientSession() as s:
            await asyncio.sleep(0.6)
            async with s.get(f"{stack.base}/list") as resp:
                assert call_id in [x["id"] for x in (await resp.json())["active_calls"]], "still waiting"
            await asyncio.sleep(1.5)
            async with s.get(f"{stack.base}/list") as resp:
                assert call_id not in [x["id"] for x in (await resp.json())["active_calls"]], "ended"
        dump = (stack.recorder_path / f"{call_id}.events.jsonl").read_text().splitlines()
        last = json.loads(json.loads(dump[-1])["content"])
        assert last["event"] == "hangup" and last["reason"] == "connection_closed"
        late = await CallClient.open(stack.ws, call_id=call_id)  # a new call with that id now
        try:
            await late.invite(codec="pcm")
        finally:
            await late.close()
    finally:
        await c.close()


async def test_a_call_without_resume_ends_with_its_socket(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    await c.invite(codec="pcm")
    await c.ws.close()
    await c.close()
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            async with s.get(f"{stack.base}/list") as resp:
                if call_id not in [x["id"] for x in (await resp.json())["active_calls"]]:
                    return
            await asyncio.sleep(0.02)
    raise AssertionError("the call outlived its socket without option.resume")


async def test_dropped_while_ringing_then_answered_meanwhile(stack: StackInfo, call_id: str) -> None:
    async with sip_peer(ring_for=1.0) as peer:
        c = await CallClient.open(stack.ws, "/call/sip", call_id=call_id)
        clients = [c]
        try:
            await c.send(
                {
                    "command": "invite",
                    "option": {
                        "callee": peer.uri,
                        "caller": "sip:bot@example.com",
                        "resume": {"timeout": 10},
                    },
                }
            )
            await c.event("ringing", timeout=10)
            async with aiohttp.ClientSession() as s:  # active-call's /list says since when it rings
                for _ in range(50):
                    async with s.get(f"{stack.base}/list") as resp:
                        (item,) = [x for x in (await resp.json())["active_calls"] if x["id"] == call_id]
                    if item["ringTime"]:
                        break
                    await asyncio.sleep(0.02)
            assert item["ringTime"].endswith("Z") and item["startTime"] is None and item["callType"] == "sip"
            await c.ws.close()
            await c.wait_closed()
            await asyncio.sleep(1.5)  # answered while no socket is there
            back = await CallClient.open(stack.ws, "/call/sip", call_id=call_id)
            clients.append(back)
            answer = await back.event("answer", timeout=10)
            assert "m=audio" in answer["sdp"]
            await back.send({"command": "hangup"})
            await back.event("hangup", timeout=5)
            names = [e["event"] for e in unique(*clients)]
            assert names.index("ringing") < names.index("answer") < names.index("hangup")
            assert names.count("ringing") == 1
        finally:
            for x in clients:
                await x.close()


async def test_a_webrtc_call_goes_on_without_its_socket(
    stack: StackInfo, call_id: str, tmp_path: Path
) -> None:
    beep = write_wav(tmp_path / "beep.wav", tone(1000, 1.0))
    hold = write_wav(tmp_path / "hold.wav", tone(600, 0.5))  # the hold music, looping
    peer = RtcCaller(freq=440, seconds=6.0)
    c = await CallClient.open(stack.ws, "/call/webrtc", call_id=call_id)
    clients = [c]
    try:
        resume = {"timeout": 10, "moh": str(hold)}
        await c.send({"command": "invite", "option": {"offer": await peer.offer(), "resume": resume}})
        answer = await c.event("answer", timeout=10)
        await peer.accept(str(answer["sdp"]))
        await asyncio.sleep(0.5)
        await c.ws.close()
        await c.wait_closed()
        await asyncio.sleep(0.5)
        mark = time.monotonic()
        await asyncio.sleep(1.0)
        on_hold = peer.audio(after=mark)
        assert np.sum(np.abs(on_hold) > 1500) > 8000, "the hold music while no socket is there"
        assert abs(peak_freq(on_hold) - 600) < 20
        mark = time.monotonic()
        async with aiohttp.ClientSession() as s:  # the app's backend plays a file meanwhile
            body = {"command": "play", "url": str(beep), "playId": "beep"}
            async with s.post(f"{stack.base}/command/{call_id}", json=body) as resp:
                assert resp.status == 200
        await asyncio.sleep(0.9)
        heard = peer.audio(after=mark + 0.2)
        assert np.sum(np.abs(heard) > 1500) > 8000, "the peer heard the file while no socket was there"
        assert abs(peak_freq(heard) - 1000) < 20, "the file's tone, in place of the hold music"
        await asyncio.sleep(0.6)
        back = await CallClient.open(stack.ws, "/call/webrtc", call_id=call_id)
        clients.append(back)
        await back.event("trackStart", playId="beep")
        await back.event("trackEnd", playId="beep")
        await asyncio.sleep(0.5)
        mark = time.monotonic()
        await asyncio.sleep(0.5)
        after = peer.audio(after=mark)
        assert np.sum(np.abs(after) > 1500) < 800, "the hold music stops with the new socket"
        await back.send({"command": "hangup"})
        await back.event("hangup")
        unique(*clients)
    finally:
        await peer.close()
        for x in clients:
            await x.close()


async def test_the_frontend_holding_the_socket_dies_and_the_call_waits(
    stack: StackInfo, call_id: str
) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    clients = [c]
    try:
        await c.invite(codec="pcm", resume={"timeout": 20})
        os.kill(int(c.frontend.split("-")[-2]), signal.SIGKILL)
        await c.wait_closed()
        # The owner confirms the frontend dead (~1 s) and waits for the app, where it would have hung up.
        for _ in range(60):
            if stack.redis.hget(f"pbx:call:{call_id}", "state") == b"detached":
                break
            await asyncio.sleep(0.1)
        assert stack.redis.hget(f"pbx:call:{call_id}", "state") == b"detached"
        back = await CallClient.open(stack.ws, call_id=call_id)
        clients.append(back)
        await back.send({"command": "history", "speaker": "user", "text": "after the crash"})
        await back.event("addHistory", text="after the crash")
        await back.send({"command": "hangup"})
        await back.event("hangup")
        assert not [e for e in back.events if e["event"] == "hangup" and e["reason"] == "frontend_lost"]
    finally:
        for x in clients:
            await x.close()
    await asyncio.to_thread(wait_healthy, stack, 2, 2, 15.0)


async def test_a_frontend_that_stops_hands_the_call_over(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    clients = [c]
    try:
        await c.invite(codec="pcm", resume={"timeout": 20})
        os.kill(int(c.frontend.split("-")[-2]), signal.SIGTERM)  # a rolling restart of the frontends
        await c.wait_closed(timeout=15)  # after its drain time (DRAIN_TIMEOUT=5 here)
        assert c.ws.close_code == 1000
        back = await CallClient.open(stack.ws, call_id=call_id)
        clients.append(back)
        assert back.frontend != c.frontend
        await back.send({"command": "history", "speaker": "user", "text": "after the restart"})
        await back.event("addHistory", text="after the restart")
        await back.send({"command": "hangup"})
        hangup = await back.event("hangup")
        assert hangup["reason"] == "normal_clearing"
        unique(*clients)
    finally:
        for x in clients:
            await x.close()
    await asyncio.to_thread(wait_healthy, stack, 2, 2, 15.0)
