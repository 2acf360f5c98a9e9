"""pbxclient's commands and events on the wire: camelCase out, typed in, and agreement with the server's own
parser (common.protocol), so every command the client builds is one the server reads field for field."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import pytest

from common import events as server_events
from common import protocol
from pbxclient import commands as cmds
from pbxclient import events as ev
from pbxclient import options as opt


def full_option() -> opt.CallOption:
    """A CallOption with every field set."""
    return opt.CallOption(
        denoise=True,
        offer="v=0",
        callee="sip:alice@example.com",
        caller="sip:bot@example.com",
        recorder=opt.RecorderOption(recorder_file="x.wav", samplerate=16000, ptime="200ms", format="wav"),
        vad=opt.VadOption(
            type="silero",
            aggressiveness=2,
            samplerate=16000,
            speech_padding=250,
            silence_padding=100,
            silence_timeout=3000,
            voice_threshold=0.6,
            max_buffer_duration_secs=30,
            endpoint="https://vad.example.com",
            secret_key="k",
            secret_id="i",
        ),
        asr=opt.TranscriptionOption(
            provider="tencent",
            model="16k_zh",
            language="zh-CN",
            app_id="1",
            secret_id="i",
            secret_key="k",
            model_type="16k_zh",
            buffer_size=1024,
            samplerate=16000,
            endpoint="asr.example.com",
            extra={"snake_key": 1},
        ),
        tts=opt.SynthesisOption(
            samplerate=16000,
            provider="voiceapi",
            speed=1.0,
            app_id="1",
            secret_id="i",
            secret_key="k",
            volume=5,
            speaker="101002",
            codec="pcm",
            subtitle=True,
            emotion="happy",
            endpoint="ws://tts.example.com",
            extra={"a_b": "c"},
        ),
        handshake_timeout="30s",
        ring_timeout=20,
        enable_ipv6=False,
        sip=opt.SipOption(
            username="u",
            password="p",
            realm="r",
            contact="sip:me@example.com",
            headers={"X-Campaign": "42"},
            hangup_headers={"X-Reason": "done"},
            enable_srtp=False,
        ),
        extra={"custom_field": "v"},
        codec="pcmu",
        eou=opt.EouOption(
            type="tencent",
            endpoint="https://eou.example.com",
            secret_key="k",
            secret_id="i",
            timeout=600,
            extra={"x": 1},
        ),  # fmt: skip
        media_pass=opt.MediaPassOption(
            url="wss://bot.example.com/ws",
            input_sample_rate=16000,
            output_sample_rate=8000,
            packet_size=640,
            ptime=20,
            dialect="twilio",
            hangup_on_close=False,
        ),
        resume=opt.ResumeOption(timeout=30, moh="hold.wav"),
        inactivity_timeout=45,
        subscribe=True,
    )


def every_command() -> list[cmds.Command]:
    """One of each command, every field set."""
    refer_options = opt.ReferOption(
        denoise=True, timeout=30, moh="moh.wav", auto_hangup=True, bypass=False,
        asr=opt.TranscriptionOption(provider="local"), sip=opt.SipOption(username="u"),
    )  # fmt: skip
    return [
        cmds.Invite(option=full_option()),
        cmds.Accept(option=full_option()),
        cmds.Reject(reason="busy", code=486),
        cmds.Ringing(recorder=opt.RecorderOption(recorder_file=""), early_media=True, ringtone="ring.wav"),
        cmds.Candidate(candidates=["candidate:1 1 UDP 2113667327 192.0.2.1 54400 typ host"]),
        cmds.AddIceCandidate(
            candidate="candidate:1 1 UDP 1 192.0.2.1 1 typ host", sdp_mid="0", sdp_m_line_index=0
        ),  # fmt: skip
        cmds.Tts(
            text="hello",
            speaker="s",
            play_id="p",
            auto_hangup=True,
            streaming=True,
            end_of_stream=True,
            wait_input_timeout=3000,
            option=opt.SynthesisOption(provider="local", speed=1.5),
            base64=False,
            cache_key="greeting",
        ),  # fmt: skip
        cmds.Play(
            url="https://example.com/a.wav",
            play_id="p",
            auto_hangup=False,
            wait_input_timeout=500,
            offset_ms=1200,
        ),  # fmt: skip
        cmds.Interrupt(graceful=True),
        cmds.Pause(),
        cmds.Resume(),
        cmds.Hangup(reason="done", initiator="bot", headers={"X-Why": "over"}, refer=False),
        cmds.Refer(
            target="sip:bob@example.com",
            caller="sip:bot@example.com",
            callee="sip:bob@example.com",
            options=refer_options,
        ),  # fmt: skip
        cmds.Mute(track_id="server-side-track"),
        cmds.Unmute(track_id="c1"),
        cmds.History(speaker="user", text="hi"),
        cmds.Bridge(target_session_id="other"),
        cmds.Unbridge(target_session_id="other"),
        cmds.Custom(data={"nested_key": [1, None]}, sender="app"),
        cmds.Message(body="hi", content_type="text/plain", headers={"X-A": "b"}),
    ]


def test_commands_are_camel_case_without_nulls() -> None:
    tts = cmds.command_to_dict(
        cmds.Tts(
            text="hi",
            play_id="p1",
            auto_hangup=True,
            end_of_stream=True,
            wait_input_timeout=5,
            cache_key="k",
            base64=False,
        )  # fmt: skip
    )
    assert tts == {
        "command": "tts",
        "text": "hi",
        "playId": "p1",
        "autoHangup": True,
        "endOfStream": True,
        "waitInputTimeout": 5,
        "cacheKey": "k",
        "base64": False,
    }
    assert cmds.command_to_dict(cmds.AddIceCandidate(candidate="c", sdp_mid="0", sdp_m_line_index=0)) == {
        "command": "addIceCandidate",
        "candidate": "c",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    assert cmds.command_to_dict(cmds.Play(url="u", offset_ms=250)) == {
        "command": "play",
        "url": "u",
        "offsetMs": 250,
    }
    assert cmds.command_to_dict(cmds.Bridge(target_session_id="b")) == {
        "command": "bridge",
        "targetSessionId": "b",
    }
    assert cmds.command_to_dict(cmds.Pause()) == {"command": "pause"}
    assert cmds.command_to_dict(cmds.Invite()) == {"command": "invite", "option": {}}


def test_nested_options_keep_their_case_rules() -> None:
    wire = cmds.command_to_dict(cmds.Invite(option=full_option()))["option"]
    assert wire["mediaPass"]["inputSampleRate"] == 16000 and wire["mediaPass"]["hangupOnClose"] is False
    assert wire["handshakeTimeout"] == "30s" and wire["inactivityTimeout"] == 45
    assert wire["resume"] == {"timeout": 30, "moh": "hold.wav"}
    # RustPBX's SipOption is snake_case on the wire; caller-given dicts keep their keys.
    assert wire["sip"]["hangup_headers"] == {"X-Reason": "done"} and wire["sip"]["enable_srtp"] is False
    assert wire["asr"]["extra"] == {"snake_key": 1} and wire["asr"]["secretKey"] == "k"
    assert wire["vad"]["maxBufferDurationSecs"] == 30


def test_custom_sends_null_data_and_secrets_stay_out_of_repr() -> None:
    assert cmds.command_to_dict(cmds.Custom(data=None)) == {"command": "custom", "data": None}
    shown = repr(full_option())
    assert "password" not in shown and "secret_key" not in shown
    assert "bot.example.com" not in shown  # a bot's URL may carry its token


@pytest.mark.parametrize("command", every_command(), ids=lambda c: c.NAME)
def test_the_server_reads_every_command_field_for_field(command: cmds.Command) -> None:
    """The server's own parser takes what the client sends, and writes it back the same (its canonical
    form drops nothing the client set)."""
    sent = cmds.command_to_dict(command)
    call_type = "sip" if command.NAME in ("accept", "ringing", "message") else "websocket"
    parsed = protocol.parse_command(json.dumps(sent), call_type)
    assert protocol.NAMES[type(parsed)] == command.NAME
    assert protocol.command_to_dict(parsed) == sent


def _fields(cls: Any) -> dict[str, Any]:
    return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}


def _classes(tp: Any) -> list[Any]:
    args = typing.get_args(tp) or (tp,)
    return [a for a in args if dataclasses.is_dataclass(a)]


def test_the_client_covers_every_command_and_field_the_server_reads() -> None:
    assert set(protocol.COMMANDS) <= set(cmds.COMMANDS)
    # `message.refer` is refused by the server (MESSAGE on the transfer leg); the client leaves it out.
    skipped = {("Message", "refer")}
    pending: list[tuple[Any, Any]] = [(protocol.COMMANDS[n], cmds.COMMANDS[n]) for n in protocol.COMMANDS]
    seen = set()
    while pending:
        server_cls, client_cls = pending.pop()
        if (server_cls, client_cls) in seen:
            continue
        seen.add((server_cls, client_cls))
        server, client = _fields(server_cls), _fields(client_cls)
        missing = {n for n in server if n not in client and (server_cls.__name__, n) not in skipped}
        assert not missing, f"{client_cls.__name__} lacks {missing}"
        for name, tp in server.items():
            for sub_server in _classes(tp):
                (sub_client,) = _classes(client[name])
                pending.append((sub_server, sub_client))


def test_events_are_typed_snake_case() -> None:
    e = ev.parse_event(
        {
            "event": "trackEnd",
            "trackId": "server-side-track",
            "timestamp": 5,
            "duration": 1200,
            "ssrc": 7,
            "playId": "p",
        }  # fmt: skip
    )
    assert isinstance(e, ev.TrackEnd)
    assert (e.name, e.timestamp, e.track_id, e.duration, e.ssrc, e.play_id) == (
        "trackEnd", 5, "server-side-track", 1200, 7, "p",
    )  # fmt: skip
    e = ev.parse_event(
        {"event": "asrFinal", "trackId": "c", "index": 2, "startTime": 10, "endTime": 20, "text": "hi"}
    )
    assert isinstance(e, ev.AsrFinal) and (e.index, e.start_time, e.end_time, e.text) == (2, 10, 20, "hi")
    e = ev.parse_event({"event": "hangup", "reason": "bye", "initiator": "callee", "from": {"username": "a"}})
    assert isinstance(e, ev.Hangup) and e.reason == "bye" and e.from_ == {"username": "a"}
    e = ev.parse_event({"event": "functionCall", "name": "lookup", "callId": "k", "arguments": "{}"})
    assert isinstance(e, ev.FunctionCall) and e.name == "functionCall" and e.function_name == "lookup"
    e = ev.parse_event({"event": "custom", "timestamp": 1, "data": None})
    assert isinstance(e, ev.Custom) and e.data is None and e.sender is None


def test_the_servers_own_events_parse_to_their_classes() -> None:
    for raw in server_events.ended_by_system("c1", "no room", 503, "no_capacity", 1_700_000_000_000):
        parsed = ev.parse_event(raw)
        assert type(parsed) is ev.EVENTS[raw["event"]]
    err = ev.parse_event(server_events.error("c1", "command", "text: required field is missing", 400))
    assert isinstance(err, ev.Error)
    assert (err.track_id, err.sender, err.code, err.error) == (
        "c1",
        "command",
        400,
        "text: required field is missing",
    )
    hold = ev.parse_event(server_events.event("hold", track_id="c1", on_hold=True))
    assert isinstance(hold, ev.Hold) and hold.on_hold is True
    tr = ev.parse_event(
        server_events.event("transferRequest", track_id="c1", refer_to="sip:x@y", target="sip:x@y")
    )
    assert isinstance(tr, ev.TransferRequest) and tr.refer_to == "sip:x@y" and tr.referred_by is None


@pytest.mark.parametrize(
    "name",
    "incoming answer reject ringing hangup asrFinal asrDelta speaking silence dtmf error trackStart trackEnd "
    "interruption metrics addHistory eou custom inactivity mediaReady hold transferRequest message".split(),
)
def test_every_event_this_server_sends_has_a_class(name: str) -> None:
    assert name in ev.EVENTS
    assert type(ev.parse_event({"event": name})) is ev.EVENTS[name]


def test_unknown_events_and_fields_never_raise() -> None:
    e = ev.parse_event({"event": "futureThing", "timestamp": 9, "someField": [1]})
    assert type(e) is ev.Event and e.name == "futureThing" and e.timestamp == 9
    assert e.get("someField") == [1]
    e = ev.parse_event({"event": "dtmf", "digit": "5", "newField": {"x": 1}})
    assert isinstance(e, ev.Dtmf) and e.digit == "5" and e.fields["newField"] == {"x": 1}
    # A known event whose fields have unexpected types (another server version) arrives generic.
    e = ev.parse_event({"event": "trackEnd", "duration": "long"})
    assert type(e) is ev.Event and e.name == "trackEnd" and e.get("duration") == "long"
    # Lax numbers: a string of digits reads as a number.
    e = ev.parse_event({"event": "trackEnd", "duration": "1200"})
    assert isinstance(e, ev.TrackEnd) and e.duration == 1200
    assert type(ev.parse_event({})) is ev.Event
