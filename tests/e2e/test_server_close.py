"""A call the server ends while its client is still streaming audio: the client still reads its `hangup`.

The frontend closes the transport right after its close frame, without waiting for the client's; a client
still sending audio then gets a reset, which could throw away events it has not read yet. This checks that
the last events arrive under that race, many calls at once."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp

from tests.e2e.conftest import StackInfo

CALLS = 30


async def _call(session: aiohttp.ClientSession, stack: StackInfo, got: dict[str, list[str]]) -> None:
    call_id = f"close.{uuid.uuid4()}"
    names: list[str] = []
    got[call_id] = names
    async with session.ws_connect(f"{stack.ws}/call", params={"id": call_id}) as ws:
        await ws.send_str(json.dumps({"command": "invite", "option": {"codec": "pcm"}}))

        async def stream() -> None:
            frame = b"\0\1" * 320
            while not ws.closed:
                try:
                    await ws.send_bytes(frame)
                except (ConnectionError, RuntimeError):
                    return
                await asyncio.sleep(0.005)

        streamer: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                name = json.loads(msg.data).get("event")
                names.append(name)
                if name == "answer":
                    streamer = asyncio.create_task(stream())
                    await asyncio.sleep(0.3)
                    async with session.post(f"{stack.base}/call/kill/{call_id}") as resp:
                        assert resp.status == 200
        except aiohttp.ClientError as exc:
            names.append(f"client error {exc!r}")
        finally:
            if streamer is not None:
                streamer.cancel()


async def test_killed_calls_get_their_hangup_while_streaming(stack: StackInfo) -> None:
    got: dict[str, list[str]] = {}
    async with aiohttp.ClientSession() as session:
        await asyncio.wait_for(asyncio.gather(*(_call(session, stack, got) for _ in range(CALLS))), 60)
    missing = {cid: names for cid, names in got.items() if "hangup" not in names}
    shown = list(missing.values())[:3]
    assert not missing, f"{len(missing)} of {CALLS} calls never read their hangup: {shown}"
