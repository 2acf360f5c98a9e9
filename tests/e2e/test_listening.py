"""Listening over the real stack: VAD events from speech streamed in real time."""

from __future__ import annotations

import time

import pytest

from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_recorder import stream
from tests.speech import speech, with_silence

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("engine", ["webrtc", "silero"])
async def test_vad_events_follow_the_speech(stack: StackInfo, call_id: str, engine: str) -> None:
    audio, spans = with_silence(0.6, speech("Please book a table for two people tonight."), 1.0)
    frames = [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(vad={"type": engine, "silencePadding": 400})
        t0 = time.time() * 1000
        await stream(c, frames)
        speaking = await c.event("speaking", timeout=3)
        silence = await c.event("silence", trackId=call_id, timeout=3)
        assert c.events.index(speaking) < c.events.index(silence)
        (start, end) = spans[0]
        assert speaking["trackId"] == call_id
        assert abs(speaking["startTime"] - (t0 + start)) <= 200, speaking["startTime"] - t0
        assert speaking["timestamp"] - (t0 + start) <= 300, "speaking is told soon after the onset"
        assert abs(silence["startTime"] - speaking["startTime"]) <= 50
        assert abs(silence["startTime"] + silence["duration"] - (t0 + end)) <= 200
        assert len([e for e in c.events if e["event"] == "speaking"]) == 1
    finally:
        await c.close()


async def test_options_not_built_yet_say_so(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(vad={"type": "fancy"}, asr={"provider": "local"}, denoise=True)
        assert "unknown VAD type" in (await c.event("error", sender="vad"))["error"]
        assert (await c.event("error", sender="asr"))["code"] == 501
        assert (await c.event("error", sender="denoise"))["code"] == 501
        await c.send({"command": "history", "speaker": "u", "text": "still here"})
        await c.event("addHistory")
    finally:
        await c.close()
