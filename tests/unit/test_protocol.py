"""Parsing client commands: every command of the API document, defaults, and errors that name the field."""

from __future__ import annotations

import json

import pytest

from common.errors import BadCommand
from common.protocol import (
    Candidate,
    Custom,
    Hangup,
    History,
    Interrupt,
    Invite,
    Mute,
    Pause,
    Play,
    Refer,
    Reject,
    Resume,
    Ringing,
    Tts,
    Unmute,
    command_to_dict,
    parse_command,
    parse_duration,
    redact,
)


def parse(obj: object) -> object:
    return parse_command(json.dumps(obj))


def test_invite_with_full_call_option() -> None:
    cmd = parse(
        {
            "command": "invite",
            "option": {
                "denoise": True,
                "offer": "v=0",
                "callee": "sip:a@b",
                "caller": "sip:c@d",
                "recorder": {"recorderFile": "/tmp/r.wav", "samplerate": 16000, "ptime": "200ms"},
                "vad": {"type": "webrtc", "aggressiveness": 3},
                "asr": {
                    "provider": "tencent",
                    "model": "16k_zh",
                    "language": "zh-CN",
                    "appId": "1",
                    "secretId": "i",
                    "secretKey": "k",
                    "modelType": "16k_zh",
                    "bufferSize": 1024,
                    "samplerate": 16000,
                    "endpoint": "https://asr",
                    "extra": {},
                },
                "tts": {
                    "samplerate": 16000,
                    "provider": "tencent",
                    "speed": 1,
                    "volume": 5,
                    "speaker": "101002",
                    "codec": "pcm",
                    "subtitle": False,
                    "emotion": "neutral",
                    "endpoint": "https://tts",
                    "extra": {},
                },
                "handshakeTimeout": "30s",
                "enableIpv6": False,
                "sip": {"username": "u", "password": "p", "realm": "r", "headers": {"X-A": "b"}},
                "extra": {"k": "v"},
                "codec": "PCMU",
                "eou": {
                    "type": "tencent",
                    "endpoint": "https://eou",
                    "secretKey": "s",
                    "secretId": "i",
                    "timeout": 5000,
                },
                "unknownField": 1,
            },
        }
    )
    assert isinstance(cmd, Invite)
    opt = cmd.option
    assert opt.denoise is True and opt.callee == "sip:a@b"
    assert opt.recorder is not None and opt.recorder.recorder_file == "/tmp/r.wav"
    assert opt.vad is not None and opt.vad.aggressiveness == 3
    assert opt.asr is not None and opt.asr.secret_key == "k" and opt.asr.buffer_size == 1024
    assert opt.tts is not None and opt.tts.speed == 1.0 and isinstance(opt.tts.speed, float)
    assert opt.sip is not None and opt.sip.password == "p" and opt.sip.headers == {"X-A": "b"}
    assert opt.eou is not None and opt.eou.timeout == 5000
    assert opt.handshake_seconds() == 30.0


def test_secrets_never_in_repr() -> None:
    cmd = parse(
        {
            "command": "invite",
            "option": {
                "sip": {"password": "hunter2"},
                "asr": {"secretKey": "sk-1", "secretId": "id-1"},
                "tts": {"secretKey": "sk-2"},
            },
        }
    )
    text = repr(cmd)
    for secret in ("hunter2", "sk-1", "id-1", "sk-2"):
        assert secret not in text


def test_every_command_parses_with_defaults() -> None:
    assert parse({"command": "invite"}) == Invite()
    assert parse({"command": "reject", "reason": "busy", "code": 486}) == Reject(reason="busy", code=486)
    assert parse({"command": "ringing", "earlyMedia": True}) == Ringing(early_media=True)
    assert parse({"command": "candidate", "candidates": ["a", "b"]}) == Candidate(candidates=["a", "b"])
    tts = parse(
        {
            "command": "tts",
            "text": "hi",
            "speaker": "s",
            "playId": "p",
            "autoHangup": False,
            "streaming": True,
            "endOfStream": False,
            "waitInputTimeout": 5000,
        }
    )
    assert tts == Tts(
        text="hi",
        speaker="s",
        play_id="p",
        auto_hangup=False,
        streaming=True,
        end_of_stream=False,
        wait_input_timeout=5000,
    )
    assert parse({"command": "play", "url": "a.wav"}) == Play(url="a.wav")
    assert parse({"command": "play", "url": "a.wav", "offsetMs": 0}) == Play(url="a.wav", offset_ms=0)
    assert parse({"command": "interrupt"}) == Interrupt()
    assert parse({"command": "pause"}) == Pause() and parse({"command": "resume"}) == Resume()
    assert parse({"command": "hangup"}) == Hangup()
    refer = parse(
        {
            "command": "refer",
            "target": "sip:x@y",
            "options": {"bypass": False, "timeout": 30, "moh": "m.wav", "autoHangup": True},
        }
    )
    assert isinstance(refer, Refer) and refer.options is not None and refer.options.auto_hangup is True
    assert parse({"command": "mute", "trackId": "t"}) == Mute(track_id="t")
    assert parse({"command": "unmute"}) == Unmute()
    assert parse({"command": "history", "speaker": "u", "text": "t"}) == History(speaker="u", text="t")


