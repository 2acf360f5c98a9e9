"""Call lifecycle over the real stack: invite, history, hangup, dump, duplicate ids, list and kill."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.e2e.client import CallClient, session_on_other_frontend
from tests.e2e.conftest import StackInfo

pytestmark = pytest.mark.e2e


async def test_invite_history_hangup(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.send({"command": "invite", "option": {"codec": "pcm"}})
        answer = await c.event("answer")
        start = c.events.index(await c.event("trackStart"))
        assert c.events.index(answer) == start + 1, "trackStart comes right before answer"
        assert c.events[start] == {
            "event": "trackStart",
            "trackId": call_id,
            "timestamp": c.events[start]["timestamp"],
        }
        assert answer["trackId"] == call_id and answer["sdp"] == ""
        assert abs(answer["timestamp"] - __import__("time").time() * 1000) < 10_000

        await c.send({"command": "history", "speaker": "user", "text": "hello there"})
        hist = await c.event("addHistory")
        assert hist["sender"] == call_id and hist["speaker"] == "user" and hist["text"] == "hello there"

        await c.send({"command": "hangup", "reason": "bye", "initiator": "caller"})
        hangup = await c.event("hangup")
        end = await c.event("trackEnd", trackId=call_id)
        assert c.events.index(end) < c.events.index(hangup)
        assert hangup["reason"] == "bye" and hangup["initiator"] == "caller"
        assert hangup["trackId"] == call_id
        for key in ("startTime", "answerTime", "hangupTime"):
            assert key in hangup and hangup[key].endswith("+00:00")
        await c.wait_closed()
    finally:
        await c.close()

    dump = stack.recorder_path / f"{call_id}.events.jsonl"
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    kinds = [
        (x["type"], json.loads(x["content"]).get("command") or json.loads(x["content"]).get("event"))
        for x in lines
    ]
    assert kinds[0] == ("command", "invite")
    assert (
        ("event", "answer") in kinds and ("command", "history") in kinds and ("event", "addHistory") in kinds
    )
    assert kinds[-1] == ("event", "hangup")
    assert all(isinstance(x["timestamp"], int) and isinstance(x["content"], str) for x in lines)
    assert not any(json.loads(x["content"]).get("event") == "binary" for x in lines)
    assert stack.redis.exists(f"pbx:call:{call_id}") == 0


async def test_dump_false_writes_no_file(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id, dump="false")
    await c.invite()
    await c.send({"command": "hangup"})
    await c.wait_closed()
    await c.close()
    assert not (stack.recorder_path / f"{call_id}.events.jsonl").exists()


async def test_duplicate_live_id_is_refused(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await s.ws_connect(f"{stack.ws}/call", params={"id": call_id})
            assert info.value.status == 409
            async with s.get(
                f"{stack.base}/call",
                params={"id": call_id},
                headers={
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            ) as resp:
                assert resp.status == 409
                body = await resp.json()
                assert set(body) == {"error", "code", "details"} and call_id in body["error"]
    finally:
        await c.close()


async def test_listed_before_invite_with_an_empty_option(stack: StackInfo, call_id: str) -> None:
    async def listed() -> dict[str, object]:
        async with aiohttp.ClientSession() as s, s.get(f"{stack.base}/call/lists") as resp:
            (item,) = [x for x in (await resp.json())["calls"] if x["id"] == call_id]
            return item  # type: ignore[no-any-return]

    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        item = await listed()
        assert set(item) == {"id", "call_type", "created_at", "option"}
        assert item["call_type"] == "websocket" and item["option"] == {}
        await c.invite(codec="pcmu")
        assert (await listed())["option"] == {"codec": "pcmu"}
    finally:
        await c.close()


async def test_list_and_kill_from_another_frontend(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(
            codec="pcmu",
            sip={"username": "u", "password": "hunter2"},
            tts={"provider": "tencent", "secretKey": "sk-secret", "secretId": "id-secret"},
        )
        assert c.frontend
        other = await session_on_other_frontend(stack.base, c.frontend)
        async with other:
            async with other.get(f"{stack.base}/call/lists") as resp:
                assert resp.headers["X-Pbx-Proc"] != c.frontend
                listing = await resp.json()
            raw = json.dumps(listing)
            assert "hunter2" not in raw and "sk-secret" not in raw and "id-secret" not in raw
            (item,) = [x for x in listing["calls"] if x["id"] == call_id]
            assert item["call_type"] == "websocket"
            assert item["created_at"].endswith("Z")
            assert item["option"]["codec"] == "pcmu"
            assert item["option"]["sip"]["password"] == "***"

            async with other.post(f"{stack.base}/call/kill/{call_id}") as resp:
                assert resp.headers["X-Pbx-Proc"] != c.frontend
                assert resp.status == 200 and await resp.json() is True
            hangup = await c.event("hangup")
            assert hangup["initiator"] == "system" and hangup["reason"] == "killed"
            await c.wait_closed()
            async with other.get(f"{stack.base}/call/lists") as resp:
                assert call_id not in [x["id"] for x in (await resp.json())["calls"]]
            dump = (stack.recorder_path / f"{call_id}.events.jsonl").read_text()
            assert '\\"password\\":\\"***\\"' in dump, "the invite is in the dump, its secrets masked"
            assert "hunter2" not in dump and "sk-secret" not in dump and "id-secret" not in dump
            async with other.post(f"{stack.base}/call/kill/{call_id}") as resp:
                assert resp.status == 404
                body = await resp.json()
                assert body["code"] == "CALL_NOT_FOUND" and set(body) == {"error", "code", "details"}
    finally:
        await c.close()


async def test_health(stack: StackInfo) -> None:
    h = stack.health()
    assert h["role"] == "web" and h["redis"] == "ok"
    assert h["media_processes"] == 2 and h["web_processes"] == 2
    await asyncio.sleep(0)
