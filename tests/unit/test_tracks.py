"""The server-side track's rules (worker/call/tracks.py) on a virtual clock: no process, no socket, no sleep.

The loop's clock jumps (tests/sip/test_transaction.py), the track reads it as its `now`, and each test calls
the 20 ms tick itself, so every event's time and every frame's samples are exact.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from common.protocol import Tts
from tests.sip import test_transaction
from worker.bot.player import IDLE_END_FRAMES, BotPlayer
from worker.call.speaking import CallSpeaker
from worker.call.tracks import ServerSide
from worker.media.player import BridgePlayer
from worker.paths import MediaNotFound

TICK = 0.02
SIDE = "server-side-track"


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run on the virtual clock; tasks left behind (a TTS track's synthesis loop) are cancelled at the end."""

    async def wrapped() -> None:
        try:
            await test()
        finally:
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

    test_transaction.run(wrapped)


def ramp(ms: int) -> np.ndarray:
    """`ms` of audio whose every sample is its own index: a frame tells where in the file it came from."""
    return np.arange(ms * 16, dtype=np.int16)


class Call:
    """What the track sees of a call: the events it emits and the hangups it asks for, in one list."""

    def __init__(self, media: dict[str, np.ndarray] | None = None) -> None:
        self.media = media or {"a.wav": ramp(1000), "b.wav": ramp(200), "short.wav": ramp(100)}
        self.log: list[dict[str, Any]] = []
        self.ending = False
        self.side = ServerSide(
            "c1", self.log.append, self.hang_up, lambda: self.ending, self.open, self.bot_done, now=self.now
        )
        self.speaker = CallSpeaker(self.side, SimpleNamespace(), "c1", self.log.append, lambda: self.ending)

    @staticmethod
    def now() -> int:
        return round(asyncio.get_running_loop().time() * 1000)

    def hang_up(self, reason: str, initiator: str) -> None:
        self.log.append(
            {"event": "HANGUP", "reason": reason, "initiator": initiator, "timestamp": self.now()}
        )

    def bot_done(self) -> None:
        self.log.append({"event": "BOT_DONE", "timestamp": self.now()})

    async def open(self, source: str) -> np.ndarray:
        if source not in self.media:
            raise MediaNotFound()
        return self.media[source]

    async def ticks(self, n: int) -> list[np.ndarray | None]:
        frames = []
        for _ in range(n):
            await asyncio.sleep(TICK)
            frames.append(self.side.tick())
        return frames

    def names(self) -> list[str]:
        return [e["event"] for e in self.log]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log if e["event"] == name]


def starts(frames: list[np.ndarray | None]) -> list[int | None]:
    """Each frame's first sample (its position in a ramp), None where no frame came."""
    return [None if f is None else int(f[0]) for f in frames]


def pcm(ms: int, value: int = 7) -> str:
    return base64.b64encode(np.full(ms * 16, value, dtype="<i2").tobytes()).decode()


def test_play_gives_one_frame_per_tick_then_track_end() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("a.wav", play_id="p1")
        frames = await call.ticks(52)
        assert starts(frames[:50]) == [320 * i for i in range(50)], (
            "1 s is 50 frames of 320 samples, in order"
        )
        assert all(f is not None and len(f) == 320 for f in frames[:50])
        assert frames[50:] == [None, None]
        assert call.names() == ["trackStart", "trackEnd"]
        start, end = call.log
        assert start == {
            "event": "trackStart",
            "trackId": "server-side-track",
            "timestamp": 0,
            "playId": "p1",
        }
        # The tick after the last frame sees the file played out.
        assert end["timestamp"] == 1020 and end["duration"] == 1020
        assert end["trackId"] == "server-side-track" and end["playId"] == "p1"
        assert isinstance(end["ssrc"], int)
        assert call.side.track is None

    run(scenario)


def test_play_id_defaults_to_the_url_and_a_short_tail_is_padded() -> None:
    async def scenario() -> None:
        call = Call({"odd.wav": np.ones(500, dtype=np.int16)})
        call.side.play("odd.wav")
        frames = await call.ticks(3)
        assert frames[0] is not None and (frames[0] == 1).all()
        tail = frames[1]
        assert tail is not None and (tail[:180] == 1).all() and (tail[180:] == 0).all()
        assert frames[2] is None
        assert [e.get("playId") for e in call.log] == ["odd.wav", "odd.wav"]

    run(scenario)


