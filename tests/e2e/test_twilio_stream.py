"""`mediaPass.dialect: "twilio"`: the Twilio Media Streams protocol, checked message by message against a bot
scripted by the test (the Pipecat bot's tests are in test_pipecat.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import numpy as np
import pytest

from tests.audio_util import dtmf_tones, peak_freq, rms, tone
from tests.bots.ws_bot import BotConnection, bot_server, idle
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_media_pass import frames_of
from tests.e2e.test_recorder import stream
from worker.media import g711

pytestmark = pytest.mark.e2e


def media(stream_sid: str, pcm8k: np.ndarray) -> str:
    payload = base64.b64encode(g711.ulaw_encode(pcm8k)).decode()
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def bot_heard(conn: BotConnection) -> np.ndarray:
    chunks = [base64.b64decode(m["media"]["payload"]) for m in conn.events("media")]
    return g711.ulaw_decode(b"".join(chunks))


def loud(c: CallClient, since: float = 0.0) -> list[float]:
    """When each loud frame reached the caller."""
    return [t for t, f in c.frames if t >= since and rms(np.frombuffer(f, "<i2")) > 1000]


async def test_start_and_caller_media_as_twilio_sends_them(stack: StackInfo, call_id: str) -> None:
    async with bot_server(idle) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            extra = {"agent": "support", "attempt": 2}
            await c.invite(mediaPass={"url": bot.url, "dialect": "twilio"}, extra=extra)
            conn = await bot.connection()
            start = await conn.event("start")
            await stream(c, frames_of(tone(1000, 1.0, amp=0.3)))
            await conn.wait_for(lambda: len(conn.events("media")) >= 50, what="50 media messages")
            await c.send({"command": "hangup"})
            stop = await conn.event("stop")
            await asyncio.wait_for(conn.closed.wait(), 3)
        finally:
            await c.close()
    assert conn.query == {}, "no RustPBX query on a Twilio stream"
    first = conn.texts[0][1]
    assert first == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    sid = start["streamSid"]
    assert sid.startswith("MZ") and len(sid) == 34
    assert start["sequenceNumber"] == "1"
    assert start["start"] == {
        "accountSid": start["start"]["accountSid"],
        "streamSid": sid,
        "callSid": call_id,
        "tracks": ["inbound"],
        "customParameters": {"agent": "support", "attempt": "2"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    assert start["start"]["accountSid"].startswith("AC")
    messages = [m for _, m in conn.texts[1:]]
    assert [int(m["sequenceNumber"]) for m in messages] == list(range(1, len(messages) + 1))
    assert all(m["streamSid"] == sid for m in messages)
    chunks = conn.events("media")
    assert [int(m["media"]["chunk"]) for m in chunks] == list(range(1, len(chunks) + 1))
    stamps = [int(m["media"]["timestamp"]) for m in chunks]
    assert all(b - a == 20 for a, b in zip(stamps, stamps[1:], strict=False))
    assert 0 <= stamps[0] < 300
    assert {m["media"]["track"] for m in chunks} == {"inbound"}
    assert {len(base64.b64decode(m["media"]["payload"])) for m in chunks} == {160}
    heard = bot_heard(conn)
    assert abs(peak_freq(heard, rate=8000) - 1000) < 15 and rms(heard[800:]) > 5000
    assert stop["stop"] == {"accountSid": start["start"]["accountSid"], "callSid": call_id}
    assert messages[-1] == stop, "stop is the last message"
    assert conn.close_code == 1000


async def test_bot_media_plays_and_marks_return_in_order_once_played(stack: StackInfo, call_id: str) -> None:
    async def script(conn: BotConnection) -> None:
        sid = (await conn.event("start"))["streamSid"]
        await conn.ws.send_str(mark(sid, "before"))  # nothing queued: answered at once
        for second in range(2):
            for i in range(50):  # 20 ms chunks, all sent at once
                await conn.ws.send_str(media(sid, tone(600, 0.02, rate=8000, amp=0.3)))
                del i
            await conn.ws.send_str(mark(sid, f"after-{second + 1}s"))
        await conn.closed.wait()

    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url, "dialect": "twilio"})
            conn = await bot.connection()
            await c.event("trackStart", trackId="server-side-track")
            await conn.wait_for(lambda: len(conn.events("mark")) == 3, timeout=4, what="three marks")
            await c.event("trackEnd", trackId="server-side-track", timeout=2)
        finally:
            await c.close()
    marks = [(t, m["mark"]["name"]) for t, m in conn.texts if m["event"] == "mark"]
    assert [name for _, name in marks] == ["before", "after-1s", "after-2s"]
    first_audio = loud(c)[0]
    assert -0.3 < marks[0][0] - first_audio < 0.1
    assert 0.85 < marks[1][0] - first_audio < 1.25, "a mark returns once the audio before it has played"
    assert 1.85 < marks[2][0] - first_audio < 2.25
    played = np.frombuffer(b"".join(f for _, f in c.frames), dtype="<i2")
    assert abs(peak_freq(played) - 600) < 10
    assert 99 <= len(loud(c)) <= 102


async def test_clear_stops_the_bot_within_a_frame_and_returns_pending_marks(
    stack: StackInfo, call_id: str
) -> None:
    cleared_at: list[float] = []

    async def script(conn: BotConnection) -> None:
        sid = (await conn.event("start"))["streamSid"]
        for _ in range(250):  # 5 s queued
            await conn.ws.send_str(media(sid, tone(600, 0.02, rate=8000, amp=0.3)))
        await conn.ws.send_str(mark(sid, "end-of-answer"))
        await asyncio.sleep(0.6)
        cleared_at.append(time.monotonic())
        await conn.ws.send_str(json.dumps({"event": "clear", "streamSid": sid}))
        await asyncio.sleep(0.3)
        await conn.ws.send_str(media(sid, tone(900, 0.2, rate=8000, amp=0.3)))  # the next answer plays
        await conn.closed.wait()

    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url, "dialect": "twilio"})
            conn = await bot.connection()
            returned = await conn.event("mark", timeout=3)
            await c.event("trackEnd", trackId="server-side-track", timeout=2)
            second = await c.event(
                "trackStart", trackId="server-side-track", after=c.names().index("trackEnd")
            )
            await c.event("trackEnd", trackId="server-side-track", after=c.events.index(second), timeout=2)
        finally:
            await c.close()
    (clear,) = cleared_at
    assert returned["mark"]["name"] == "end-of-answer"
    mark_at = next(t for t, m in conn.texts if m["event"] == "mark")
    assert mark_at - clear < 0.1, "clear answers the pending marks at once"
    old = [t for t in loud(c) if clear < t < clear + 0.25]
    assert len(old) <= 2, f"{len(old)} frames of cleared audio still reached the caller"
    after = np.frombuffer(b"".join(f for t, f in c.frames if t > clear + 0.25), dtype="<i2")
    assert abs(peak_freq(after) - 900) < 15 and rms(after) > 3000


async def test_digits_reach_the_bot_and_the_app(stack: StackInfo, call_id: str) -> None:
    async with bot_server(idle) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url, "dialect": "twilio"})
            conn = await bot.connection()
            await stream(c, frames_of(dtmf_tones("5#").astype(np.int16)))
            await conn.wait_for(lambda: len(conn.events("dtmf")) == 2, what="two dtmf messages")
            assert [e["digit"] for e in c.events if e["event"] == "dtmf"] == ["5", "#"]
        finally:
            await c.close()
    assert [m["dtmf"] for m in conn.events("dtmf")] == [
        {"track": "inbound_track", "digit": "5"},
        {"track": "inbound_track", "digit": "#"},
    ]


async def test_junk_from_the_bot_is_reported_once_and_the_call_goes_on(
    stack: StackInfo, call_id: str
) -> None:
    async def script(conn: BotConnection) -> None:
        sid = (await conn.event("start"))["streamSid"]
        await conn.ws.send_str("not json")
        await conn.ws.send_bytes(b"\x00\x01")
        await conn.ws.send_str(json.dumps({"event": "media", "media": {"payload": "%%%"}}))
        await conn.ws.send_str(json.dumps({"event": "unknown-to-twilio"}))
        await conn.ws.send_str(media(sid, tone(600, 0.2, rate=8000, amp=0.3)))
        await conn.closed.wait()

    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, call_id=call_id)
        try:
            await c.invite(mediaPass={"url": bot.url, "dialect": "twilio"})
            err = await c.event("error", sender="mediaPass")
            assert err["code"] == 400 and "not JSON" in err["error"]
            await c.event("trackEnd", trackId="server-side-track", timeout=3)
            assert [e["sender"] for e in c.events if e["event"] == "error"] == ["mediaPass"]
            assert len(loud(c)) >= 9
            assert "hangup" not in c.names()
        finally:
            await c.close()


async def test_webrtc_caller_talks_with_a_twilio_bot(stack: StackInfo, call_id: str) -> None:
    from tests.e2e.rtc_client import RtcCaller
    from tests.e2e.test_webrtc import call, loud_span

    async def script(conn: BotConnection) -> None:
        sid = (await conn.event("start"))["streamSid"]
        await conn.ws.send_str(media(sid, tone(600, 1.0, rate=8000, amp=0.3)))
        await conn.closed.wait()

    peer = RtcCaller(freq=440, seconds=2.0)
    async with bot_server(script) as bot:
        c = await CallClient.open(stack.ws, "/call/webrtc", call_id=call_id)
        try:
            mark_time = time.monotonic()
            await call(c, peer, mediaPass={"url": bot.url, "dialect": "twilio"})
            conn = await bot.connection()
            await c.event("trackEnd", trackId="server-side-track", timeout=5)
            await asyncio.sleep(0.3)
            await peer.press("3")
            await conn.wait_for(lambda: conn.events("dtmf"), what="the key press")
            heard = peer.audio(after=mark_time)
            start, end = loud_span(heard)
            assert abs((end - start) / 16000 - 1.0) < 0.15, "the bot's second, heard in real time"
            assert abs(peak_freq(heard[start + 1600 : end - 1600]) - 600) < 15
        finally:
            await peer.close()
            await c.close()
    assert conn.events("dtmf")[0]["dtmf"]["digit"] == "3"
    bot_side = bot_heard(conn)
    start, end = loud_span(bot_side, threshold=1000)
    assert end - start > 8000, "the caller's tone reached the bot"
    assert abs(peak_freq(bot_side[start:end][:8000], rate=8000) - 440) < 15
