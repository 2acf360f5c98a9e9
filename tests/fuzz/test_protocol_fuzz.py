"""Fuzzing the command edge (`common.protocol.parse_command`, with `common.schema` under it).

The contract: for any text, `parse_command` returns a command or raises `BadCommand`, nothing else. A
rejected frame's error event can be written to the socket and the dump and sent to the owner; an accepted
command survives everything that follows it on the way to the media process (`command_body`, msgspec's
msgpack, `decode_command` there, the dump's JSON, `redact`) and comes back as itself, there and from its
JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from common import events, wire
from common.choices import ASR_PROVIDERS, BARGE_IN_ACTS, CODECS, EOU_TYPES, TTS_PROVIDERS, VAD_TYPES
from common.errors import BadCommand
from common.protocol import (
    COMMANDS,
    MAX_DEPTH,
    MAX_TEXT_FRAME,
    Accept,
    Command,
    Invite,
    command_body,
    command_from_dict,
    command_to_dict,
    decode_command,
    parse_command,
    redact,
)
from common.schema import _plan
from tests.fuzz.conftest import scale

# --- strategies ---------------------------------------------------------------------------------------

# Every code point, lone surrogates included (hypothesis leaves those out of text() by default).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
SURROGATES = st.text(st.characters(categories=("Cs",)), min_size=1, max_size=3)
TEXT = st.one_of(
    st.text(max_size=20),
    st.text(ANY_CHAR, max_size=20),
    SURROGATES,
    st.sampled_from(["", " ", "pcm", "PCMU", "opus", "30", "30s", "500ms", "-1", "1e400", "\x00", "\u2028"]),
)
INTS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**400]),
)
FLOATS = st.one_of(st.floats(), st.sampled_from([0.5, -0.0, 1e308, 1e-320, 3.0, 1e19]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)


# Values a valid command must have beyond its field types (rules of common.protocol._check).
SIP_HEADERS = st.dictionaries(
    st.from_regex(r"X-[A-Za-z0-9\-.!%*_+`'~]{1,10}", fullmatch=True),
    # (No lone surrogate: no JSON text the server takes carries one.)
    st.text(
        st.characters(min_codepoint=32, blacklist_characters="\x7f", blacklist_categories=("Cs",)),
        max_size=20,
    ),
    max_size=3,
)
_RULES: dict[str, st.SearchStrategy[Any]] = {
    "codec": st.sampled_from(["pcm", "PCMU", "pcma", "G722"]),
    "handshakeTimeout": st.one_of(
        st.integers(0, 10**6),
        st.floats(0, 1e6),
        st.sampled_from(["30", "30s", "500ms", " 2.5 s ", "0"]),
    ),
    "ringTimeout": st.one_of(
        st.integers(1, 10**6),
        st.floats(0.001, 1e6),
        st.sampled_from(["30", "30s", "500ms", " 2.5 s ", "1ms"]),
    ),
    # A ws:// URL is a valid play URL too (any non-empty text is) and the only kind mediaPass takes.
    "url": st.builds(lambda rest: "ws://bot/" + rest, st.text(max_size=20)),
    "inputSampleRate": st.integers(8000, 48000),
    "outputSampleRate": st.integers(8000, 48000),
    "packetSize": st.integers(80, 32768).map(lambda n: n * 2),
    "ptime": st.integers(10, 200),
    "offsetMs": st.integers(0, 2**64 - 1),
    "inactivityTimeout": st.one_of(st.integers(0, 2**64 - 1), st.floats(0, 1e300)),
    "dialect": st.sampled_from(["raw", "twilio", "TWILIO"]),
    # Names checked at the edge (common/choices.py), per option class where one wire name means two lists.
    "provider": st.sampled_from([*ASR_PROVIDERS, "Tencent"]),
    "VadOption.type": st.sampled_from([*VAD_TYPES, "Silero"]),
    "EouOption.type": st.sampled_from([*EOU_TYPES, "LOCAL"]),
    "EouOption.threshold": st.one_of(st.integers(0, 1), st.floats(0, 1)),
    "BargeInOption.act": st.sampled_from([*BARGE_IN_ACTS, "Interrupt"]),
    "BargeInOption.minSpeechMs": st.integers(0, 60_000),
    "BargeInOption.resumeAfterMs": st.integers(0, 60_000),
    "ResumeOption.timeout": st.one_of(st.integers(1, 3600), st.floats(0.001, 3600)),
    "targetSessionId": st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
    # active-call's SIP commands: media types and extra headers that would not break the request.
    "contentType": st.sampled_from(["text/plain", "application/json", 'text/plain; charset="utf-8"']),
    "Message.headers": SIP_HEADERS,
    "Hangup.headers": SIP_HEADERS,
    "SipOption.hangup_headers": SIP_HEADERS,
    "Message.refer": st.just(False),
}
# Required fields of nested options, filled in when a test reaches inside one.
NESTED_REQUIRED: dict[str, dict[str, Any]] = {"mediaPass": {"url": "ws://bot"}, "resume": {"timeout": 10}}


def _typed(tp: Any, hostile: bool) -> st.SearchStrategy[Any]:
    """Values of the right JSON type for a schema type. `hostile`: of that type but anything else, valid
    or not (any code point, lone surrogates, integers past 64 bits, NaN and infinities); else acceptable."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of(*[_typed(a, hostile) for a in typing.get_args(tp) if a is not type(None)])
    if dataclasses.is_dataclass(tp):
        return _object(tp, valid=not hostile)
    if origin is list:
        return st.lists(_typed(typing.get_args(tp)[0], hostile), max_size=3)
    if origin is dict:
        value = _typed(str, hostile) if typing.get_args(tp)[1] is str else JSON if hostile else VALID_JSON
        return st.dictionaries(_typed(str, hostile), value, max_size=3)
    if tp is bool:
        return st.booleans()
    if tp is int:
        if hostile:
            return st.one_of(INTS, FLOATS.filter(lambda f: not math.isfinite(f) or f.is_integer()))
        return st.one_of(st.integers(-(2**63), 2**64 - 1), st.integers(-100, 100).map(float))
    if tp is float:
        if hostile:
            return st.one_of(INTS, FLOATS)
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), 2**63))
    if tp is str:
        return TEXT if hostile else st.text(max_size=20)
    return JSON if hostile else VALID_JSON


