"""The mediaPass pieces without sockets: the two dialects and the bot's player."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from common.protocol import MediaPassOption, redact
from common.redact import redact_url
from tests.audio_util import peak_freq, tone
from worker.bot.dialect import BadBotMessage, BotAudio, BotClear, BotMark, RawDialect, TwilioDialect
from worker.bot.player import FRAME, IDLE_END_FRAMES, BotPlayer
from worker.media import g711


def test_raw_packets_are_exactly_packet_size_at_the_bot_rate() -> None:
    d = RawDialect(MediaPassOption(url="ws://b/x?k=1", output_sample_rate=8000, packet_size=400))
    assert d.url("ws://b/x?k=1") == "ws://b/x?k=1&sample_rate=8000&packet_size=400"
    packets = []
    audio = tone(1000, 1.0)
    for i in range(0, len(audio), 320):
        packets += d.caller_audio(audio[i : i + 320], 0)
    assert {len(p) for p in packets} == {400}
    assert len(packets) == 8000 * 2 // 400
    heard = np.frombuffer(b"".join(p for p in packets if isinstance(p, bytes)), dtype="<i2")
    assert abs(peak_freq(heard, rate=8000) - 1000) < 10


def test_raw_default_packet_is_20_ms_and_bot_audio_is_resampled() -> None:
    d = RawDialect(MediaPassOption(url="ws://b", input_sample_rate=24000))
    assert d.url("ws://b") == "ws://b?sample_rate=16000&packet_size=640"
    data = tone(500, 1.0, rate=24000).astype("<i2").tobytes()
    out = []
    for i in range(0, len(data), 999):  # odd sizes: samples split between messages
        out += d.decode(data[i : i + 999])
    pcm = np.concatenate([a.pcm for a in out if isinstance(a, BotAudio)])
    assert 15500 <= len(pcm) <= 16000 and abs(peak_freq(pcm) - 500) < 10
    with pytest.raises(BadBotMessage):
        d.decode("text")


def test_twilio_messages_count_and_stamp_as_twilio_does() -> None:
    d = TwilioDialect("call-1", {"a": "b", "n": 3})
    assert json.loads(d.opened()[0]) == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = json.loads(d.started(1000)[0])
    assert start["sequenceNumber"] == "1" and start["start"]["customParameters"] == {"a": "b", "n": "3"}
    msgs = []
    audio = tone(1000, 0.1)
    for i in range(0, len(audio), 320):
        msgs += d.caller_audio(audio[i : i + 320], 1020 + i // 16)
    media = [json.loads(m) for m in msgs]
    assert [m["sequenceNumber"] for m in media] == ["2", "3", "4", "5", "6"]
    assert [m["media"]["chunk"] for m in media] == ["1", "2", "3", "4", "5"]
    assert [m["media"]["timestamp"] for m in media] == ["0", "20", "40", "60", "80"]
    # A gap in the caller's audio moves the clock up to the wall clock.
    later = json.loads(d.caller_audio(audio[:320], 1000 + 5000)[0])
    assert 4950 <= int(later["media"]["timestamp"]) <= 5000
    assert json.loads(d.digit("7")[0])["dtmf"] == {"track": "inbound_track", "digit": "7"}
    assert json.loads(d.stopped()[0])["stop"]["callSid"] == "call-1"


def test_twilio_bot_messages() -> None:
    d = TwilioDialect("c", None)
    payload = base64.b64encode(g711.ulaw_encode(tone(600, 0.02, rate=8000))).decode()
    (audio,) = d.decode(json.dumps({"event": "media", "media": {"payload": payload}}))
    assert isinstance(audio, BotAudio) and len(audio.pcm) == 320
    assert d.decode('{"event":"mark","mark":{"name":"x"}}') == [BotMark("x")]
    assert d.decode('{"event":"clear"}') == [BotClear()]
    assert d.decode('{"event":"whatever"}') == []
    for junk in ("nope", b"\x00", "[]", '{"event":"media"}', '{"event":"media","media":{"payload":"%"}}'):
        with pytest.raises(BadBotMessage):
            d.decode(junk)


def test_player_marks_answer_once_played_and_clear_answers_the_rest() -> None:
    answered: list[str] = []
    p = BotPlayer(answered.append)
    p.mark("empty")
    assert answered == ["empty"]
    p.add(np.ones(FRAME * 3, dtype=np.int16))
    p.mark("three")
    p.add(np.ones(FRAME * 2, dtype=np.int16))
    p.mark("five")
    for _ in range(2):
        assert p.next_frame() is not None
    assert answered == ["empty"]
    p.next_frame()
    assert answered == ["empty", "three"]
    p.clear()
    assert answered == ["empty", "three", "five"] and p.pending == 0
    assert p.next_frame() is None and p.finished


def test_player_track_spans_short_gaps_and_cut_drops_the_rest_of_the_sentence() -> None:
    p = BotPlayer(lambda _n: None)
    p.add(np.ones(FRAME, dtype=np.int16))
    assert p.next_frame() is not None
    for _ in range(IDLE_END_FRAMES - 1):
        assert p.next_frame() is None and not p.finished
    assert p.next_frame() is None and p.finished
    p.add(np.ones(FRAME * 10, dtype=np.int16))
    p.cut()
    assert p.pending == 0
    assert not p.add(np.ones(FRAME, dtype=np.int16)), "still the same sentence"
    p._last_audio -= 1.0  # the bot paused
    assert p.add(np.ones(FRAME, dtype=np.int16)), "a new sentence plays"


def test_player_partial_frame_waits_a_tick_then_plays_padded() -> None:
    p = BotPlayer(lambda _n: None)
    p.add(np.ones(100, dtype=np.int16))
    assert p.next_frame() is None
    frame = p.next_frame()
    assert frame is not None and len(frame) == FRAME and frame[:100].all() and not frame[100:].any()


def test_bot_url_credentials_are_redacted() -> None:
    assert redact_url("wss://u:pw@h/p?token=abc&lang=en") == "wss://u:***@h/p?token=***&lang=en"
    shown = redact({"mediaPass": {"url": "ws://h/p?apiKey=k1&x=1"}})
    assert shown == {"mediaPass": {"url": "ws://h/p?apiKey=***&x=1"}}
    assert "k1" not in repr(MediaPassOption(url="ws://h/p?apiKey=k1"))


@pytest.mark.parametrize("level,trimmed", [(0, 1), (8000, 0)])
def test_player_trims_a_standing_backlog_only_in_silence(level: int, trimmed: int) -> None:
    from worker.bot.player import TRIM_WINDOW

    p = BotPlayer(lambda _n: None)
    frame = np.full(FRAME, level, dtype=np.int16)
    p.add(frame)
    p.add(frame)  # one packet came late once: a frame stands in the queue from now on
    backlog = []
    for _ in range(3 * TRIM_WINDOW):
        assert p.next_frame() is not None
        backlog.append(p.pending)
        p.add(frame)
    assert p.trimmed == trimmed
    if trimmed:
        assert backlog[-1] == 0, "the backlog (latency) came back down"
        assert p.dropped == 0, "a trimmed silent frame is not counted as dropped audio"
    else:
        assert set(backlog) == {FRAME}, "speech is never cut to save latency"