def test_custom_takes_any_json_and_null_but_not_nothing() -> None:
    data = {"a": [1, 2.5, None, {"b": True}], "s": "x"}
    assert parse({"command": "custom", "sender": "app", "data": data}) == Custom(sender="app", data=data)
    assert parse({"command": "custom", "data": 7}) == Custom(data=7)
    # `null` is a value here (active-call's `data` is any JSON): kept, and written back out.
    cmd = parse({"command": "custom", "data": None})
    assert cmd == Custom(data=None)
    assert isinstance(cmd, Custom) and command_to_dict(cmd) == {"command": "custom", "data": None}
    with pytest.raises(BadCommand, match=r"^data: required field is missing$"):
        parse({"command": "custom", "sender": "app"})
    with pytest.raises(BadCommand, match=r"^sender: expected a string, got a number$"):
        parse({"command": "custom", "sender": 1, "data": {}})


def test_legacy_end_of_stream_spelling() -> None:
    cmd = parse({"command": "tts", "text": "", "end_of_stream": True})
    assert isinstance(cmd, Tts) and cmd.end_of_stream is True
    assert command_to_dict(cmd) == {"command": "tts", "text": "", "endOfStream": True}


def test_null_optional_fields_are_absent() -> None:
    assert parse({"command": "play", "url": "a", "playId": None}) == Play(url="a")


def test_round_trip_is_camel_case_and_omits_none() -> None:
    cmd = parse({"command": "invite", "option": {"enableIpv6": True, "sip": {"hangup_headers": {"a": "b"}}}})
    assert command_to_dict(cmd) == {
        "command": "invite",
        "option": {"enableIpv6": True, "sip": {"hangup_headers": {"a": "b"}}},
    }


@pytest.mark.parametrize(
    "value,seconds", [(30, 30.0), ("30", 30.0), ("30s", 30.0), ("500ms", 0.5), (None, 15.0)]
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value, 15.0) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text,needle",
    [
        ("{", "invalid JSON"),
        ("null", "JSON object"),
        ('{"command": 1}', "command: expected a string"),
        ('{"command": "x"}', "unknown command"),
        ('{"command": "play", "url": ""}', "url: must not be empty"),
        ('{"command": "play", "url": "a", "offsetMs": -1}', "offsetMs: must not be negative"),
        ('{"command": "accept", "option": {"inactivityTimeout": -1}}', "option.inactivityTimeout: must not"),
        (
            '{"command": "invite", "option": {"inactivityTimeout": "30s"}}',
            "option.inactivityTimeout: expected an integer or a number, got a string",
        ),
        ('{"command": "play", "url": "a", "offsetMs": "1"}', "offsetMs: expected an integer, got a string"),
        ('{"command": "reject", "reason": "x", "code": "486"}', "code: expected an integer"),
        ('{"command": "reject", "reason": "x", "code": true}', "code: expected an integer"),
        ('{"command": "invite", "option": []}', "option: expected an object"),
        ('{"command": "invite", "option": {"sip": {"headers": {"a": 1}}}}', "option.sip.headers.a"),
        ('{"command": "candidate", "candidates": [1]}', "candidates[0]"),
        ('{"command": "refer", "options": {}}', "target"),
        ('{"command": "invite", "option": {"ringTimeout": "soon"}}', "option.ringTimeout: cannot read"),
        ('{"command": "invite", "option": {"ringTimeout": -1}}', "option.ringTimeout: must not be negative"),
        ('{"command": "invite", "option": {"ringTimeout": "0s"}}', "option.ringTimeout: must be more than 0"),
    ],
)
def test_errors_name_the_field(text: str, needle: str) -> None:
    with pytest.raises(BadCommand) as info:
        parse_command(text)
    assert needle in info.value.message


def test_codec_is_checked_only_where_the_socket_carries_audio() -> None:
    invite = '{"command": "invite", "option": {"codec": "opus"}}'
    with pytest.raises(BadCommand, match="option.codec: unsupported codec 'opus'"):
        parse_command(invite)
    with pytest.raises(BadCommand, match="option.codec"):
        parse_command(invite, "websocket")
    for call_type in ("webrtc", "sip"):
        cmd = parse_command(invite, call_type)
        assert isinstance(cmd, Invite) and cmd.option.codec == "opus", "kept as given, for /call/lists"
    with pytest.raises(BadCommand, match="option.codec: expected a string"):
        parse_command('{"command": "invite", "option": {"codec": 8}}', "webrtc")


