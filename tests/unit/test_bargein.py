"""Barge-in (`vad.bargeIn`): the decision rule on a virtual clock, and a call's part acting on a real
server-side track."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.protocol import BargeInOption
from worker.call.bargein import BACKCHANNELS, BargeIn, BargeInRule, Verdict, words
from worker.call.tracks import ServerSide, ServerTrack


def rule(asr: bool = True) -> BargeInRule:
    return BargeInRule(300, 1500, BACKCHANNELS, asr)


def test_words_are_lower_case_without_punctuation() -> None:
    assert words("Uh-huh. Yeah, OK!") == ["uh-huh", "yeah", "ok"]
    assert words("Wait, stop.") == ["wait", "stop"]


def test_hums_count_as_backchannels_whatever_their_spelling() -> None:
    r = rule()
    for heard in ("M. M. M.", "Mmm-hmm", "Hmmm", "Uhhh"):
        r.speech(0, bot_playing=True, pause=False)
        r.ended(400, 400)
        verdict = r.heard(heard, final=True)
        assert verdict is not None and verdict.reason == "backchannel", heard
    r.speech(0, bot_playing=True, pause=False)
    r.ended(400, 400)
    assert r.heard("Um, stop", final=True) == Verdict("interrupt", "words", 0, "Um, stop")


def test_speech_while_the_bot_is_silent_is_not_judged() -> None:
    r = rule()
    assert r.speech(1000, bot_playing=False, pause=True) is False
    assert r.ended(1500, 500) is None and r.heard("wait", final=True) is None and r.tick(9000) is None


def test_a_backchannel_does_not_interrupt_and_the_paused_bot_resumes() -> None:
    r = rule()
    assert r.speech(1000, bot_playing=True, pause=True) is True
    assert r.tick(1200) is None
    assert r.ended(1400, 400) is None  # long enough: the words decide
    assert r.heard("Yeah.", final=True) == Verdict("resume", "backchannel", 1000, "Yeah.")
    # Without the pause (act: event) the same is an `ignore`.
    r.speech(5000, bot_playing=True, pause=False)
    r.ended(5400, 400)
    assert r.heard("Mm-hmm, okay.", final=True) == Verdict("ignore", "backchannel", 5000, "Mm-hmm, okay.")


def test_words_that_are_not_a_backchannel_interrupt_as_soon_as_they_are_heard() -> None:
    r = rule()
    r.speech(1000, bot_playing=True, pause=True)
    r.tick(1100)
    assert r.heard("wait", final=False) is None  # 100 ms of speech: too soon for an interim
    r.tick(1320)
    assert r.heard("Wait, stop", final=False) == Verdict("interrupt", "words", 1000, "Wait, stop")
    # A question, from its final.
    r.speech(4000, bot_playing=True, pause=True)
    r.ended(5200, 1200)
    assert r.heard("What time is it?", final=True) == Verdict("interrupt", "words", 4000, "What time is it?")


def test_short_sounds_blips_noise_and_silence_from_asr_resume() -> None:
    r = rule()
    r.speech(1000, bot_playing=True, pause=True)
    assert r.ended(1200, 200) == Verdict("resume", "short", 1000)  # under minSpeechMs
    r.speech(2000, bot_playing=True, pause=True)
    assert r.ended(2000, None) == Verdict("resume", "short", 2000)  # the VAD dropped it
    r.speech(3000, bot_playing=True, pause=True)
    r.ended(3500, 500)
    assert r.heard("", final=True) == Verdict("resume", "noise", 3000)
    r.speech(5000, bot_playing=True, pause=True)
    r.ended(5600, 600)
    assert r.tick(7000) is None
    assert r.tick(7100) == Verdict("resume", "no_words", 5000)  # resumeAfterMs after its end


def test_without_asr_long_enough_speech_interrupts() -> None:
    r = rule(asr=False)
    r.speech(1000, bot_playing=True, pause=True)
    assert r.tick(1280) is None
    assert r.tick(1300) == Verdict("interrupt", "speech", 1000)
    r.speech(2000, bot_playing=True, pause=False)
    assert r.ended(2200, 200) == Verdict("ignore", "short", 2000)


# --- a call's part on a real server-side track ----------------------------------------------------------


def side() -> tuple[ServerSide, list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []

    async def open_media(source: str) -> np.ndarray:
        return np.zeros(16000, dtype=np.float32)

    s = ServerSide("c1", out.append, lambda r, i: None, lambda: False, open_media, track_id="bot")
    s.start(ServerTrack(play_id="p", source="tts", started_ms=0))
    return s, out


def test_act_interrupt_pauses_then_resumes_or_ends_the_track() -> None:
    s, out = side()
    barge = BargeIn(BargeInOption(act="interrupt"), True, s, out.append)
    track = s.track
    assert track is not None
    barge.speech_started(1000)
    assert track.paused, "paused the moment the caller speaks over it"
    barge.speech_ended(1400, 400)
    barge.transcript("Yeah.", True)
    assert s.track is track and not track.paused, "a backchannel: it plays on where it paused"
    barge.speech_started(3000)
    barge.tick(3400)
    barge.transcript("Wait, stop.", False)
    assert s.track is None, "interrupted"
    names = [(e["event"], e.get("decision")) for e in out]
    assert names == [
        ("trackStart", None),
        ("bargeIn", "resume"),
        ("bargeIn", "interrupt"),
        ("trackEnd", None),
    ]
    verdicts = [e for e in out if e["event"] == "bargeIn"]
    assert verdicts[0]["trackId"] == "bot" and verdicts[0]["reason"] == "backchannel"
    assert verdicts[1]["text"] == "Wait, stop." and verdicts[1]["startTime"] == 3000


def test_event_only_never_touches_the_track_nor_a_track_the_client_paused() -> None:
    s, out = side()
    barge = BargeIn(BargeInOption(ignore_words=["sure thing"]), True, s, out.append)
    barge.speech_started(1000)
    assert s.track is not None and not s.track.paused
    barge.speech_ended(1400, 400)
    barge.transcript("Sure thing!", True)
    barge.speech_started(2000)
    barge.speech_ended(2500, 500)
    barge.transcript("Yeah", True)  # not in this call's own list
    assert [(e["decision"], e["reason"]) for e in out if e["event"] == "bargeIn"] == [
        ("ignore", "backchannel"),
        ("interrupt", "words"),
    ]
    assert s.track is not None, "act: event leaves the track to the client"
    s2, out2 = side()
    s2.pause(True)  # the client's own pause
    acting = BargeIn(BargeInOption(act="interrupt"), True, s2, out2.append)
    acting.speech_started(1000)
    assert [e["event"] for e in out2] == ["trackStart"], "a paused track is not speech to barge in on"


def test_a_transcript_of_an_earlier_utterance_is_not_about_the_judged_one() -> None:
    r = rule()
    r.speech(5000, bot_playing=True, pause=True)
    r.ended(5400, 400)
    assert r.heard("I want the blue one", final=True, start_ms=3000) is None  # spoken before the bot began
    assert r.heard("Okay.", final=True, start_ms=4990) == Verdict("resume", "backchannel", 5000, "Okay.")
