"""pbxclient's calls and REST against a scripted server in the test's loop: events in order and typed,
the end of a call, drops surfacing as CallClosed to every waiter, reconnect, audio both ways, flavors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import numpy as np
import pytest

from pbxclient import (
    AddHistory,
    Answer,
    ApiError,
    CallClosed,
    CallEnded,
    CallNotFound,
    CallOption,
    CallRejected,
    Client,
    CommandSeen,
    Error,
    Event,
    Hangup,
    NotSupported,
    StreamGap,
    TrackEnd,
    TrackStart,
    WebhookReceiver,
    g711,
)
from pbxclient.commands import History
from tests.audio_util import peak_freq, tone
from tests.client.fake_server import FakeServer, Socket


async def server_like(sock: Socket, cmd: dict[str, Any]) -> None:
    """What the real server does, in miniature."""
    name = cmd["command"]
    if name == "invite":
        await sock.event("trackStart", trackId=sock.query["id"])
        await sock.event("answer", trackId=sock.query["id"], sdp="")
    elif name == "tts":
        await sock.event("trackStart", trackId="server-side-track", playId=cmd.get("playId"))
        for _ in range(5):
            await sock.ws.send_bytes(np.full(320, 1000, "<i2").tobytes())
        await sock.event("trackEnd", trackId="server-side-track", playId=cmd.get("playId"), duration=100)
    elif name == "history":
        await sock.event("addHistory", sender=sock.query["id"], speaker=cmd["speaker"], text=cmd["text"])
    elif name == "hangup":
        await sock.event("hangup", reason=cmd.get("reason", "normal_clearing"), initiator="caller")
        await sock.ws.close()
    elif name == "drop":
        await sock.ws.close(code=4001, message=b"gone away")


async def test_a_call_from_invite_to_hangup() -> None:
    async with FakeServer(server_like).running() as server, Client(server.url, token="t0k") as client:
        call = await client.call(codec="pcm", call_id="c1", dump=False, ping=5, server_side_track="bot")
        assert isinstance(call.answer, Answer) and call.id == "c1"
        sock = server.sockets[0]
        assert sock.query == {
            "id": "c1",
            "dump": "false",
            "ping": "5",
            "serverSideTrack": "bot",
            "token": "t0k",
        }
        assert sock.commands[0] == {"command": "invite", "option": {"codec": "pcm"}}

        await call.tts("hello", play_id="p1", auto_hangup=False)
        end = await call.wait_for(TrackEnd, play_id="p1")
        assert end.duration == 100 and end.track_id == "server-side-track"
        assert sock.commands[1] == {"command": "tts", "text": "hello", "playId": "p1", "autoHangup": False}
        frames = [f async for f in _take(call.audio(), 5)]
        assert [len(f.samples) for f in frames] == [320] * 5 and frames[0].sample_rate == 16000
        assert frames[0].samples[0] == 1000

        await call.hangup("done")
        hangup = await call.wait_ended()
        assert isinstance(hangup, Hangup) and hangup.reason == "done" and call.ended
        names = [e.name async for e in call.events()]  # ends cleanly after the hangup
        assert names == ["trackStart", "answer", "trackStart", "trackEnd", "hangup"]
        assert [type(e) for e in call.received()[:2]] == [TrackStart, Answer]
        with pytest.raises(CallEnded):
            await call.wait_for(AddHistory, timeout=1)
        with pytest.raises(CallEnded):
            await call.history("user", "too late")

        async with client.call(call_id="c1b") as other:  # hangs up and closes on the way out
            await other.history("user", "hi")
        assert other.ended and isinstance(other.hangup_event, Hangup)
        assert server.sockets[1].commands[-1] == {"command": "hangup"}


async def _take(it: Any, n: int) -> Any:
    for _ in range(n):
        yield await it.__anext__()


async def test_a_dropped_socket_raises_call_closed_to_every_waiter() -> None:
    async with FakeServer(server_like).running() as server, Client(server.url) as client:
        call = await client.call(call_id="c2")

        async def iterate() -> list[str]:
            return [e.name async for e in call.events()]

        async def audio() -> int:
            return len([f async for f in call.audio()])

        waiters = [
            asyncio.create_task(iterate()),
            asyncio.create_task(audio()),
            asyncio.create_task(call.wait_for(AddHistory, timeout=5)),
            asyncio.create_task(call.wait_ended(timeout=5)),
        ]
        await asyncio.sleep(0.05)
        await call.send({"command": "drop"})
        for task in waiters:
            with pytest.raises(CallClosed) as caught:
                await task
            assert caught.value.call_id == "c2" and caught.value.code == 4001
            assert caught.value.reason == "gone away"
        assert not call.ended and call.closed_error is not None
        with pytest.raises(CallClosed):
            await call.history("user", "anyone?")


async def test_a_lost_connection_is_close_code_1006() -> None:
    async def vanish(sock: Socket, cmd: dict[str, Any]) -> None:
        await server_like(sock, cmd)
        if cmd["command"] == "history":
            transport = sock.ws._req.transport if sock.ws._req else None
            assert transport is not None
            transport.abort()

    async with FakeServer(vanish).running() as server, Client(server.url) as client:
        call = await client.call()
        await call.history("user", "x")
        with pytest.raises(CallClosed) as caught:
            await call.wait_ended(timeout=5)
        assert caught.value.code == 1006


async def test_reconnect_continues_the_same_iterator() -> None:
    async def resumable(sock: Socket, cmd: dict[str, Any]) -> None:
        if cmd["command"] == "history" and cmd["text"] == "first":
            await sock.event("addHistory", speaker="user", text="first")
            await sock.ws.close(code=1000, message=b"the server is restarting")
        else:
            await server_like(sock, cmd)

    async with FakeServer(resumable).running() as server, Client(server.url) as client:
        call = await client.call(call_id="c3", dump=True)
        events = call.events()
        seen = []
        await call.history("user", "first")
        with pytest.raises(CallClosed) as caught:
            async for e in events:
                seen.append(e.name)
        assert caught.value.code == 1000 and "restarting" in caught.value.reason
        assert seen == ["trackStart", "answer", "addHistory"]

        await call.reconnect()
        assert server.sockets[1].query == server.sockets[0].query == {"id": "c3", "dump": "true"}
        await call.history("user", "second")
        await call.hangup()
        async for e in events:  # the same iterator goes on
            seen.append(e.name)
        assert seen == ["trackStart", "answer", "addHistory", "addHistory", "hangup"]
        assert call.ended


async def test_reconnect_retries_a_conflict_when_asked() -> None:
    """A reconnect that may race the invite carrying option.resume retries a 409 for as long as it says."""
    async with FakeServer(server_like).running() as server, Client(server.url) as client:
        call = await client.call()
        server.refuse, server.refusals = 409, 2
        await call.reconnect(conflict_wait=1.0)
        assert len(server.sockets) == 2 and server.refusals == 0
        server.refusals = None
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(ApiError) as caught:
            await call.reconnect(conflict_wait=0.3)
        assert caught.value.status == 409 and 0.3 <= loop.time() - began < 1.0
        server.refuse = None
        await call.history("user", "still here")  # the socket in use was never given up
        await call.wait_for(AddHistory)


async def test_wait_for_takes_each_event_once_and_says_what_came() -> None:
    async with FakeServer(server_like).running() as server, Client(server.url) as client:
        call = await client.call()
        for text in ("a", "b", "c"):
            await call.history("user", text)
        assert (await call.wait_for(AddHistory)).text == "a"
        assert (await call.wait_for(AddHistory)).text == "b"
        assert (await call.wait_for("addHistory", text="c")).get("text") == "c"
        mark = call.position
        await call.send(History(speaker="bot", text="d"))
        assert (await call.wait_for(AddHistory, after=mark, speaker="bot")).text == "d"
        with pytest.raises(TimeoutError, match=r"no Error within 0.2 s; events: \['trackStart', 'answer'"):
            await call.wait_for(Error, timeout=0.2)


async def test_send_audio_uses_the_calls_codec_and_rate() -> None:
    async with FakeServer(server_like).running() as server, Client(server.url) as client:
        call = await client.call(option=CallOption(codec="PCMU"))
        assert call.sample_rate == 8000 and call.codec == "pcmu"
        assert server.sockets[0].commands[0] == {"command": "invite", "option": {"codec": "pcmu"}}
        await call.send_audio(tone(1000, 0.5, rate=16000), sample_rate=16000, pace=False)
        await call.send_audio(tone(1000, 0.1, rate=8000).tobytes(), pace=False)
        await call.history("user", "sync")
        await call.wait_for(AddHistory)
        sent = server.sockets[0].audio
        assert len(sent) == 30 and {len(f) for f in sent} == {160}
        decoded = g711.ulaw_decode(b"".join(sent))
        assert abs(peak_freq(decoded, 8000) - 1000) < 20


async def test_paced_audio_goes_out_in_real_time() -> None:
    async with FakeServer(server_like).running() as server, Client(server.url) as client:
        call = await client.call()
        loop = asyncio.get_running_loop()
        began = loop.time()
        await call.send_audio(np.zeros(320 * 10, np.int16))
        await call.send_audio(np.zeros(320 * 5, np.int16))
        # 15 frames, the first at once: 14 intervals of 20 ms.
        assert 0.26 <= loop.time() - began < 0.6


async def test_a_setup_refused_raises_call_rejected() -> None:
    async def busy(sock: Socket, cmd: dict[str, Any]) -> None:
        await sock.event("ringing", trackId="x", earlyMedia=False)
        await sock.event("reject", trackId="x", reason="Busy Here", code=486)
        await sock.event("hangup", reason="rejected", initiator="callee")
        await sock.ws.close()

    async with FakeServer(busy).running() as server, Client(server.url) as client:
        with pytest.raises(CallRejected) as caught:
            await client.sip_call("sip:bob@example.com", caller="sip:me@example.com", ring_timeout="5s")
        assert caught.value.event.name == "reject" and caught.value.event.get("code") == 486
        option = server.sockets[0].commands[0]["option"]
        assert option == {
            "callee": "sip:bob@example.com",
            "caller": "sip:me@example.com",
            "ringTimeout": "5s",
        }
        assert server.sockets[0].path == "/call/sip"


async def test_refused_upgrades_say_why() -> None:
    async with FakeServer(server_like).running() as server, Client(server.url) as client:
        server.refuse = 409
        with pytest.raises(ApiError) as caught:
            await client.call(call_id="taken")
        assert caught.value.status == 409 and "already has this id" in caught.value.error


async def test_active_call_flavor_ends_a_call_on_a_normal_close() -> None:
    async def no_hangup(sock: Socket, cmd: dict[str, Any]) -> None:
        if cmd["command"] == "hangup":
            await sock.ws.close()  # active-call sends no hangup event on /call
        else:
            await server_like(sock, cmd)

    async with FakeServer(no_hangup).running() as server, Client(server.url, flavor="active-call") as client:
        call = await client.call()
        assert call.receive_rate == 8000  # active-call sends pcm at 8 kHz
        await call.hangup()
        assert await call.wait_ended() is None and call.ended
        with pytest.raises(CallEnded):
            await call.refer("sip:bob@example.com")


async def test_commands_translated_for_active_call() -> None:
    async with (
        FakeServer(server_like).running() as server,
        Client(server.url, flavor="active-call") as client,
    ):
        call = await client.call()
        await call.candidate(["candidate:a", "candidate:b"])
        await call.refer("sip:bob@example.com")
        await call.history("user", "sync")
        await call.wait_for(AddHistory)
        assert server.sockets[0].commands[1:4] == [
            {"command": "addIceCandidate", "candidate": "candidate:a"},
            {"command": "addIceCandidate", "candidate": "candidate:b"},
            {"command": "refer", "callee": "sip:bob@example.com"},
        ]


async def test_rest_routes_by_flavor() -> None:
    async with FakeServer().running() as server:
        server.replies = {
            ("GET", "/call/lists"): (200, {"calls": [{"id": "a", "call_type": "websocket",
                                                     "created_at": "2026-01-01T00:00:00Z", "option": {}}]}),
            ("POST", "/call/kill/a"): (200, True),
            ("GET", "/list"): (200, {"active_calls": [{
                "id": "b", "callType": "webSocket", "cs.option": None, "ringTime": None,
                "startTime": "2026-01-01T00:00:01Z",
            }]}),
            ("GET", "/kill/b"): (200, {"status": "killed", "id": "b"}),
            ("GET", "/kill/gone"): (404, {"status": "not_found", "id": "gone"}),
            ("POST", "/command/b"): (200, {"status": "sent", "id": "b"}),
            ("POST", "/command/bad"): (400, {"error": "speaker: expected a string", "code": "BAD_COMMAND",
                                             "details": "x"}),
            ("POST", "/precache"): (200, {"status": "cached", "cacheKey": "k", "bytes": 32000}),
            ("GET", "/iceservers"): (200, [{"urls": "stun:a"}, {"urls": ["turn:b"], "username": "u",
                                                                "credential": "c"}]),
        }  # fmt: skip
        async with Client(server.url, token="t0k", flavor="rustpbx") as rust:
            (info,) = await rust.list_calls()
            assert (info.id, info.call_type, info.created_at) == ("a", "websocket", "2026-01-01T00:00:00Z")
            assert await rust.kill("a") is True
            assert await rust.kill("nobody") is False
            with pytest.raises(NotSupported):
                await rust.send_command("a", History(speaker="u", text="x"))
            servers = await rust.ice_servers()
            assert servers[0].urls == ["stun:a"] and servers[1].credential == "c"
        assert all(r[2].get("Authorization") == "Bearer t0k" for r in server.requests)

        async with Client(server.url, flavor="active-call") as ac:
            (info,) = await ac.list_calls()
            assert (info.id, info.call_type, info.start_time) == ("b", "websocket", "2026-01-01T00:00:01Z")
            assert await ac.kill("b") is True and await ac.kill("gone") is False
            await ac.send_command("b", History(speaker="u", text="x"))
            assert server.requests[-1][3] == {"command": "history", "speaker": "u", "text": "x"}
            with pytest.raises(ApiError) as caught:
                await ac.send_command("bad", {"command": "history"})
            assert (caught.value.status, caught.value.code) == (400, "BAD_COMMAND")
            with pytest.raises(CallNotFound):
                await ac.send_command("nobody", {"command": "history"})
            cached = await ac.precache("Hello.", cache_key="k")
            assert (cached.status, cached.cache_key, cached.bytes) == ("cached", "k", 32000)
            assert server.requests[-1][3] == {"command": "tts", "text": "Hello.", "cacheKey": "k"}


async def test_sse_frames_are_typed() -> None:
    async with FakeServer().running() as server, Client(server.url) as client:
        server.sse = [
            ": keep-alive\n\n",
            'event: command\ndata: {"command":"history","speaker":"u","text":"x"}\n\n',
            'event: event\ndata: {"event":"addHistory","timestamp":3,"speaker":"u","text":"x"}\n\n',
            'event: dropped\ndata: {"dropped": 4}\n\n',
            'event: event\ndata: {"event":"somethingNew","timestamp":4}\n\n',
            'event: event\ndata: {"event":"hangup","timestamp":5,"reason":"killed"}\n\n',
        ]
        async with client.events("c9") as stream:
            items = [i async for i in stream]
        assert [type(i) for i in items] == [AddHistory, StreamGap, Event, Hangup]
        assert isinstance(items[1], StreamGap) and items[1].dropped == 4
        with_commands = [i async for i in client.events("c9", commands=True)]
        assert isinstance(with_commands[0], CommandSeen) and with_commands[0].command == "history"
        server.replies[("GET", "/events/gone")] = (404, {"status": "not_found", "id": "gone"})
        with pytest.raises(CallNotFound):
            async with client.events("gone"):
                pass


async def test_webhook_receiver_types_the_invite() -> None:
    body = {
        "dialogId": "abc-1-2",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "caller": "sip:alice@example.com",
        "callee": "sip:bot@example.com",
        "event": "invite",
        "headers": ["Via: SIP/2.0/UDP 192.0.2.1", "X-Customer-Id: c-42"],
        "offer": "v=0\r\n",
    }
    got: list[str] = []
    async with WebhookReceiver() as hook:
        async with aiohttp.ClientSession() as s, s.post(hook.url, data=json.dumps(body)) as resp:
            assert resp.status == 200
        call = await hook.next(timeout=2)
    assert (call.dialog_id, call.caller, call.offer) == ("abc-1-2", "sip:alice@example.com", "v=0\r\n")
    assert call.header("x-customer-id") == "c-42" and call.header("Subject") is None

    async def on_call(c: Any) -> None:
        got.append(c.dialog_id)

    async with WebhookReceiver(on_call=on_call) as hook:
        async with aiohttp.ClientSession() as s, s.post(hook.url, json=body) as resp:
            assert resp.status == 200
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.01)
    assert got == ["abc-1-2"]
