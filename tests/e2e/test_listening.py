"""Listening over the real stack: VAD events from speech streamed in real time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.audio_util import dtmf_tones, noise
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.test_metrics import Figures, scrape, until
from tests.e2e.test_recorder import stream
from tests.speech import speech, with_silence

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("engine", ["webrtc", "silero", "ten"])
async def test_vad_events_follow_the_speech(stack: StackInfo, call_id: str, engine: str) -> None:
    voice, spans = with_silence(0.6, speech("Please book a table for two people tonight."), 1.0)
    # A -45 dBFS noise floor from the first frame, as a phone line has: the speech alone is heard.
    audio = np.clip(voice + noise("white", len(voice) / 16000, -45, seed=3), -32768, 32767)
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


async def test_bad_listening_options_say_so(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        # Refused at the edge (the frontend), each naming its field; the call can still be set up after.
        for option, needle in (
            ({"vad": {"type": "fancy"}}, "option.vad.type: unknown VAD type 'fancy'"),
            ({"asr": {"provider": "whisperer"}}, "option.asr.provider: unknown provider 'whisperer'"),
            ({"eou": {"type": "x"}}, "option.eou.type: unknown type 'x'"),
        ):
            mark = len(c.events)
            await c.send({"command": "invite", "option": option})
            err = await c.event("error", sender="command", after=mark)
            assert err["code"] == 400 and err["error"].startswith(needle), err
        assert "answer" not in c.names()
        await c.invite(vad={"type": "WebRTC"})
        await c.send({"command": "history", "speaker": "u", "text": "still here"})
        await c.event("addHistory")
    finally:
        await c.close()


def words(text: str) -> list[str]:
    return [w.strip(".,?!").lower() for w in text.split() if w.strip(".,?!")]


async def test_local_asr_transcribes_utterances(stack: StackInfo, call_id: str) -> None:
    first = "Please book a table for two people tonight."
    second = "I would also like a window seat."
    audio, spans = with_silence(0.5, speech(first), 1.2, speech(second), 1.5)
    frames = [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(asr={"provider": "local", "language": "en"}, eou={"type": "local", "timeout": 300})
        t0 = time.time() * 1000
        await stream(c, frames)
        finals = []
        for index in range(2):
            finals.append(await c.event("asrFinal", index=index, timeout=10))
        for final, text, (start, end) in zip(finals, (first, second), spans, strict=True):
            got, want = words(final["text"]), words(text)
            hits = sum(1 for w in want if w in got)
            assert hits / len(want) >= 0.8, (final["text"], text)
            assert final["trackId"] == call_id
            assert abs(final["startTime"] - (t0 + start)) <= 300 and abs(final["endTime"] - (t0 + end)) <= 300
        metrics = [e for e in c.events if e["event"] == "metrics" and e["key"] == "completed.asr.local"]
        assert [m["data"]["index"] for m in metrics] == [0, 1]
        assert not any(e["event"] in ("speaking", "silence") for e in c.events), "no VAD events unless asked"
        eous = [e for e in c.events if e["event"] == "eou"]
        for _ in range(50):
            if len(eous) == 2:
                break
            await asyncio.sleep(0.1)
            eous = [e for e in c.events if e["event"] == "eou"]
        assert [e["completed"] for e in eous] == [True, True]
        for eou, final in zip(eous, finals, strict=True):
            assert eou["text"] == final["text"] and c.events.index(eou) > c.events.index(final)
            assert 250 <= eou["timestamp"] - final["timestamp"] <= 1000
        deltas = [e for e in c.events if e["event"] == "asrDelta"]
        assert all(d["index"] in (0, 1) for d in deltas)
        for d in deltas:  # an interim for a sentence comes before its final
            assert c.events.index(d) < c.events.index(finals[d["index"]])
    finally:
        await c.close()


async def test_denoise_feeds_vad_clean_audio_and_records_raw(stack: StackInfo, call_id: str) -> None:
    import wave

    from tests.audio_util import rms

    voice, spans = with_silence(1.0, speech("Please book a table for two people tonight."), 1.0)
    noise = np.random.default_rng(5).standard_normal(len(voice)) * 1200
    audio = np.clip(voice.astype(np.int32) + noise, -32768, 32767).astype(np.int16)
    frames = [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(denoise=True, vad={"type": "webrtc", "silencePadding": 400}, recorder={})
        t0 = time.time() * 1000
        await stream(c, frames)
        speaking = await c.event("speaking", timeout=3)
        assert abs(speaking["startTime"] - (t0 + spans[0][0])) <= 250, "noise alone does not count as speech"
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()
    with wave.open(str(stack.recorder_path / f"{call_id}.wav")) as w:
        left = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")[0::2]
    assert rms(left[1600:12800]) > 800, "the recording keeps the raw, noisy caller audio"


@pytest.mark.parametrize("codec", ["pcm", "pcmu"])
async def test_in_band_dtmf(stack: StackInfo, call_id: str, codec: str) -> None:
    from worker.media.codecs import make_codec

    digits = "0123456789*#ABCD"
    audio = dtmf_tones(digits)
    talk, _ = with_silence(0.2, speech("Thank you very much, goodbye."), 0.2)
    mixed = np.concatenate([audio, talk.astype(np.float64)])
    mixed = np.clip(mixed + np.random.default_rng(9).standard_normal(len(mixed)) * 300, -32768, 32767)
    pcm = mixed.astype(np.int16)
    enc = make_codec(codec)
    frames = [enc.encode(pcm[i : i + 320]) for i in range(0, len(pcm) - 319, 320)]
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(codec=codec)
        # Twice real time: the detector reads samples, not when they came (the process's DtmfBank screens
        # whatever a call has sent by its tick), and nothing here is timed.
        await stream(c, frames, speed=2.0)
        await asyncio.sleep(0.3)
        got = [e for e in c.events if e["event"] == "dtmf"]
        assert "".join(e["digit"] for e in got) == digits, "each key once, none from the speech"
        assert all(e["trackId"] == call_id for e in got)
    finally:
        await c.close()


def cut_off_then_finished(after: float = 1.2) -> tuple[list[bytes], list[tuple[int, int]]]:
    """A caller: "I would like to", a pause, "book a table for two.", `after` s more, over a -45 dBFS floor;
    and the words' spans (ms)."""
    first, second = speech("I would like to"), speech("book a table for two.")
    voice, spans = with_silence(0.5, first, 0.8, second, after)
    audio = np.clip(voice + noise("white", len(voice) / 16000, -45, seed=3), -32768, 32767)
    return [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)], spans