@pytest.mark.parametrize(
    "option,seconds",
    [
        ({}, 60.0),  # the default
        ({"ringTimeout": "20s"}, 20.0),
        ({"ringTimeout": 1.5}, 1.5),
        ({"handshakeTimeout": "30s"}, 30.0),  # this server's first meaning of handshakeTimeout, kept
        ({"handshakeTimeout": 30, "ringTimeout": "500ms"}, 0.5),  # both given: ringTimeout wins
        ({"handshakeTimeout": 5, "ringTimeout": 90}, 90.0),
    ],
)
def test_ring_timeout(option: dict[str, object], seconds: float) -> None:
    cmd = parse({"command": "invite", "option": option})
    assert isinstance(cmd, Invite)
    assert cmd.option.ring_seconds() == seconds
    assert cmd.option.handshake_seconds() == parse_duration(option.get("handshakeTimeout"), 15.0)  # type: ignore[arg-type]


def test_oversized_frame() -> None:
    with pytest.raises(BadCommand, match="exceeds"):
        parse_command("x" * ((1 << 20) + 1))


def test_redact() -> None:
    value = {
        "sip": {"username": "u", "password": "p"},
        "asr": {"secretKey": "k", "appId": "a"},
        "list": [{"apiKey": "z"}],
        "empty": {"password": ""},
    }
    assert redact(value) == {
        "sip": {"username": "u", "password": "***"},
        "asr": {"secretKey": "***", "appId": "a"},
        "list": [{"apiKey": "***"}],
        "empty": {"password": ""},
    }


# Found by tests/fuzz/test_protocol_fuzz.py: JSON that json.loads takes but nothing after it can carry. Each
# of these used to pass (or escape as another exception) and then break the frontend's relay to the owner.
@pytest.mark.parametrize(
    "text,needle",
    [
        # msgpack (the relay) and UTF-8 (the socket) cannot encode a lone surrogate
        ('{"command": "history", "speaker": "u", "text": "\\ud800"}', "text: a lone UTF-16 surrogate"),
        ('{"command": "tts", "text": "a\\udfffb"}', "text: a lone UTF-16 surrogate"),
        ('{"command": "invite", "option": {"sip": {"headers": {"\\udc80": "x"}}}}', "option.sip.headers"),
        ('{"command": "invite", "option": {"extra": {"k": ["\\ud83d"]}}}', "option.extra.k[0]"),
        # json.loads raised RecursionError, which is not BadCommand
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        # deep enough for msgpack's or Python's recursion further on
        ('{"command": "invite", "option": {"extra": {"a": ' + "[" * 600 + "]" * 600 + "}}}", "nested deeper"),
        # past 64 bits: msgpack raised OverflowError in the frontend's outbox
        (
            '{"command": "tts", "text": "a", "waitInputTimeout": 1e300}',
            "waitInputTimeout: integer out of range",
        ),
        ('{"command": "reject", "reason": "x", "code": 18446744073709551616}', "code: integer out of range"),
        (
            '{"command": "invite", "option": {"extra": {"n": -9223372036854775809}}}',
            "option.extra.n: integer",
        ),
        ('{"command": "invite", "option": {"vad": {"voiceThreshold": ' + "9" * 400 + "}}}", "out of range"),
        # not JSON (RFC 8259); json.dumps of the dump line would write them back as invalid JSON
        ('{"command": "invite", "option": {"handshakeTimeout": NaN}}', "NaN is not a JSON value"),
        ('{"command": "invite", "option": {"vad": {"voiceThreshold": -Infinity}}}', "-Infinity is not"),
        ('{"command": "invite", "option": {"handshakeTimeout": 1e400}}', "out of range"),
        # a duration of infinity (uvloop refuses NaN timeouts outright)
        ('{"command": "invite", "option": {"handshakeTimeout": "' + "9" * 400 + 's"}}', "out of range"),
    ],
)
def test_values_the_relay_cannot_carry_are_refused(text: str, needle: str) -> None:
    with pytest.raises(BadCommand) as info:
        parse_command(text)
    assert needle in info.value.message
    info.value.message.encode("utf-8")  # the error event itself can be sent


def test_limits_leave_real_commands_alone() -> None:
    nested = {"a": {"b": {"c": [[[[1, 2.5, "\U0001f600 é"]]]]}}}
    cmd = parse(
        {
            "command": "invite",
            "option": {"extra": nested, "handshakeTimeout": 30.5, "vad": {"samplerate": 2**63 - 1}},
        }
    )
    assert isinstance(cmd, Invite)
    assert cmd.option.extra == nested and cmd.option.vad is not None
    assert cmd.option.vad.samplerate == 2**63 - 1
    assert parse_duration(1e300, 1.0) == 1e300
    with pytest.raises(ValueError):
        parse_duration(float("nan"), 1.0)
    with pytest.raises(ValueError):
        parse_duration(float("inf"), 1.0)
