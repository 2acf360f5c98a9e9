"""The typed wire (issue 19): a command validated at the frontend crosses to the media process as its
dataclass and comes back as itself; enumerated names are refused at the edge with an error naming the
field; a body that does not decode in the media process is answered with an error event, and the call goes
on."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from common import wire
from common.choices import ASR_PROVIDERS, CODECS, EOU_TYPES, TTS_PROVIDERS, VAD_TYPES
from common.config import Settings
from common.errors import BadCommand
from common.protocol import COMMANDS, History, command_body, decode_command, parse_command
from tests.unit.callfakes import FakeHost, fake_services
from worker.call.session import CallSession

# One command of each type with most of its fields set, nested options included.
SAMPLES: dict[str, dict[str, Any]] = {
    "invite": {
        "option": {
            "denoise": True,
            "codec": "PCMU",
            "callee": "sip:bob@example.com",
            "recorder": {"recorderFile": "r.wav", "samplerate": 16000, "ptime": "200ms"},
            "vad": {
                "type": "Silero",
                "voiceThreshold": 0.5,
                "silenceTimeout": 800,
                "secretKey": "s",
                "bargeIn": {
                    "minSpeechMs": 250,
                    "ignoreWords": ["yeah", "uh-huh"],
                    "resumeAfterMs": 900,
                    "act": "interrupt",
                },
            },
            "asr": {"provider": "tencent", "language": "en", "extra": {"a": [1, 2.5, None, {"b": True}]}},
            "tts": {"provider": "voiceapi", "speaker": "x", "speed": 1.25, "subtitle": True},
            "handshakeTimeout": 30.5,
            "ringTimeout": "45s",
            "enableIpv6": False,
            "sip": {"username": "u", "password": "p", "headers": {"X-A": "1"}, "enable_srtp": True},
            "extra": {"big": 2**64 - 1, "small": -(2**63)},
            "eou": {"type": "tencent", "endpoint": "wss://eou", "apiKey": "k", "timeout": 900},
            "mediaPass": {"url": "wss://bot/x?token=t", "inputSampleRate": 16000, "dialect": "twilio"},
            "resume": {"timeout": 30, "moh": "hold.wav"},
            "inactivityTimeout": 2.5,
            "subscribe": True,
        }
    },
    "accept": {
        "option": {
            "codec": "g722",
            "asr": {"provider": "local"},
            "inactivityTimeout": 30,
            "eou": {"type": "smart_turn", "threshold": 0.6, "timeout": 2000},
        }
    },
    "reject": {"reason": "busy", "code": 486},
    "ringing": {"recorder": {"recorderFile": "r.wav"}, "earlyMedia": True, "ringtone": "ring.wav"},
    "candidate": {"candidates": ["candidate:1 1 udp 1 127.0.0.1 9 typ host"]},
    "addIceCandidate": {"candidate": "candidate:1", "sdpMid": "0", "sdpMLineIndex": 0},
    "tts": {
        "text": "Hello.",
        "speaker": "s",
        "playId": "p",
        "autoHangup": True,
        "streaming": True,
        "end_of_stream": False,
        "waitInputTimeout": 3000,
        "option": {"provider": "local", "samplerate": 16000},
        "base64": False,
        "cacheKey": "k",
    },
    "play": {"url": "x.wav", "playId": "p", "autoHangup": False, "waitInputTimeout": 10, "offsetMs": 1500},
    "interrupt": {"graceful": True},
    "pause": {},
    "resume": {},
    "hangup": {"reason": "bye", "initiator": "caller", "headers": {"X-Reason": "done"}, "refer": False},
    "refer": {
        "target": "sip:c@x",
        "caller": "sip:a@x",
        "options": {"timeout": 30, "autoHangup": True, "asr": {"provider": "voiceapi"}, "sip": {}},
    },
    "mute": {"trackId": "t"},
    "unmute": {},
    "history": {"speaker": "u", "text": "hi"},
    "bridge": {"targetSessionId": "other-call"},
    "unbridge": {"targetSessionId": "other-call"},
    "custom": {"sender": "app", "data": {"n": [1, -2.5, None, True], "s": "x", "big": 2**64 - 1}},
    "message": {"body": "hi", "contentType": "text/plain", "headers": {"X-A": "1"}, "refer": False},
}


def test_every_command_type_has_a_sample() -> None:
    assert sorted(SAMPLES) == sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_command_crosses_the_wire_typed_and_comes_back_as_itself(name: str) -> None:
    cmd = parse_command(json.dumps({"command": name, **SAMPLES[name]}))
    blob = wire.pack([wire.msg("c1", wire.CMD, {**command_body(cmd), wire.SEQ: 3})])
    (m,) = wire.unpack(blob)
    assert m["k"] == wire.CMD and m["b"].pop(wire.SEQ) == 3
    relayed = decode_command(m["b"])
    assert relayed == cmd and type(relayed) is type(cmd)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (["tts"], "must be a map"),
        ({"command": "dance", "args": {}}, "unknown command 'dance'"),
        ({"args": {}}, "unknown command None"),
        ({"command": "tts", "args": {"text": 3}}, "tts: Expected `str`"),
        ({"command": "history", "args": None}, "history: Expected `object`"),
    ],
)
def test_a_body_no_frontend_sends_does_not_decode(body: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        decode_command(body)


# (frame, the message's beginning: the field's wire path, then what is wrong)
EDGE = [
    ('{"command":"invite","option":{"vad":{"type":"fancy"}}}', "option.vad.type: unknown VAD type 'fancy'"),
    ('{"command":"accept","option":{"vad":{"type":"x"}}}', "option.vad.type: unknown VAD type 'x'"),
    ('{"command":"invite","option":{"asr":{"provider":"foo"}}}', "option.asr.provider: unknown provider"),
    ('{"command":"invite","option":{"tts":{"provider":"foo"}}}', "option.tts.provider: unknown provider"),
    ('{"command":"invite","option":{"eou":{"type":"x"}}}', "option.eou.type: unknown type 'x'"),
    ('{"command":"invite","option":{"eou":{"type":"smart_turn","threshold":1.5}}}', "option.eou.threshold: "),
    ('{"command":"invite","option":{"eou":{"threshold":-0.1}}}', "option.eou.threshold: must be between"),
    ('{"command":"invite","option":{"eou":{"threshold":"high"}}}', "option.eou.threshold: expected a number"),
    (
        '{"command":"invite","option":{"vad":{"bargeIn":{"act":"shout"}}}}',
        "option.vad.bargeIn.act: unknown act",
    ),
    (
        '{"command":"invite","option":{"vad":{"bargeIn":{"minSpeechMs":-1}}}}',
        "option.vad.bargeIn.minSpeechMs: must",
    ),
    (
        '{"command":"invite","option":{"vad":{"bargeIn":{"resumeAfterMs":1e9}}}}',
        "option.vad.bargeIn.resumeAfterMs",
    ),
    (
        '{"command":"invite","option":{"vad":{"bargeIn":{"ignoreWords":"yeah"}}}}',
        "option.vad.bargeIn.ignoreWords",
    ),
    ('{"command":"invite","option":{"codec":"opus"}}', "option.codec: unsupported codec 'opus'"),
    ('{"command":"invite","option":{"mediaPass":{"url":"ws://b","dialect":"x"}}}', "option.mediaPass.dia"),
    ('{"command":"tts","text":"a","option":{"provider":"nope"}}', "option.provider: unknown provider 'nope'"),
    (
        '{"command":"refer","target":"sip:b@x","options":{"asr":{"provider":"foo"}}}',
        "options.asr.provider: unknown provider 'foo'",
    ),
]


@pytest.mark.parametrize(("frame", "message"), EDGE)
def test_each_enumerated_name_is_checked_at_the_edge_naming_its_field(frame: str, message: str) -> None:
    with pytest.raises(BadCommand) as caught:
        parse_command(frame)
    assert caught.value.message.startswith(message), caught.value.message
    assert caught.value.status == 400 and caught.value.code == "BAD_REQUEST"


def test_the_edge_lists_name_every_choice_and_take_any_case() -> None:
    with pytest.raises(BadCommand, match=r"\(expected webrtc, silero, ten\)$"):
        parse_command('{"command":"invite","option":{"vad":{"type":"fancy"}}}')
    for names, template in (
        (VAD_TYPES, '{"command":"invite","option":{"vad":{"type":"%s"}}}'),
        (ASR_PROVIDERS, '{"command":"invite","option":{"asr":{"provider":"%s"}}}'),
        (TTS_PROVIDERS, '{"command":"tts","text":"a","option":{"provider":"%s"}}'),
        (EOU_TYPES, '{"command":"invite","option":{"eou":{"type":"%s"}}}'),
        (CODECS, '{"command":"invite","option":{"codec":"%s"}}'),
    ):
        for name in names:
            parse_command(template % name.upper())


def test_unknown_extra_fields_are_still_ignored() -> None:
    cmd = parse_command('{"command":"invite","option":{"vad":{"type":"ten","mode":"x"},"future":1},"x":2}')
    assert decode_command(command_body(cmd)) == cmd


async def test_the_media_process_answers_an_undecodable_body_and_goes_on(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    host = FakeHost()
    sent = host.sent
    session = CallSession(
        fake_services(Settings(recorder_path=str(tmp_path))), host, "c1", "websocket", "web-1", False, 0
    )
    session.start()
    with caplog.at_level(logging.ERROR, "pbx.worker.call.session"):
        session.deliver(wire.CMD, {"command": "tts", "args": {"text": 3}, wire.SEQ: 1})
        session.deliver(wire.CMD, "not a map")
        session.deliver(wire.CMD, {**command_body(History(speaker="u", text="alive")), wire.SEQ: 2})
        for _ in range(100):
            if any(m["k"] == wire.EVT and m["b"]["event"] == "addHistory" for m in sent):
                break
            await asyncio.sleep(0.01)
    evts = [m["b"] for m in sent if m["k"] == wire.EVT]
    errors = [e for e in evts if e["event"] == "error"]
    assert len(errors) == 2 and all(e["sender"] == "command" and e["code"] == 400 for e in errors)
    assert "tts: Expected `str`" in errors[0]["error"]
    assert evts[-1]["event"] == "addHistory" and evts[-1]["text"] == "alive"
    assert [m["b"]["seq"] for m in sent if m["k"] == wire.CTL] == [1, 2], "each is acknowledged"
    assert "undecodable command body" in caplog.text
    for task in session._tasks:
        task.cancel()
