"""VAD: the state machine's rules, and both engines on real speech with known boundaries."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from tests.speech import speech, with_silence
from worker.media.offload import FrameBatcher
from worker.media.vad import (
    Discarded,
    Silence,
    SileroBatcher,
    Speaking,
    VadEvent,
    VadProcessor,
    VadStateMachine,
)


def judge(machine: VadStateMachine, pattern: str, frame_ms: int = 20) -> list[VadEvent]:
    """Feed a pattern of 'S' (speech) and '.' (silence) frames starting at t = 0."""
    out: list[VadEvent] = []
    for i, c in enumerate(pattern):
        out += machine.update(c == "S", i * frame_ms, frame_ms)
    return out


def test_utterance_gives_speaking_then_silence_with_the_speech_span() -> None:
    events = judge(VadStateMachine(), "." * 5 + "S" * 20 + "." * 10)
    assert events == [Speaking(100), Silence(100, 400)]


def test_short_gap_does_not_split_and_short_blip_is_not_an_utterance() -> None:
    assert judge(VadStateMachine(), "S" * 15 + "..." + "S" * 10 + "." * 10) == [Speaking(0), Silence(0, 560)]
    assert judge(VadStateMachine(), "SSS" + "." * 10) == [Speaking(0), Discarded(0)], (
        "60 ms < speechPadding: no silence event"
    )


def test_silence_timeout_repeats_while_idle() -> None:
    events = judge(VadStateMachine(silence_timeout=200), "." * 25)
    assert events == [Silence(0, 200, idle=True), Silence(0, 400, idle=True)]
    events = judge(VadStateMachine(silence_timeout=200), "S" * 15 + "." * 20)
    assert events == [
        Speaking(0),
        Silence(0, 300),
        Silence(300, 200, idle=True),
        Silence(300, 400, idle=True),
    ]


SENTENCES = ("Hello, I would like to book a course for next week.", "Thank you very much, goodbye.")


@pytest.fixture(scope="module")
def utterances() -> tuple[np.ndarray, list[tuple[int, int]]]:
    return with_silence(1.0, speech(SENTENCES[0]), 1.5, speech(SENTENCES[1]), 1.0)


def run_engine(engine: str, audio: np.ndarray) -> list[VadEvent]:
    events: list[VadEvent] = []

    async def main() -> None:
        pool = ThreadPoolExecutor(1)
        loop = asyncio.get_running_loop()

        def off_loop(fn: Any, *args: Any) -> Any:
            return loop.run_in_executor(pool, fn, *args)

        batcher = SileroBatcher(off_loop)
        offload = FrameBatcher("ten", off_loop)
        runners = [asyncio.create_task(batcher.run()), asyncio.create_task(offload.run())]
        vad = VadProcessor(engine, events.append, batcher=batcher, offload=offload)
        for i in range(0, len(audio) - 319, 320):
            vad.feed(audio[i : i + 320], i // 16)
            batcher.kick()
            offload.kick()
            await asyncio.sleep(0)
        for _ in range(100):
            batcher.kick()
            offload.kick()
            await asyncio.sleep(0.01)
        for runner in runners:
            runner.cancel()
        pool.shutdown()

    asyncio.run(main())
    return events


@pytest.mark.parametrize("engine", ["webrtc", "silero", "ten"])
def test_engine_finds_speech_boundaries(
    engine: str, utterances: tuple[np.ndarray, list[tuple[int, int]]]
) -> None:
    audio, spans = utterances
    events = run_engine(engine, audio)
    onsets = [e.start_ms for e in events if isinstance(e, Speaking)]
    segments = [(e.start_ms, e.start_ms + e.duration_ms) for e in events if isinstance(e, Silence)]
    assert len(onsets) == len(segments), events
    # A sentence may be cut at its inner pauses (silencePadding is 100 ms): group segments by sentence.
    for start, end in spans:
        mine = [s for s in segments if start - 150 <= s[0] and s[1] <= end + 150]
        assert mine, (engine, start, end, segments)
        assert abs(mine[0][0] - start) <= 150, (engine, mine[0][0], start)
        assert abs(mine[-1][1] - end) <= 150, (engine, mine[-1][1], end)
        assert any(abs(o - start) <= 150 for o in onsets)
    inside = sum(1 for s in segments for start, end in spans if start - 150 <= s[0] and s[1] <= end + 150)
    assert inside == len(segments), f"{engine}: a segment outside the speech: {segments}"


def test_unknown_engine() -> None:
    with pytest.raises(ValueError):
        VadProcessor("nope", lambda e: None)
