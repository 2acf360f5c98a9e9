"""active-call's additions to the call API (issue 20) over the real stack, on `/call`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.audio_util import peak_freq, rms, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_playback import pcm, write_wav

pytestmark = pytest.mark.e2e


async def test_custom_is_echoed_and_dumped(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        data = {"order": [3, 1, 2], "note": "für dich", "nested": {"ok": True, "none": None}}
        # Before the invite too: it needs no call set up.
        await c.send({"command": "custom", "sender": "crm", "data": data})
        echo = await c.event("custom")
        assert echo == {"event": "custom", "timestamp": echo["timestamp"], "sender": "crm", "data": data}
        await c.invite()
        await c.send({"command": "custom", "data": None})
        await c.send({"command": "custom", "sender": "x"})
        bare = await c.event("custom", after=c.events.index(echo) + 1)
        assert bare == {"event": "custom", "timestamp": bare["timestamp"], "data": None}
        error = await c.event("error")
        assert error["sender"] == "command" and error["code"] == 400
        assert error["error"] == "data: required field is missing"
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()
    dump = (stack.recorder_path / f"{call_id}.events.jsonl").read_text()
    lines = [json.loads(x) for x in dump.splitlines()]
    contents = [(x["type"], json.loads(x["content"])) for x in lines]
    assert ("command", {"command": "custom", "sender": "crm", "data": data}) in contents
    assert ("command", {"command": "custom", "data": None}) in contents
    assert [ev for t, ev in contents if t == "event" and ev["event"] == "custom"] == [echo, bare]


async def test_play_offset_starts_that_far_into_the_file(
    stack: StackInfo, call_id: str, tmp_path: Path
) -> None:
    # 600 ms of 440 Hz, then 400 ms of 1000 Hz: 700 ms in is 300 ms of the second tone, 15 frames.
    wav = write_wav(tmp_path / "change.wav", np.concatenate([tone(440, 0.6), tone(1000, 0.4)]))
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "play", "url": str(wav), "playId": "late", "offsetMs": 700})
        await c.event("trackStart", playId="late")
        end = await c.event("trackEnd", playId="late")
        assert 250 <= end["duration"] <= 1000
        await asyncio.sleep(0.1)
        audio = pcm(c.frames)
        assert len(c.frames) == 15 and len(audio) == 15 * 320
        assert abs(peak_freq(audio) - 1000) < 15 and rms(audio) > 3000, "only the second tone"
        first = len(c.frames)

        # Past the end: the track ends at once, as an empty file's would, with no audio.
        await c.send({"command": "play", "url": str(wav), "playId": "past", "offsetMs": 5000})
        await c.event("trackStart", playId="past")
        end = await c.event("trackEnd", playId="past")
        assert end["duration"] < 500
        await asyncio.sleep(0.1)
        assert len(c.frames) == first

        # Negative: refused before any track starts, naming the field.
        mark = len(c.events)
        await c.send({"command": "play", "url": str(wav), "offsetMs": -20})
        error = await c.event("error", after=mark)
        assert (error["sender"], error["code"]) == ("command", 400)
        assert error["error"].startswith("offsetMs: must not be negative")
        await c.send({"command": "history", "speaker": "u", "text": "after"})
        await c.event("addHistory", after=mark)
        assert "trackStart" not in c.names()[mark:]
    finally:
        await c.close()


async def test_server_side_track_names_what_the_server_plays(
    stack: StackInfo, call_id: str, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "short.wav", tone(440, 0.2))
    c = await CallClient.open(stack.ws, call_id=call_id, serverSideTrack="agent-1")
    try:
        await c.invite()
        await c.send({"command": "play", "url": str(wav), "playId": "p", "waitInputTimeout": 100})
        start = await c.event("trackStart", playId="p")
        end = await c.event("trackEnd", playId="p")
        silence = await c.event("silence")
        assert start["trackId"] == end["trackId"] == silence["trackId"] == "agent-1"
        await c.send({"command": "mute", "trackId": "agent-1"})
        await c.send({"command": "unmute", "trackId": "server-side-track"})
        error = await c.event("error")
        assert error["code"] == 400
        expected = f"trackId: no track 'server-side-track' in this call (use {call_id!r} or 'agent-1')"
        assert error["error"] == expected
        assert len([e for e in c.events if e["event"] == "error"]) == 1, "agent-1 was muted without a word"
        await c.send({"command": "hangup"})
        hangup = await c.event("hangup")
        assert hangup["trackId"] == call_id
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"serverSideTrack": "two words"}, "printable characters without spaces"),
        ({"serverSideTrack": "x" * 129}, "at most 128 printable characters"),
        ({"serverSideTrack": "same", "id": "same"}, "must differ from the call id"),
    ],
)
async def test_a_bad_server_side_track_is_refused_before_the_upgrade(
    stack: StackInfo, query: dict[str, str], problem: str
) -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(f"{stack.ws}/call", params=query)
        assert refused.value.status == 400
        async with s.get(f"{stack.base}/call", params=query, headers=UPGRADE) as resp:
            body = await resp.json()
        assert resp.status == 400 and body["error"].startswith("query parameter serverSideTrack: ")
        assert problem in body["error"]


UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def test_inactivity_ends_a_call_whose_caller_stops_sending(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(inactivityTimeout=1)
        frame = tone(440, 0.02).astype("<i2").tobytes()
        began = time.monotonic()
        while time.monotonic() - began < 1.6:  # longer than the timeout: the frames keep the call up
            await c.ws.send_bytes(frame)
            await asyncio.sleep(0.02)
        last_sent = time.time() * 1000
        assert "inactivity" not in c.names() and "hangup" not in c.names()
        inactivity = await c.event("inactivity", timeout=5)
        assert inactivity == {"event": "inactivity", "trackId": call_id, "timestamp": inactivity["timestamp"]}
        # 1 s after the last frame, on the next 20 ms tick; the margin is for a busy machine.
        assert 900 <= inactivity["timestamp"] - last_sent <= 1800
        hangup = await c.event("hangup")
        assert (hangup["reason"], hangup["initiator"]) == ("inactivity_timeout", "system")
        names = c.names()
        assert names.index("inactivity") < names.index("trackEnd") < names.index("hangup")
        await c.wait_closed()
    finally:
        await c.close()
