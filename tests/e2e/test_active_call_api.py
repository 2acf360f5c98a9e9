"""active-call's routes over the real stack: a client that uses only them lists, watches (SSE), commands and
kills a call, from a frontend other than the one holding the call's socket."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.e2e.client import CallClient, SseReader, session_on_other_frontend
from tests.e2e.conftest import StackInfo

pytestmark = pytest.mark.e2e


async def test_list_watch_command_and_kill_from_another_frontend(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    other = await session_on_other_frontend(stack.base, c.frontend)
    # Its one connection is held by the stream: another session, on another frontend too.
    watcher = await session_on_other_frontend(stack.base, c.frontend)
    try:
        async with other.get(f"{stack.base}/list") as resp:
            (item,) = [x for x in (await resp.json())["active_calls"] if x["id"] == call_id]
        assert item == {
            "id": call_id,
            "callType": "webSocket",
            "option": None,
            "cs.option": None,
            "ringTime": None,
            "startTime": None,
        }, "listed before invite: no option, not answered"

        # Watched from before the invite: every command and event from then on, in order.
        resp = await watcher.get(f"{stack.base}/events/{call_id}")
        assert resp.status == 200 and resp.headers["X-Pbx-Proc"] != c.frontend
        assert resp.headers["Content-Type"] == "text/event-stream;charset=utf-8"
        sse = SseReader(resp)
        began = time.time() * 1000
        await c.send(
            {
                "command": "invite",
                "option": {"codec": "pcmu", "sip": {"username": "u", "password": "hunter2"}},
            }
        )
        await c.event("answer")
        at_invite, invite = await sse.frame("command", "invite")
        assert invite["option"]["codec"] == "pcmu" and invite["option"]["sip"]["password"] == "***"
        at_answer, answer = await sse.frame("event", "answer")
        assert at_invite < at_answer and answer == c.events[c.events.index(await c.event("answer"))]

        for _ in range(50):  # the answer's time reaches the registry just after the event
            async with other.get(f"{stack.base}/list") as resp:
                raw = await resp.text()
                (item,) = [x for x in json.loads(raw)["active_calls"] if x["id"] == call_id]
            if item["startTime"]:
                break
            await asyncio.sleep(0.02)
        assert "hunter2" not in raw
        assert item["option"]["codec"] == "pcmu" and item["cs.option"] == item["option"]
        assert item["startTime"].endswith("Z") and item["ringTime"] is None

        # A command through REST runs as one from the socket: its effect on the socket, both on the stream.
        async with other.post(
            f"{stack.base}/command/{call_id}",
            json={"command": "history", "speaker": "bot", "text": "by rest"},
        ) as resp:
            assert resp.status == 200 and await resp.json() == {"status": "sent", "id": call_id}
        hist = await c.event("addHistory", text="by rest")
        assert hist["speaker"] == "bot"
        at_cmd, cmd = await sse.frame("command", "history")
        at_hist, _ = await sse.frame("event", "addHistory")
        assert cmd == {"command": "history", "speaker": "bot", "text": "by rest"} and at_cmd < at_hist

        async with other.post(
            f"{stack.base}/command/{call_id}", json={"command": "history", "speaker": 7, "text": "x"}
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "speaker: expected a string, got a number"
        async with other.post(f"{stack.base}/command/{call_id}", data="{not json") as resp:
            assert resp.status == 400

        async with other.get(f"{stack.base}/kill/{call_id}") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "killed", "id": call_id}
        hangup = await c.event("hangup")
        assert hangup["reason"] == "killed" and hangup["initiator"] == "system"
        await c.wait_closed()
        _, seen = await sse.frame("event", "hangup")
        assert seen["reason"] == "killed"
        await asyncio.wait_for(sse.ended.wait(), 5), "the stream ends with the call"
        assert all(f[1].get("timestamp", began) >= began - 1000 for f in sse.frames if f[0] == "event")
        await sse.close()

        for method, path in (("GET", "/kill"), ("POST", "/command"), ("GET", "/events")):
            async with other.request(
                method, f"{stack.base}{path}/{call_id}", json={"command": "hangup"}
            ) as resp:
                assert resp.status == 404, path
                body = await resp.json()
                assert body["status"] == "not_found" and body["id"] == call_id, path
                assert body["code"] == "CALL_NOT_FOUND", path
    finally:
        await c.close()
        await other.close()
        await watcher.close()


async def test_several_watchers_each_get_every_event(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    sessions = [aiohttp.ClientSession() for _ in range(3)]
    try:
        await c.invite(codec="pcm")
        readers = [SseReader(await s.get(f"{stack.base}/events/{call_id}")) for s in sessions]
        await asyncio.sleep(0.3)  # the owner has their watch requests (sent before each 200)
        await c.send({"command": "history", "speaker": "user", "text": "to all"})
        for r in readers:
            await r.frame("event", "addHistory")
        await readers[0].close()  # one leaves; the others go on
        await c.send({"command": "hangup"})
        for r in readers[1:]:
            await r.frame("event", "hangup")
            await asyncio.wait_for(r.ended.wait(), 5)
            await r.close()
    finally:
        await c.close()
        for s in sessions:
            await s.close()


async def test_precache_then_a_call_plays_it_from_the_cache(stack: StackInfo, call_id: str) -> None:
    key = f"greeting-{call_id}"
    tts = {"command": "tts", "text": "Thanks for calling, one moment please.", "cacheKey": key}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{stack.base}/precache", json=tts) as resp:
            assert resp.status == 200, await resp.text()
            first = await resp.json()
        assert first["status"] == "cached" and first["cacheKey"] == key
        assert first["bytes"] > 16000 * 2 * 1.0, "over a second of 16 kHz audio"
        async with s.post(f"{stack.base}/precache", json=tts) as resp:
            assert await resp.json() == {"status": "exists", "cacheKey": key, "bytes": 0}
        async with s.post(f"{stack.base}/precache", json={"command": "play", "url": "x.wav"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "precache only accepts tts commands"
        async with s.post(f"{stack.base}/precache", json={"command": "tts"}) as resp:
            assert resp.status == 400 and "text" in (await resp.json())["error"]

    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({**tts, "playId": "p"})
        await c.event("trackEnd", playId="p", timeout=15)
        (metric,) = [e for e in c.events if e["event"] == "metrics" and e["key"].startswith("completed.tts")]
        assert metric["data"]["cached"] is True and metric["duration"] == 0
        assert metric["data"]["length"] == first["bytes"], "the audio precached is the audio played"
        played = sum(len(f) for _, f in c.frames)
        assert abs(played - first["bytes"]) < 640, "every sample once (the last frame padded)"
    finally:
        await c.close()


async def test_the_ping_query_parameter_sends_websocket_pings(stack: StackInfo, call_id: str) -> None:
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{stack.ws}/call", params={"id": call_id, "ping": "1"}, autoping=False)
        try:
            began = time.monotonic()
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.PING, msg
            assert 0.5 < time.monotonic() - began < 3.0, "a ping frame about a second after the last data"
            await ws.pong(msg.data)
        finally:
            await ws.close()