def test_an_offset_starts_that_far_into_the_file() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("a.wav", play_id="p", offset_ms=730)
        frames = await call.ticks(15)
        # 730 ms in is sample 11680: 270 ms are left, 13 whole frames and a 10 ms tail padded with silence.
        assert starts(frames) == [11680 + 320 * i for i in range(14)] + [None]
        tail = frames[13]
        assert tail is not None and int(tail[159]) == 15999 and not tail[160:].any()
        assert call.names() == ["trackStart", "trackEnd"]
        assert call.log[1]["timestamp"] == 300 and call.log[1]["playId"] == "p"

    run(scenario)


@pytest.mark.parametrize("offset_ms", [1000, 1001, 60_000, 2**64 - 1])
def test_an_offset_at_or_past_the_end_plays_nothing_and_ends_the_track_as_an_empty_file(
    offset_ms: int,
) -> None:
    async def scenario() -> None:
        call = Call({"a.wav": ramp(1000), "empty.wav": ramp(0)})
        call.side.play("a.wav", offset_ms=offset_ms, auto_hangup=True)
        past = await call.ticks(3)
        past_log, call.log[:] = list(call.log), []
        call.side.play("empty.wav", auto_hangup=True)
        empty = await call.ticks(3)
        assert past == empty == [None, None, None]
        for log in (past_log, call.log):
            assert [e["event"] for e in log] == ["trackStart", "trackEnd", "HANGUP"]
            assert log[1]["duration"] == 20, "ended on the first tick"

    run(scenario)


def test_every_event_of_the_track_carries_its_track_id() -> None:
    """The socket's `serverSideTrack` names the track in its events, errors included."""

    async def scenario() -> None:
        call = Call()
        call.side = ServerSide(
            "c1", call.log.append, call.hang_up, lambda: False, call.open, now=call.now, track_id="agent"
        )
        call.side.play("b.wav", wait_input_timeout=100)
        await call.ticks(20)
        call.side.play("nowhere.wav")
        await call.ticks(2)
        assert call.names() == ["trackStart", "trackEnd", "silence", "trackStart", "error", "trackEnd"]
        assert {e["trackId"] for e in call.log} == {"agent"}

    run(scenario)


def test_a_new_play_ends_the_old_track_before_it_starts() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("a.wav", play_id="first", auto_hangup=True)
        await call.ticks(10)
        call.side.play("b.wav", play_id="second")
        frames = await call.ticks(11)
        assert starts(frames) == [320 * i for i in range(10)] + [None], "the new file plays from its start"
        assert [(e["event"], e.get("playId")) for e in call.log] == [
            ("trackStart", "first"),
            ("trackEnd", "first"),
            ("trackStart", "second"),
            ("trackEnd", "second"),
        ]
        assert call.log[1]["duration"] == 200
        assert "HANGUP" not in call.names(), "a replaced track does not apply its autoHangup"

    run(scenario)


def test_interrupt_ends_the_track_at_once_with_nothing_after_it() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("a.wav", auto_hangup=True)
        await call.ticks(15)
        call.side.interrupt()
        assert call.names() == ["trackStart", "trackEnd"]
        assert call.log[-1]["duration"] == 300
        assert await call.ticks(60) == [None] * 60
        assert call.names() == ["trackStart", "trackEnd"], "no autoHangup after an interrupt"
        call.side.interrupt()  # nothing plays: nothing happens
        assert call.names() == ["trackStart", "trackEnd"]

    run(scenario)


def test_pause_holds_the_position_and_resume_goes_on_from_it() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("a.wav")
        before = await call.ticks(10)
        call.side.pause(True)
        paused = await call.ticks(25)
        call.side.pause(False)
        after = await call.ticks(41)
        assert paused == [None] * 25, "no frames while paused"
        assert starts(before + after[:40]) == [320 * i for i in range(50)], "nothing lost, nothing repeated"
        assert after[40] is None
        end = call.named("trackEnd")
        assert len(end) == 1 and end[0]["duration"] == (10 + 25 + 41) * 20, "the pause counts in the duration"

    run(scenario)


