"""A freshly started stack: its media processes warm up before they take calls, and a call that comes while
they do waits for them; the first speech then comes as fast as any later one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.e2e.client import CallClient
from tests.e2e.conftest import running_stack
from tests.e2e.test_listening import words
from tests.e2e.test_recorder import stream
from tests.speech import speech, with_silence

pytestmark = [pytest.mark.e2e, pytest.mark.alone]

# Greetings of about the same length, not in the synthesis cache (a cached text is not synthesized again).
GREETINGS = (
    "Hello, thank you for calling. How can I help you today?",
    "Good evening, thanks for ringing. What can I do for you?",
    "Hi there, glad you called us. How may I help you now?",
)
SENTENCE = "Please book a table for two people tonight."
# The figure: the first audio of a `tts` within 250 ms of the command, warm or not.
FIRST_AUDIO_S = 0.25
# Seconds the test stack's warm-up takes at least (PBX_TEST_WARMUP_SECONDS): long enough to call meanwhile.
WARMUP_S = 1.5


async def first_audio(c: CallClient, text: str, play_id: str) -> float:
    """Seconds from a `tts` command to its first audio frame."""
    n = len(c.frames)
    sent = time.monotonic()
    await c.send({"command": "tts", "text": text, "playId": play_id})
    await c.event("trackStart", playId=play_id)
    while len(c.frames) == n:
        await asyncio.sleep(0.005)
    await c.send({"command": "interrupt"})
    await c.event("trackEnd", playId=play_id)
    await asyncio.sleep(0.3)  # the piece being synthesized when interrupted runs out: the next waits for none
    return c.frames[n][0] - sent


async def final_delay(c: CallClient, frames: list[bytes], end_ms: int, index: int) -> float:
    """Seconds from the end of the utterance streamed (at `end_ms` into `frames`) to its `asrFinal`."""
    t0 = time.time()
    await stream(c, frames)
    final = await c.event("asrFinal", index=index, timeout=10)
    assert sum(1 for w in words(SENTENCE) if w in words(final["text"])) >= 6, final["text"]
    return final["timestamp"] / 1000 - (t0 + end_ms / 1000)


async def test_a_call_during_warm_up_waits_and_the_first_speech_is_fast(tmp_path: Path) -> None:
    audio, spans = with_silence(0.3, speech(SENTENCE), 1.0)
    frames = [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]
    with running_stack(tmp_path, 1, 1, warm=False, PBX_TEST_WARMUP_SECONDS=str(WARMUP_S)) as info:
        health = info.health()
        assert health["media_warm"] == 0 and health["capacity"] == 0, health
        # A call that comes while the only media process warms up is not refused: it is taken once warm.
        c = await CallClient.open(info.ws)
        try:
            called = time.monotonic()
            await c.invite(asr={"provider": "local", "language": "en"})
            waited = time.monotonic() - called
            health = info.health()
            assert health["media_warm"] == 1 and health["capacity"] > 0, health
            assert 0.2 < waited < WARMUP_S + 5, waited
            # The first speech of a fresh process comes as fast as later ones.
            firsts = [await first_audio(c, text, f"p{i}") for i, text in enumerate(GREETINGS)]
            assert firsts[0] <= FIRST_AUDIO_S, firsts
            # The first transcript is not slower than later ones (a cold model took its load on top).
            delays = [await final_delay(c, frames, spans[0][1], i) for i in range(3)]
            assert delays[0] <= min(delays[1:]) + 0.1, delays
        finally:
            await c.close()