async def turn_of(c: CallClient, frames: list[bytes]) -> tuple[float, list[dict[str, Any]]]:
    """A smart_turn call's caller streams `frames`: when the stream began (ms), and its `eou`s up to the first
    `completed` one."""
    await c.invite(eou={"type": "smart_turn"})
    t0 = time.time() * 1000
    await stream(c, frames)
    done = await c.event("eou", completed=True, timeout=5)
    eous = [e for e in c.events if e["event"] == "eou"]
    assert eous[-1] is done, eous
    return t0, eous


DECISIONS = "pbx_smart_turn_decisions_total"


async def counted(info: StackInfo, before: Figures, window: str, decisions: int) -> None:
    """/metrics counts at least `decisions` answers since `before` in `window` ("short" or "whole"), and none
    in the other."""
    other = "whole" if window == "short" else "short"
    after = await until(info.base, lambda f: f.since(before, DECISIONS, window=window) >= decisions)
    assert after.since(before, DECISIONS, window=window) >= decisions
    assert after.since(before, DECISIONS, window=other) == 0


async def test_smart_turn_tells_a_cut_off_sentence_from_a_finished_one(
    stack: StackInfo, call_id: str
) -> None:
    # A caller stops after "I would like to", then finishes the sentence: the model (no ASR, its own VAD, the
    # default short window with its shifted answers) calls the first pause incomplete and the end complete;
    # each `eou` comes soon after its pause begins.
    before = await scrape(stack.base)
    frames, spans = cut_off_then_finished()
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        t0, eous = await turn_of(c, frames)
        cut, finished = eous[0], eous[-1]
        assert cut["completed"] is False, eous
        assert all(e["completed"] is False for e in eous[:-1]), eous
        assert cut["trackId"] == call_id and 0 <= cut["probability"] < 0.5
        assert 0.5 <= finished["probability"] <= 1
        pause1, pause2 = t0 + spans[0][1], t0 + spans[1][1]
        assert pause1 < cut["timestamp"] <= pause1 + 700, cut["timestamp"] - pause1
        assert pause2 < finished["timestamp"] <= pause2 + 700, finished["timestamp"] - pause2
    finally:
        await c.close()
    await counted(stack, before, "short", len(eous))


async def test_smart_turn_in_the_models_own_window_when_the_operator_says_so(tmp_path: Path) -> None:
    # SMART_TURN_WINDOW=whole: the model's 8-s window hears a plainly finished sentence (0.99 in either).
    voice, spans = with_silence(0.5, speech("I need to change my delivery address."), 1.2)
    audio = np.clip(voice + noise("white", len(voice) / 16000, -45, seed=4), -32768, 32767)
    frames = [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]
    with running_stack(tmp_path / "stack", 1, 1, SMART_TURN_WINDOW="whole") as info:
        before = await scrape(info.base)
        c = await CallClient.open(info.ws, call_id="whole-window")
        try:
            t0, eous = await turn_of(c, frames)
            assert eous[-1]["probability"] >= 0.5
            assert t0 + spans[0][1] < eous[-1]["timestamp"] <= t0 + spans[0][1] + 700
        finally:
            await c.close()
        await counted(info, before, "whole", len(eous))