def test_mute_plays_silence_while_the_track_goes_on_underneath() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("a.wav")
        await call.ticks(5)
        call.side.muted = True
        muted = await call.ticks(5)
        call.side.muted = False
        (frame,) = await call.ticks(1)
        assert all(f is not None and not f.any() for f in muted), "silent frames, still one per tick"
        assert frame is not None and int(frame[0]) == 320 * 10, "the track went on while muted"

    run(scenario)


def test_auto_hangup_comes_after_the_track_end() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("short.wav", auto_hangup=True, wait_input_timeout=500)
        frames = await call.ticks(6)
        assert sum(f is not None for f in frames) == 5
        assert call.names() == ["trackStart", "trackEnd", "HANGUP"]
        hangup = call.log[-1]
        assert (hangup["reason"], hangup["initiator"], hangup["timestamp"]) == ("autohangup", "system", 120)
        await call.ticks(30)
        assert "silence" not in call.names(), "autoHangup wins over waitInputTimeout"

    run(scenario)


def test_no_auto_hangup_once_the_call_is_ending() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("short.wav", auto_hangup=True)
        await call.ticks(3)
        call.ending = True
        call.side.close()
        assert call.names() == ["trackStart", "trackEnd"]

    run(scenario)


def test_wait_input_timeout_fires_after_the_timeout() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("short.wav", wait_input_timeout=1000)
        await call.ticks(6)
        end = call.named("trackEnd")[0]["timestamp"]
        assert end == 120
        await call.ticks(49)
        assert "silence" not in call.names(), "not before the timeout"
        await call.ticks(1)
        assert call.names() == ["trackStart", "trackEnd", "silence"]
        silence = call.log[-1]
        assert silence["timestamp"] == end + 1000
        assert (silence["trackId"], silence["startTime"], silence["duration"]) == (
            "server-side-track",
            end,
            1000,
        )
        await call.ticks(100)
        assert call.names().count("silence") == 1, "once"

    run(scenario)


def test_wait_input_timeout_is_cancelled_by_caller_input_or_a_new_track() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("short.wav", wait_input_timeout=400)
        await call.ticks(10)
        call.side.input_detected()  # what the listener calls on speech, DTMF or a transcript
        await call.ticks(50)
        assert "silence" not in call.names()

        call.side.play("short.wav", wait_input_timeout=400)
        await call.ticks(10)
        call.side.play("b.wav")  # a new track before the timeout
        await call.ticks(50)
        assert "silence" not in call.names()

    run(scenario)


def test_wait_input_timeout_does_not_follow_an_interrupt() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("a.wav", wait_input_timeout=100)
        await call.ticks(3)
        call.side.interrupt()
        await call.ticks(20)
        assert call.names() == ["trackStart", "trackEnd"]

    run(scenario)


def test_a_missing_file_is_an_error_and_an_ended_track() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play("nope.wav", source_field="ringing.ringtone")
        await call.ticks(2)
        assert call.names() == ["trackStart", "error", "trackEnd"]
        error = call.log[1]
        assert (error["trackId"], error["sender"], error["code"]) == (
            "server-side-track",
            "filetrack: nope.wav",
            404,
        )
        assert error["error"].startswith("ringing.ringtone: ")

    run(scenario)