VALID_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _object(cls: Any, valid: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object for dataclass `cls`. `valid`: required fields present, every value acceptable; else
    each field absent, right-typed, of any JSON type, or null, under its wire name or a legacy alias."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for _attr, names, tp, needed in _plan(cls):
        if valid:
            rule = _RULES.get(f"{cls.__name__}.{names[0]}", _RULES.get(names[0]))
            value = rule if rule is not None else st.deferred(lambda tp=tp: _typed(tp, hostile=False))
            (required if needed else optional)[names[0]] = value
            continue
        for name in names:
            # Mostly values of the right type (so that parsing goes deep), else anything at all, or null.
            optional[name] = st.deferred(
                lambda tp=tp: st.one_of(_typed(tp, hostile=True), _typed(tp, hostile=True), JSON, st.none())
            )
    return st.fixed_dictionaries(required, optional=optional)


def _command(name: str, valid: bool) -> st.SearchStrategy[dict[str, Any]]:
    fields = _object(COMMANDS[name], valid)
    if valid and name == "refer":
        fields = fields.map(lambda f: {**f, "target": f.get("target") or "sip:bob@example.com"})
    return fields.map(lambda f: {"command": name, **f})


NAMES = sorted(COMMANDS)
COMMAND_DICTS = st.sampled_from(NAMES).flatmap(lambda name: _command(name, valid=False))
VALID_COMMANDS = st.sampled_from(NAMES).flatmap(lambda name: _command(name, valid=True))


@st.composite
def _with_extra(draw: st.DrawFn) -> dict[str, Any]:
    """A command with unknown keys, a wrong `command`, or anything put in the place of the command."""
    cmd = draw(COMMAND_DICTS)
    choice = draw(st.integers(0, 3))
    if choice == 0:
        cmd.update(draw(st.dictionaries(TEXT, JSON, max_size=3)))
    elif choice == 1:
        cmd["command"] = draw(JSON)
    elif choice == 2:
        del cmd["command"]
    return cmd


def _dumps(value: Any, ascii_only: bool) -> str:
    # json.dumps writes NaN/Infinity (not JSON) for non-finite floats: exactly the hostile input wanted.
    return json.dumps(value, ensure_ascii=ascii_only)


# --- the contract --------------------------------------------------------------------------------------


def _sendable(event: dict[str, Any]) -> None:
    """What the frontend does with an event: JSON (not ASCII-escaped) in a UTF-8 text frame, and msgpack
    to the owner (for the dump)."""
    json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    wire.pack([wire.msg("call", wire.LOG, event)])


def check(text: str | bytes) -> Command | None:
    """Parse one frame the way the frontend does; assert everything after it works. The command, or None
    when it was rejected."""
    try:
        cmd = parse_command(text)
    except BadCommand as exc:
        assert exc.status == 400 and exc.message
        _sendable(events.error("call", "command", exc.message, 400))
        return None
    packed = wire.pack([wire.msg("call", wire.CMD, {**command_body(cmd), wire.SEQ: 1})])
    # The owner's side: it decodes the relayed command by its type, with no second validation.
    (relayed,) = wire.unpack(packed)
    assert decode_command(relayed["b"]) == cmd
    body = command_to_dict(cmd)
    # The dump's line and the registry's redacted option.
    json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    json.dumps(redact(body.get("option") or {}), allow_nan=False)
    # The canonical form means the same command (as a frame too, unless it grew past the frame limit).
    canonical = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    assert command_from_dict(json.loads(canonical)) == cmd
    if len(canonical) <= MAX_TEXT_FRAME:
        assert parse_command(canonical) == cmd
    if isinstance(cmd, Invite | Accept):
        seconds = cmd.option.handshake_seconds()
        assert math.isfinite(seconds) and seconds >= 0
    return cmd


@settings(max_examples=scale(600))
@given(COMMAND_DICTS, st.booleans())
def test_schema_shaped_commands(cmd: dict[str, Any], ascii_only: bool) -> None:
    check(_dumps(cmd, ascii_only))


@settings(max_examples=scale(300))
@given(_with_extra(), st.booleans())
def test_commands_with_unknown_keys_and_bad_names(cmd: dict[str, Any], ascii_only: bool) -> None:
    check(_dumps(cmd, ascii_only))


@settings(max_examples=scale(300))
@given(JSON, st.booleans())
def test_any_json_value(value: Any, ascii_only: bool) -> None:
    check(_dumps(value, ascii_only))


@settings(max_examples=scale(300))
@given(st.one_of(st.text(ANY_CHAR, max_size=200), st.text(max_size=200)))
def test_any_text(text: str) -> None:
    check(text)


@settings(max_examples=scale(200))
@given(st.binary(max_size=200))
def test_any_bytes(data: bytes) -> None:
    check(data)


JSON_PIECES = st.sampled_from(
    [
        "{", "}", "[", "]", ",", ":", '"', '"command"', '"invite"', '"tts"', '"text"', '"option"', "null",
        "true", "NaN", "-Infinity", "Infinity", "1e400", "-1e400", "1e-400", "-0", "0.5", "9" * 30,
        '"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', "\\", " ", "\n", "\ufeff", '"handshakeTimeout"',
        '"vad"', '"extra"', '"sip"', '"headers"',
    ]
)  # fmt: skip


@settings(max_examples=scale(400))
@given(st.lists(JSON_PIECES, max_size=30).map("".join))
def test_json_like_token_soup(text: str) -> None:
    check(text)


WRONG = {
    "boolean": True,
    "integer": 7,
    "number": 2.5,
    "string": "text",
    "array": [1, "a"],
    "object": {"a": []},
}
REQUIRED = {
    "tts": {"text": "hi"},
    "play": {"url": "x.wav"},
    "reject": {"reason": "busy"},
    "history": {"speaker": "u", "text": "t"},
    "addIceCandidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"},
    "refer": {"target": "sip:a@b"},
    "custom": {"data": None},
    "bridge": {"targetSessionId": "other-call"},
    "message": {"body": "hi"},
}


