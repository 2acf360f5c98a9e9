"""active-call's additions to the call API (issue 20) over the real stack, on `/call`."""

from __future__ import annotations

import json

import pytest

from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo

pytestmark = pytest.mark.e2e


async def test_custom_is_echoed_and_dumped(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        data = {"order": [3, 1, 2], "note": "für dich", "nested": {"ok": True, "none": None}}
        # Before the invite too: it needs no call set up.
        await c.send({"command": "custom", "sender": "crm", "data": data})
        echo = await c.event("custom")
        assert echo == {"event": "custom", "timestamp": echo["timestamp"], "sender": "crm", "data": data}
        await c.invite()
        await c.send({"command": "custom", "data": None})
        await c.send({"command": "custom", "sender": "x"})
        bare = await c.event("custom", after=c.events.index(echo) + 1)
        assert bare == {"event": "custom", "timestamp": bare["timestamp"], "data": None}
        error = await c.event("error")
        assert error["sender"] == "command" and error["code"] == 400
        assert error["error"] == "data: required field is missing"
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()
    dump = (stack.recorder_path / f"{call_id}.events.jsonl").read_text()
    lines = [json.loads(x) for x in dump.splitlines()]
    contents = [(x["type"], json.loads(x["content"])) for x in lines]
    assert ("command", {"command": "custom", "sender": "crm", "data": data}) in contents
    assert ("command", {"command": "custom", "data": None}) in contents
    assert [ev for t, ev in contents if t == "event" and ev["event"] == "custom"] == [echo, bare]
