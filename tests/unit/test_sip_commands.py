"""active-call's SIP commands at the edge (common/protocol.py): `message`, `hangup.headers` and
`option.subscribe` parse into their dataclasses, and extra SIP headers that would break or redirect the
request they go on are refused with an error naming the header."""

from __future__ import annotations

import json

import pytest

from common.errors import BadCommand
from common.protocol import (
    MAX_MESSAGE_BODY,
    MAX_SIP_HEADER,
    MAX_SIP_HEADERS,
    Hangup,
    Invite,
    Message,
    check_sip_headers,
    command_to_dict,
    parse_command,
)


def parse(obj: object, call_type: str = "sip") -> object:
    return parse_command(json.dumps(obj), call_type)


def refused(obj: object) -> str:
    with pytest.raises(BadCommand) as info:
        parse(obj)
    return info.value.message


def test_message_with_and_without_its_optional_fields() -> None:
    assert parse({"command": "message", "body": "hi"}) == Message(body="hi")
    full = {
        "command": "message",
        "body": '{"order": 42}',
        "contentType": "application/json",
        "headers": {"X-Order": "42", "Subject": "status"},
    }
    cmd = parse(full)
    assert cmd == Message(
        body='{"order": 42}', content_type="application/json", headers={"X-Order": "42", "Subject": "status"}
    )
    assert command_to_dict(cmd) == full  # type: ignore[arg-type]
    assert parse({"command": "message", "body": ""}) == Message(body="")


def test_message_needs_a_text_body() -> None:
    assert refused({"command": "message"}) == "body: required field is missing"
    assert refused({"command": "message", "body": 3}) == "body: expected a string, got a number"
    big = "é" * (
        MAX_MESSAGE_BODY // 2 + 1
    )  # two bytes each in UTF-8: over the limit, though fewer characters
    assert refused({"command": "message", "body": big}) == f"body: longer than {MAX_MESSAGE_BODY} bytes"
    assert parse({"command": "message", "body": "a" * MAX_MESSAGE_BODY}) is not None


@pytest.mark.parametrize(
    "ctype", ["text/plain;charset=utf-8", "application/json", 'text/plain; charset="UTF-8"', "message/cpim"]
)
def test_content_types_that_are_media_types_pass(ctype: str) -> None:
    assert parse({"command": "message", "body": "x", "contentType": ctype}) == Message(
        body="x", content_type=ctype
    )


@pytest.mark.parametrize("ctype", ["text", "", "text/plain\r\nX-Evil: 1", "text/plain;charset", "a b/c"])
def test_content_types_that_are_not_media_types_are_refused(ctype: str) -> None:
    message = refused({"command": "message", "body": "x", "contentType": ctype})
    assert message.startswith("contentType: ") and "is not a media type" in message


def test_message_on_the_transfer_leg_is_refused() -> None:
    assert refused({"command": "message", "body": "x", "refer": True}).startswith("refer: ")
    assert parse({"command": "message", "body": "x", "refer": False}) == Message(body="x", refer=False)


def test_hangup_headers() -> None:
    assert parse({"command": "hangup", "headers": {"X-Reason": "done"}}) == Hangup(
        headers={"X-Reason": "done"}
    )
    assert parse({"command": "hangup", "headers": {}}) == Hangup(headers={})
    assert (
        refused({"command": "hangup", "headers": {"X-A": 1}})
        == "headers.X-A: expected a string, got a number"
    )
    assert refused({"command": "hangup", "headers": {"Via": "SIP/2.0/UDP evil"}}).startswith("headers.Via: ")


def test_subscribe_option() -> None:
    cmd = parse({"command": "invite", "option": {"subscribe": True}})
    assert isinstance(cmd, Invite) and cmd.option.subscribe is True
    assert refused({"command": "invite", "option": {"subscribe": "yes"}}).startswith("option.subscribe: ")


@pytest.mark.parametrize(
    "name",
    ["Via", "v", "FROM", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m", "Max-Forwards", "Route",
     "Record-Route", "Content-Length", "l", "Content-Type", "c", "Authorization", "Proxy-Authorization"],
)  # fmt: skip
@pytest.mark.parametrize("command", ["message", "hangup"])
def test_headers_the_dialog_writes_cannot_be_given(name: str, command: str) -> None:
    message = refused({"command": command, "body": "x", "headers": {"X-Fine": "1", name: "x"}})
    assert message == f"headers.{name}: the SIP dialog sets this header itself; it cannot be given"


@pytest.mark.parametrize(
    "value", ["a\r\nVia: SIP/2.0/UDP 10.0.0.5", "a\nb", "a\rb", "a\x00b", "a\x1bb", "a\x7fb"]
)
def test_header_values_with_line_breaks_or_control_characters_are_refused(value: str) -> None:
    message = refused({"command": "message", "body": "x", "headers": {"X-Note": value}})
    assert message == "headers.X-Note: the value holds a line break or another control character"


@pytest.mark.parametrize("name", ["X Note", "X-Note:", "X-Note\r\nVia", "", "Ü", "X(1)"])
def test_header_names_that_are_not_tokens_are_refused(name: str) -> None:
    message = refused({"command": "hangup", "headers": {name: "1"}})
    assert message.startswith(f"headers: {name[:60]!r} is not a SIP header name")


def test_header_values_may_be_any_text_with_tabs() -> None:
    headers = {"X-Note": "caf\u00e9\tau lait", "Subject": "", "P-Asserted-Identity": "<sip:bot@example.com>"}
    assert parse({"command": "message", "body": "x", "headers": headers}) == Message(
        body="x", headers=headers
    )


def test_header_count_and_length_are_bounded() -> None:
    many = {f"X-{i}": "1" for i in range(MAX_SIP_HEADERS + 1)}
    assert refused({"command": "hangup", "headers": many}) == f"headers: at most {MAX_SIP_HEADERS} headers"
    check_sip_headers(dict(list(many.items())[:MAX_SIP_HEADERS]), "headers")
    long = {"X-Long": "a" * MAX_SIP_HEADER}
    assert (
        refused({"command": "hangup", "headers": long})
        == f"headers.X-Long: longer than {MAX_SIP_HEADER} characters"
    )