def _kinds(tp: Any) -> set[str]:
    """The JSON kinds (keys of WRONG) a schema type accepts."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return set().union(*(_kinds(a) for a in typing.get_args(tp) if a is not type(None)))
    if dataclasses.is_dataclass(tp) or origin is dict:
        return {"object"}
    if origin is list:
        return {"array"}
    named = {bool: {"boolean"}, int: {"integer"}, float: {"integer", "number"}, str: {"string"}}
    return named.get(tp, set(WRONG))


@settings(max_examples=scale(400))
@given(st.sampled_from([n for n in NAMES if _plan(COMMANDS[n])]), st.data())
def test_wrong_type_for_every_field(name: str, data: st.DataObject) -> None:
    """Any field of any command (nested options too) given a value of a JSON type it does not take: the
    error names that field by its wire path."""
    cls = COMMANDS[name]
    path: list[str] = []  # keys as sent (legacy aliases too)
    named: list[str] = []  # as errors name them: the wire name
    while True:
        # A field that takes any JSON (`custom.data`) has no wrong type.
        typed = [f for f in _plan(cls) if _kinds(f[2]) != set(WRONG)]
        _attr, names, tp, _required = data.draw(st.sampled_from(typed))
        path.append(data.draw(st.sampled_from(names)))
        named.append(names[0])
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if dataclasses.is_dataclass(inner[0]) and data.draw(st.booleans()):
            cls = inner[0]
            continue
        break
    kind = data.draw(st.sampled_from(sorted(set(WRONG) - _kinds(tp))), label="kind")
    cmd: dict[str, Any] = {"command": name, **REQUIRED.get(name, {})}
    node = cmd
    for key in path[:-1]:
        node = node.setdefault(key, dict(NESTED_REQUIRED.get(key, {})))
    node[path[-1]] = WRONG[kind]
    text = json.dumps(cmd)
    note(text)
    with pytest.raises(BadCommand) as caught:
        parse_command(text)
    assert caught.value.message.startswith(f"{'.'.join(named)}: expected "), caught.value.message
    check(text)


@settings(max_examples=scale(60))
@given(st.integers(1, 3000), st.sampled_from(["[", '{"a":', '{"command":"invite","option":{"extra":{"x":']))
def test_deep_nesting(depth: int, opener: str) -> None:
    closer = {"[": "]", '{"a":': "}"}
    if opener.startswith('{"command"'):
        text = opener + '{"a":' * depth + "1" + "}" * depth + "}}}"
    else:
        text = opener * depth + ("[]" if opener == "[" else "1") + closer[opener] * depth
    cmd = check(text)
    if depth >= MAX_DEPTH:
        assert cmd is None


@settings(max_examples=scale(20))
@given(
    st.integers(MAX_TEXT_FRAME - 64, MAX_TEXT_FRAME + 4096),
    st.sampled_from(["x", "é", "\U0001f600"]),
    st.sampled_from(["tts", "invite", "junk"]),
)
def test_huge_frames(size: int, char: str, shape: str) -> None:
    if shape == "tts":
        head, tail = '{"command":"tts","text":"', '"}'
    elif shape == "invite":
        head, tail = '{"command":"invite","option":{"offer":"', '"}}'
    else:
        head, tail = "", ""
    text = head + char * max(0, size - len(head) - len(tail)) + tail
    cmd = check(text)
    if len(text) > MAX_TEXT_FRAME:
        assert cmd is None


@settings(max_examples=scale(150))
@given(st.sampled_from(sorted(COMMANDS)), st.lists(st.tuples(TEXT, JSON), min_size=1, max_size=4))
def test_duplicate_keys(name: str, pairs: list[tuple[str, Any]]) -> None:
    """JSON with a key twice (the last one wins in Python, as in serde_json's default)."""
    members = [f'"command":{json.dumps(name)}']
    members += [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs]
    members += [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in reversed(pairs)]
    members.append(f'"command":{json.dumps(name)}')
    check("{" + ",".join(members) + "}")


@settings(max_examples=scale(20))
@given(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1" * 400, "1e-400", "-0.0"]))
def test_numbers_json_cannot_hold(number: str) -> None:
    for text in (
        f'{{"command":"invite","option":{{"handshakeTimeout":{number}}}}}',
        f'{{"command":"tts","text":"a","waitInputTimeout":{number}}}',
        f'{{"command":"invite","option":{{"vad":{{"voiceThreshold":{number}}}}}}}',
        f'{{"command":"invite","option":{{"extra":{{"n":{number}}}}}}}',
        f'{{"command":"invite","option":{{"handshakeTimeout":"{number}s"}}}}',
        f'{{"command":"invite","option":{{"ringTimeout":{number}}}}}',
    ):
        check(text)


@settings(max_examples=scale(500))
@given(VALID_COMMANDS, st.booleans())
def test_valid_commands_are_accepted_and_round_trip(cmd: dict[str, Any], ascii_only: bool) -> None:
    """Every schema-valid command is accepted (check() then proves it survives the way to the owner and
    parses back to itself), and its canonical form is a fixed point."""
    parsed = check(_dumps(cmd, ascii_only))
    assert parsed is not None, cmd
    once = command_to_dict(parsed)
    assert command_to_dict(parse_command(json.dumps(once))) == once


# Each enumerated name, by the path of its field in a command.
CHOICES = [
    ({"command": "invite", "option": {"vad": {"type": None}}}, "option.vad.type", VAD_TYPES),
    ({"command": "accept", "option": {"asr": {"provider": None}}}, "option.asr.provider", ASR_PROVIDERS),
    ({"command": "invite", "option": {"tts": {"provider": None}}}, "option.tts.provider", TTS_PROVIDERS),
    ({"command": "invite", "option": {"eou": {"type": None}}}, "option.eou.type", EOU_TYPES),
    ({"command": "invite", "option": {"vad": {"bargeIn": {"act": None}}}}, "option.vad.bargeIn.act",
     BARGE_IN_ACTS),
    ({"command": "invite", "option": {"codec": None}}, "option.codec", CODECS),
    ({"command": "tts", "text": "hi", "option": {"provider": None}}, "option.provider", TTS_PROVIDERS),
    ({"command": "refer", "target": "b", "options": {"asr": {"provider": None}}}, "options.asr.provider",
     ASR_PROVIDERS),
]  # fmt: skip


def _put(cmd: dict[str, Any], value: str) -> dict[str, Any]:
    """`cmd` (a template) with its one None leaf set to `value`."""
    out = json.loads(json.dumps(cmd))
    node = out
    while True:
        key, child = next((k, v) for k, v in node.items() if v is None or isinstance(v, dict))
        if child is None:
            node[key] = value
            return out
        node = child


@settings(max_examples=scale(300))
@given(st.sampled_from(range(len(CHOICES))), st.one_of(TEXT, st.sampled_from(["WEBRTC", "whisper", "opus"])))
def test_every_enumerated_name_is_checked_at_the_edge_naming_its_field(which: int, value: str) -> None:
    template, path, names = CHOICES[which]
    text = json.dumps(_put(template, value))
    note(text)
    parsed = check(text)
    value = json.loads(json.dumps(value))  # as the server reads it (a surrogate pair is one character)
    if value.lower() in names:
        assert parsed is not None
        return
    assert parsed is None
    with pytest.raises(BadCommand) as caught:
        parse_command(text)
    assert caught.value.message.startswith(f"{path}: "), caught.value.message
    if "surrogate" in caught.value.message:  # refused before its name is read
        return
    assert repr(value) in caught.value.message and ", ".join(names) in caught.value.message
