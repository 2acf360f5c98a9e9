"""Barge-in over the real stack: a caller who says "yeah" while the bot speaks does not stop it; "wait, stop"
does (`vad.bargeIn` with `act: "interrupt"`, local ASR judging the words)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.audio_util import noise
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_recorder import stream
from tests.speech import speech, with_silence

pytestmark = pytest.mark.e2e

LONG = (
    "Thank you for calling the restaurant. Tonight we have a table by the window, a table on the terrace, "
    "and two seats at the bar. Our kitchen is open until eleven, and the specials are a fish soup, a "
    "mushroom risotto and a lemon tart. Would you like me to book one of them for you?"
)


async def test_a_backchannel_does_not_stop_the_bot_and_wait_stop_does(stack: StackInfo, call_id: str) -> None:
    voice, spans = with_silence(1.0, speech("yeah"), 2.5, speech("Wait, stop."), 2.0)
    audio = np.clip(voice + noise("white", len(voice) / 16000, -45, seed=4), -32768, 32767)
    frames = [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(
            vad={"type": "webrtc", "bargeIn": {"act": "interrupt"}},
            asr={"provider": "local", "language": "en"},
        )
        await c.send({"command": "tts", "text": LONG, "playId": "menu"})
        await c.event("trackStart", playId="menu", timeout=10)
        t0 = time.time() * 1000
        await stream(c, frames)
        stop = await c.event("bargeIn", decision="interrupt", timeout=5)
        end = await c.event("trackEnd", timeout=5)
        verdicts = [e for e in c.events if e["event"] == "bargeIn"]
        first, last = verdicts[0], verdicts[-1]
        assert last is stop and len(verdicts) == 2, verdicts
        assert first["decision"] == "resume" and first["reason"] == "backchannel", first
        assert first["trackId"] == "server-side-track" and abs(first["startTime"] - (t0 + spans[0][0])) <= 300
        # The first words heard that are not a backchannel (an interim may catch "wait" as "weight").
        assert stop["reason"] == "words" and stop["text"].strip(), stop
        assert abs(stop["startTime"] - (t0 + spans[1][0])) <= 300
        assert c.events.index(stop) < c.events.index(end), "the decision, then the track's end"
        heard = [e for e in c.events if e["event"] in ("asrDelta", "asrFinal") and e["text"] == stop["text"]]
        assert heard and c.events.index(heard[0]) < c.events.index(stop), "the words, then the decision"
        # The interruption comes within a second and a half of the caller's first word.
        assert stop["timestamp"] - (t0 + spans[1][0]) <= 1500, stop["timestamp"] - (t0 + spans[1][0])
        # "yeah" paused the track, then resumed it: a still-paused track would not be barged in on again.
        assert not [e for e in c.events[: c.events.index(stop)] if e["event"] == "trackEnd"], "yeah: plays on"
    finally:
        await c.close()
