"""The local ASR's audio buffer (worker/speech/local_asr.py): what it hands the model for an utterance."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from common.protocol import TranscriptionOption
from worker.speech.local_asr import FIRST_INTERIM_MS, INTERIM_EVERY_MS, PRE_ROLL_MS, LocalAsr, interim_due


class Pool:
    """Records what would be transcribed; answers "ok"."""

    busy = False

    def __init__(self) -> None:
        self.asked: list[tuple[np.ndarray, bool]] = []

    def transcribe(self, audio: np.ndarray, language: str | None, final: bool) -> asyncio.Future[str]:
        self.asked.append((audio, final))
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        fut.set_result("ok")
        return fut


def frames(level: int, ms: int) -> list[np.ndarray]:
    return [np.full(320, level, dtype=np.int16) for _ in range(ms // 20)]


async def test_an_utterance_after_a_gap_in_the_callers_audio_is_transcribed() -> None:
    pool = Pool()
    results: list[Any] = []
    asr = LocalAsr(TranscriptionOption(provider="local"), None, results.append, results.append, pool)  # type: ignore[arg-type]
    t = 1_000_000
    for f in frames(0, 1000):  # a second of silence, then the client sends nothing for 5 s
        asr.feed(f, t)
        t += 20
    t += 5000
    asr.speech_started(t)
    for f in frames(1000, 600):  # then speaks for 0.6 s
        asr.feed(f, t)
        t += 20
    asr.speech_ended(t - 600, t)
    await asyncio.sleep(0)
    ((audio, final),) = [a for a in pool.asked if a[1]]
    assert final and results and results[-1].text == "ok", "not dropped as too short"
    loud = int(np.count_nonzero(audio == 1000))
    assert loud == 600 * 16, "all of the utterance, from the audio after the gap"
    assert len(audio) == loud + PRE_ROLL_MS * 16, "the pre-roll before it is the gap's silence"


def test_an_utterances_first_interim_comes_sooner_than_the_next() -> None:
    assert (FIRST_INTERIM_MS, INTERIM_EVERY_MS) == (600, 1000)
    assert not interim_due(5000, None, 5580) and interim_due(5000, None, 5600)
    assert not interim_due(5000, 5600, 6580) and interim_due(5000, 5600, 6600)


async def test_interims_while_the_caller_speaks_then_the_final() -> None:
    pool = Pool()
    asr = LocalAsr(TranscriptionOption(provider="local"), None, print, print, pool)  # type: ignore[arg-type]
    t = 0
    for f in frames(0, 1000):
        asr.feed(f, t)
        t += 20
    asr.speech_started(t)
    for f in frames(1000, 2500):  # 2.5 s of speech: interims at 0.6 and 1.6 s
        asr.feed(f, t)
        t += 20
    asr.speech_ended(t - 2500, t)
    await asyncio.sleep(0)
    assert [final for _, final in pool.asked] == [False, False, True]
    heard = [int(np.count_nonzero(audio == 1000)) // 16 for audio, _ in pool.asked]
    assert heard == [620, 1620, 2500], "each interim hears the utterance up to the frame it was asked in"


async def test_a_gap_longer_than_the_buffer_starts_it_afresh() -> None:
    pool = Pool()
    asr = LocalAsr(TranscriptionOption(provider="local"), None, print, print, pool)  # type: ignore[arg-type]
    asr.feed(np.zeros(320, dtype=np.int16), 0)
    asr.feed(np.zeros(320, dtype=np.int16), 10**9)  # days later
    assert len(asr._audio) == 640 and asr._audio_start_ms == 10**9


@pytest.mark.parametrize(
    ("said", "before", "after"),
    [("hold on a second", 0.3, 0.3), ("yeah", 0.3, 0.3), ("no, I said tomorrow", 0.1, 0.1),
     ("I would like to book a table for two.", 0.0, 0.0), ("sorry, what was that?", 0.1, 0.1)],
)  # fmt: skip
def test_whisper_in_a_cut_window_says_it_once(said: str, before: float, after: float) -> None:
    # Each of these came out as the phrase over and over (up to 224 tokens) before the cut window was padded
    # with silence and the decoder penalised repeats (bench/asr_loops.py).
    from bench.asr_loops import errors, words
    from bench.turn_eval import _whisper, on_floor, say
    from worker.speech.local_asr import _transcribe

    audio, _, _ = on_floor(say(said, "joe"), before, after, seed=1)
    heard = _transcribe(_whisper(), audio, "en")
    assert len(words(heard)) <= len(words(said)) + 1, heard
    assert errors(said, heard) <= 1, heard


@pytest.mark.parametrize(("kind", "seed"), [("white 400 ms", 0), ("white 150 ms", 1), ("cough", 1)])
def test_whisper_gives_no_words_for_a_burst_of_noise(kind: str, seed: int) -> None:
    # These came out as "I'm gonna go to the end of this video." and "I'm gonna be right back."
    from bench.turn_eval import _whisper, burst, on_floor
    from worker.speech.local_asr import NO_SPEECH, _decode, _transcribe

    audio, _, _ = on_floor(burst(kind, seed), 0.3, 0.1, seed=700 + seed)
    text, no_speech = _decode(_whisper(), audio, "en")
    assert text and no_speech >= NO_SPEECH  # what Whisper says, and how little it believes it
    assert _transcribe(_whisper(), audio, "en") == ""
