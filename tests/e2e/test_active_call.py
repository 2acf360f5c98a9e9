"""active-call's additions to the call API (issue 20) over the real stack, on `/call`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

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