def test_a_file_that_fails_to_load_for_a_bug_still_ends_its_track(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        call = Call()

        async def broken(source: str) -> np.ndarray:
            raise RuntimeError("a decoder bug")

        call.side._open_media = broken
        call.side.play("a.wav")
        await call.ticks(2)
        assert call.names() == ["trackStart", "error", "trackEnd"]
        assert (call.log[1]["code"], call.log[1]["sender"]) == (500, "filetrack: a.wav")
        assert "a decoder bug" not in call.log[1]["error"], "the client is not told the internals"

    run(scenario)
    assert any(r.exc_info and "loading a.wav failed" in r.getMessage() for r in caplog.records)


def test_music_on_hold_loops_until_it_is_ended() -> None:
    async def scenario() -> None:
        call = Call()
        call.side.play_moh("b.wav")
        frames = await call.ticks(25)
        assert starts(frames) == [320 * (i % 10) for i in range(25)], "starts over at its end"
        call.side.end_moh()
        assert call.names() == ["trackStart", "trackEnd"]
        assert call.log[0]["playId"] == "b.wav"

    run(scenario)


def test_a_bridge_plays_what_arrives_and_silence_between() -> None:
    async def scenario() -> None:
        call = Call()
        bridge = BridgePlayer()
        call.side.start_bridge(bridge, ssrc=1234)
        bridge.feed(np.full(320, 5, dtype=np.int16))
        frames = await call.ticks(2)
        assert frames[0] is not None and (frames[0] == 5).all()
        assert frames[1] is not None and not frames[1].any()
        call.side.end_bridge(BridgePlayer())  # another bridge: not this track
        assert call.side.track is not None
        call.side.end_bridge(bridge)
        assert [(e["event"], e.get("ssrc")) for e in call.log][1] == ("trackEnd", 1234)

    run(scenario)


# --- TTS (worker/call/speaking.py on the track); base64 PCM needs no provider -------------------------------


def test_tts_with_the_same_play_id_is_appended_to_the_track() -> None:
    async def scenario() -> None:
        call = Call()
        call.speaker.tts(Tts(text=pcm(100, 1), base64=True, play_id="t1"))
        await call.ticks(2)
        call.speaker.tts(Tts(text=pcm(100, 2), base64=True, play_id="t1", auto_hangup=True))
        frames = await call.ticks(11)
        values = [None if f is None else int(f[0]) for f in frames]
        assert values == [1, 1, 1, 2, 2, 2, 2, 2, None, None, None], "appended: played after what was queued"
        assert call.names() == ["trackStart", "trackEnd", "HANGUP"], "one track; the later autoHangup applies"
        assert call.log[1]["duration"] == 220, "ends on the tick after its last frame"
        assert call.log[1]["playId"] == "t1"

    run(scenario)


def test_tts_with_another_play_id_interrupts_and_reports_what_was_heard() -> None:
    async def scenario() -> None:
        call = Call()
        call.speaker.tts(Tts(text=pcm(1000, 1), base64=True, play_id="t1", auto_hangup=True))
        await call.ticks(10)
        call.speaker.tts(Tts(text=pcm(100, 2), base64=True, play_id="t2"))
        frames = await call.ticks(6)
        assert [None if f is None else int(f[0]) for f in frames] == [2, 2, 2, 2, 2, None]
        assert [(e["event"], e.get("playId")) for e in call.log] == [
            ("trackStart", "t1"),
            ("interruption", "t1"),
            ("trackEnd", "t1"),
            ("trackStart", "t2"),
            ("trackEnd", "t2"),
        ]
        cut = call.log[1]
        assert (cut["current"], cut["totalDuration"]) == (200, 1000), "10 of 50 frames were heard"

    run(scenario)


def test_graceful_interrupt_finishes_the_sentence_and_drops_the_rest() -> None:
    async def scenario() -> None:
        call = Call()
        call.speaker.tts(Tts(text=pcm(100, 1), base64=True, play_id="t", auto_hangup=True))
        call.speaker.tts(Tts(text=pcm(100, 2), base64=True, play_id="t"))
        await call.ticks(2)
        call.side.interrupt(graceful=True)
        frames = await call.ticks(5)
        assert [None if f is None else int(f[0]) for f in frames] == [1, 1, 1, None, None]
        assert call.names() == ["trackStart", "trackEnd"], "no interruption figures, no autoHangup"
        call.speaker.tts(Tts(text=pcm(40, 3), base64=True, play_id="t"))  # same playId: a new track now
        assert call.names()[-1] == "trackStart"

    run(scenario)


def test_tts_pause_and_resume_lose_nothing() -> None:
    async def scenario() -> None:
        call = Call()
        ramp_pcm = base64.b64encode(ramp(200).astype("<i2").tobytes()).decode()
        call.speaker.tts(Tts(text=ramp_pcm, base64=True))
        before = await call.ticks(3)
        call.side.pause(True)
        assert await call.ticks(10) == [None] * 10
        call.side.pause(False)
        after = await call.ticks(8)
        assert starts(before + after[:7]) == [320 * i for i in range(10)]
        assert call.names() == ["trackStart", "trackEnd"]

    run(scenario)


def test_a_play_replaces_a_tts_track() -> None:
    async def scenario() -> None:
        call = Call()
        call.speaker.tts(Tts(text=pcm(1000), base64=True, play_id="t"))
        await call.ticks(5)
        call.side.play("b.wav", play_id="p")
        await call.ticks(12)
        assert [(e["event"], e.get("playId")) for e in call.log] == [
            ("trackStart", "t"),
            ("interruption", "t"),
            ("trackEnd", "t"),
            ("trackStart", "p"),
            ("trackEnd", "p"),
        ]

    run(scenario)


def test_interrupt_on_a_tts_track_reports_what_was_heard_and_stops_at_once() -> None:
    async def scenario() -> None:
        call = Call()
        call.speaker.tts(Tts(text=pcm(1000), base64=True, play_id="long", auto_hangup=True))
        heard = await call.ticks(10)
        call.side.interrupt()
        after = await call.ticks(20)
        assert all(f is not None for f in heard) and after == [None] * 20, "no frame after the interrupt"
        assert [(e["event"], e.get("playId")) for e in call.log] == [
            ("trackStart", "long"),
            ("interruption", "long"),
            ("trackEnd", "long"),
        ]
        cut, end = call.log[1], call.log[2]
        assert (cut["current"], cut["totalDuration"], cut["trackId"]) == (200, 1000, SIDE)
        assert cut["timestamp"] == end["timestamp"] == end["duration"] == 200

    run(scenario)


def test_tts_auto_hangup_comes_after_its_last_frame() -> None:
    async def scenario() -> None:
        call = Call()
        call.speaker.tts(Tts(text=pcm(100), base64=True, play_id="bye", auto_hangup=True))
        frames = await call.ticks(8)
        assert sum(f is not None for f in frames) == 5, "every frame plays before the hangup"
        assert call.names() == ["trackStart", "trackEnd", "HANGUP"]
        assert call.log[1]["timestamp"] == call.log[2]["timestamp"] == 120
        assert (call.log[2]["reason"], call.log[2]["initiator"]) == ("autohangup", "system")

    run(scenario)


def test_tts_wait_input_timeout_counts_from_its_track_end() -> None:
    async def scenario() -> None:
        call = Call()
        call.speaker.tts(Tts(text=pcm(100), base64=True, play_id="q", wait_input_timeout=600))
        await call.ticks(6 + 29)
        assert "silence" not in call.names()
        await call.ticks(1)
        assert call.names() == ["trackStart", "trackEnd", "silence"]
        assert call.log[-1]["startTime"] == 120 and call.log[-1]["timestamp"] == 720

    run(scenario)


# --- the mediaPass bot's audio -----------------------------------------------------------------------------


def test_the_bots_track_ends_after_its_idle_gap_and_says_so() -> None:
    async def scenario() -> None:
        call = Call()
        bot = BotPlayer(lambda mark: None)
        bot.add(np.full(640, 3, dtype=np.int16))
        call.side.start_bot(bot)
        frames = await call.ticks(2 + IDLE_END_FRAMES + 1)
        assert sum(f is not None for f in frames) == 2
        assert call.names() == ["trackStart", "trackEnd", "BOT_DONE"], "no autoHangup: the session decides"
        assert call.log[0].get("playId") is None
        assert call.log[1]["timestamp"] == (2 + IDLE_END_FRAMES) * 20, "ends on its tenth idle tick"

    run(scenario)


def test_an_interrupt_cuts_the_bots_sentence() -> None:
    async def scenario() -> None:
        call = Call()
        bot = BotPlayer(lambda mark: None)
        bot.add(np.full(16000, 3, dtype=np.int16))
        call.side.start_bot(bot)
        await call.ticks(5)
        call.side.interrupt()
        assert bot.pending == 0 and bot.dropped == 16000 - 5 * 320, "what was queued is dropped"
        assert not bot.add(np.full(320, 3, dtype=np.int16)), "and the rest of the sentence as it comes"
        assert call.names() == ["trackStart", "trackEnd"]

    run(scenario)
