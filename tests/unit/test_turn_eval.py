"""A small fixed subset of the labelled turn-taking set (bench/turn_eval.py), decided as the bench decides
it: the real Smart Turn model and the real Whisper, on the default voice."""

from __future__ import annotations

import pytest

from bench.turn_eval import Heard, barge_on, burst, local_on, on_floor, say, smart_turn_on
from worker.speech.smart_turn import TurnModel


@pytest.fixture(scope="module")
def model() -> Heard:
    return Heard(TurnModel(), whole=False)  # the server's default window


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I would like to book a table for two at seven tonight.", "complete"),
        ("I would like to", "incomplete"),
        ("I was wondering if", "incomplete"),
    ],
)
def test_smart_turn_ends_complete_turns_only_and_the_timer_ends_all(
    model: Heard, text: str, label: str
) -> None:
    audio, _, end = on_floor(say(text, "joe"), 0.5, 1.5, seed=1)
    smart = smart_turn_on(model, audio, end, label)
    assert smart.fired == (label == "complete") and not smart.early
    if smart.latency_ms is not None:
        assert 0 < smart.latency_ms <= 400  # the model's time (~40 ms) and a frame, generously
    local = local_on(audio, end, label)
    assert local.fired and not local.early and local.latency_ms == 600


@pytest.mark.parametrize(
    ("sound", "decision", "reason"),
    [("sure", "resume", "backchannel"), ("okay", "resume", "backchannel"), ("wait", "interrupt", "words"),
     ("cough", "resume", "short")],
)  # fmt: skip
def test_barge_in_on_backchannels_noise_and_an_interruption(sound: str, decision: str, reason: str) -> None:
    clip = burst(sound, 0) if sound == "cough" else say(sound, "joe")
    audio, start, _ = on_floor(clip, 0.5, 2.0, seed=2)
    result = barge_on(audio, start, "")
    assert result.speaking_at is not None, "speaking-based barge-in would have interrupted"
    assert result.verdict is not None
    assert (result.verdict.decision, result.verdict.reason) == (decision, reason)
