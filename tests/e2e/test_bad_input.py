"""Invalid client input gets an `error` event naming the problem, and the call goes on."""

from __future__ import annotations

import json

import pytest

from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo

pytestmark = pytest.mark.e2e

CASES = [
    ("{not json", "invalid JSON"),
    ('["invite"]', "JSON object"),
    ('{"option": {}}', "command: required"),
    ('{"command": "dance"}', "unknown command 'dance'"),
    ('{"command": "play"}', "url: required"),
    ('{"command": "play", "url": 42}', "url: expected a string"),
    ('{"command": "tts"}', "text: required"),
    ('{"command": "reject"}', "reason: required"),
    ('{"command": "history", "speaker": "u"}', "text: required"),
    ('{"command": "play", "url": "x.wav", "autoHangup": "yes"}', "autoHangup: expected a boolean"),
    ('{"command": "invite", "option": {"vad": {"aggressiveness": "high"}}}', "option.vad.aggressiveness"),
    ('{"command": "invite", "option": {"codec": "opus"}}', "option.codec"),
    ('{"command": "invite", "option": {"vad": {"type": "fancy"}}}', "option.vad.type: unknown VAD type"),
    ('{"command": "invite", "option": {"asr": {"provider": "foo"}}}', "option.asr.provider: unknown"),
    ('{"command": "tts", "text": "a", "option": {"provider": "foo"}}', "option.provider: unknown provider"),
    ('{"command": "invite", "option": {"handshakeTimeout": "soon"}}', "option.handshakeTimeout"),
    ('{"command": "refer"}', "target"),
    ('{"command": "mute", "trackId": 7}', "trackId: expected a string"),
]


async def test_each_bad_command_gets_an_error_and_the_call_goes_on(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        for text, needle in CASES:
            mark = len(c.events)
            await c.ws.send_str(text)
            err = await c.event("error", after=mark)
            assert needle in err["error"], (text, err)
            assert err["sender"] == "command" and err["code"] == 400 and err["trackId"] == call_id
        mark = len(c.events)
        await c.ws.send_str("x" * ((1 << 20) + 10))
        err = await c.event("error", after=mark)
        assert "exceeds" in err["error"]
        mark = len(c.events)
        await c.ws.send_bytes(b"\0" * 100_000)
        err = await c.event("error", after=mark)
        assert err["sender"] == "audio" and "exceeds" in err["error"]
        await c.send({"command": "history", "speaker": "u", "text": "alive"})
        await c.event("addHistory")
        await c.send({"command": "hangup"})
        await c.event("hangup")
        await c.wait_closed()  # the server closes the socket once the dump is complete
    finally:
        await c.close()
    dump = (stack.recorder_path / f"{call_id}.events.jsonl").read_text().splitlines()
    errors = [
        json.loads(x["content"])
        for x in map(json.loads, dump)
        if x["type"] == "event" and json.loads(x["content"])["event"] == "error"
    ]
    assert len(errors) == len(CASES) + 2, "every error event is in the dump"


async def test_inbound_sip_commands_on_another_call_answer_with_an_error(
    stack: StackInfo, call_id: str
) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        for cmd, sender in [
            ({"command": "accept", "option": {}}, "accept"),
            ({"command": "ringing"}, "ringing"),
            ({"command": "reject", "reason": "busy"}, "reject"),
        ]:
            mark = len(c.events)
            await c.send(cmd)
            err = await c.event("error", after=mark)
            assert err["sender"] == sender and err["code"] == 400 and "no pending call" in err["error"]
        await c.send({"command": "invite", "option": {}})
        err = await c.event("error", sender="invite")
        assert "already" in err["error"]
        assert "hangup" not in c.names()
    finally:
        await c.close()


async def test_audio_before_invite_is_buffered_then_bounded(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        # 10 s of 16 kHz PCM, beyond the pre-invite buffer, in 1 s messages: well within the frame rate limit.
        for _ in range(10):
            await c.ws.send_bytes(b"\1\0" * 16000)
        err = await c.event("error", sender="audio")
        assert "before invite" in err["error"]
        assert len([e for e in c.events if e["event"] == "error"]) == 1, "one error, not one per frame"
        await c.invite()
        await c.send({"command": "hangup"})
        await c.event("hangup")
    finally:
        await c.close()


async def test_bad_query_and_wrong_method(stack: StackInfo) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.get(
            f"{stack.base}/call",
            params={"dump": "maybe"},
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ) as resp:
            assert resp.status == 400 and "dump" in (await resp.json())["error"]
        async with s.get(f"{stack.base}/call") as resp:
            assert resp.status == 400 and "WebSocket" in (await resp.json())["error"]
        async with s.get(f"{stack.base}/call/kill/x") as resp:
            assert resp.status == 405 and set(await resp.json()) == {"error", "code", "details"}
        async with s.get(f"{stack.base}/nope") as resp:
            assert resp.status == 404 and (await resp.json())["code"] == "NOT_FOUND"
