"""Per-socket rate limits (WS_MAX_COMMANDS_PER_SEC, WS_MAX_AUDIO_FRAMES_PER_SEC), the message-size close,
and new calls refused at once when every media process is at MAX_CALLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from common.keys import Keys
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack

KEYS = Keys()

pytestmark = pytest.mark.e2e

FRAME = b"\1\0" * 320  # 20 ms of 16 kHz PCM


def errors(c: CallClient, sender: str, code: int, after: int = 0) -> list[dict[str, Any]]:
    return [
        e
        for e in c.events[after:]
        if e["event"] == "error" and e.get("sender") == sender and e.get("code") == code
    ]


async def until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.05)


async def test_command_flood_gets_429_and_the_call_goes_on(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        mark = len(c.events)
        sent = 400
        for i in range(sent):
            await c.ws.send_str(json.dumps({"command": "history", "speaker": "u", "text": str(i)}))

        def answered() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            added = [e for e in c.events[mark:] if e["event"] == "addHistory"]
            return added, errors(c, "command", 429, mark)

        await until("every command answered", lambda: sum(map(len, answered())) == sent)
        added, refused = answered()
        # The burst is one second's worth (100, less the invite), plus what refilled while sending.
        assert 90 <= len(added) <= 250, len(added)
        assert len(refused) == sent - len(added) >= 150
        assert all("100 commands per second" in e["error"] for e in refused)
        assert all("WS_MAX_COMMANDS_PER_SEC" in e["error"] for e in refused)
        assert all(e["trackId"] == call_id for e in refused)
        # The commands that went through are the first ones, in order.
        texts = [e["text"] for e in added]
        assert texts[:90] == [str(i) for i in range(90)]

        await asyncio.sleep(1.0)
        mark = len(c.events)
        for i in range(20):
            await c.send({"command": "history", "speaker": "u", "text": f"after {i}"})
        await c.event("addHistory", text="after 19", after=mark)
        assert not errors(c, "command", 429, mark), "a second later the limit has refilled"
        await c.send({"command": "hangup"})
        await c.event("hangup")
        await c.wait_closed()
    finally:
        await c.close()
    dump = (stack.recorder_path / f"{call_id}.events.jsonl").read_text().splitlines()
    logged = [
        json.loads(x["content"])
        for x in map(json.loads, dump)
        if x["type"] == "event" and '"code":429' in x["content"].replace(" ", "")
    ]
    assert 1 <= len(logged) <= 3, "the dump records at most one 429 a second, not the flood"


async def test_audio_flood_is_dropped_with_one_error_a_second(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        mark = len(c.events)
        # 400 frames a second for 2.5 s: 150 saved up + 150/s pass, the rest is dropped.
        start = time.monotonic()
        for tick in range(125):
            for _ in range(8):
                await c.ws.send_bytes(FRAME)
            delay = start + (tick + 1) * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        flood_s = time.monotonic() - start
        await asyncio.sleep(0.3)
        refused = errors(c, "audio", 429, mark)
        assert 1 <= len(refused) <= int(flood_s) + 1, (len(refused), flood_s)
        stamps = [e["timestamp"] for e in refused]
        assert all(b - a >= 950 for a, b in zip(stamps, stamps[1:], strict=False)), stamps
        assert all("150 audio frames per second" in e["error"] for e in refused)
        counts = [int(m.group(1)) for e in refused if (m := re.search(r"\((\d+) so far\)", e["error"]))]
        assert len(counts) == len(refused) and counts == sorted(counts) and counts[0] >= 1
        if len(counts) > 1:
            assert counts[-1] >= 100, "frames are dropped all through the flood"

        # Real-time audio afterwards passes, and the call works.
        await asyncio.sleep(1.0)
        mark = len(c.events)
        start = time.monotonic()
        for i in range(50):
            await c.ws.send_bytes(FRAME)
            delay = start + (i + 1) * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await c.send({"command": "history", "speaker": "u", "text": "still here"})
        await c.event("addHistory", text="still here", after=mark)
        assert not errors(c, "audio", 429, mark), "real-time audio is within the limit"
        await c.send({"command": "hangup"})
        await c.event("hangup")
    finally:
        await c.close()


async def test_message_over_the_socket_limit_is_explained(stack: StackInfo, call_id: str) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        mark = len(c.events)
        # The server closes the socket before the client has sent it all.
        with contextlib.suppress(ConnectionError):
            await c.ws.send_str("x" * (5 << 20))
        await c.wait_closed(timeout=10)
        err = await c.event("error", after=mark, sender="socket")
        assert err["code"] == 413 and "exceeds" in err["error"] and err["trackId"] == call_id
        assert c.ws.close_code in (1009, 1006)
    finally:
        await c.close()


def media_beats(info: StackInfo) -> list[dict[str, Any]]:
    beats = [info.redis.get(k) for k in info.redis.scan_iter(match=KEYS.proc_pattern("media-*"))]
    return [json.loads(b) for b in beats if b]


async def wait_media_calls(info: StackInfo, calls: int) -> None:
    await until(
        f"a media heartbeat with {calls} calls", lambda: [b["calls"] for b in media_beats(info)] == [calls]
    )


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    root = tmp_path_factory.mktemp("one-slot")
    with running_stack(root, 1, 1, MAX_CALLS="1", PBX_CLAIM_TIMEOUT="2") as info:
        yield info


async def test_no_capacity_is_refused_at_once(one_slot: StackInfo, call_id: str) -> None:
    first = await CallClient.open(one_slot.ws, call_id=call_id)
    clients = [first]
    try:
        await first.invite()
        await wait_media_calls(one_slot, 1)

        t0 = time.monotonic()
        second = await CallClient.open(one_slot.ws, call_id=call_id + "-2")
        clients.append(second)
        hangup = await second.event("hangup", timeout=2)
        elapsed = time.monotonic() - t0
        assert elapsed < 2.0, elapsed
        assert second.names() == ["error", "hangup"]
        err = second.events[0]
        assert err["sender"] == "worker" and err["code"] == 503 and "MAX_CALLS" in err["error"]
        assert err["trackId"] == call_id + "-2"
        assert hangup["reason"] == "no_capacity" and hangup["initiator"] == "system"
        assert hangup["trackId"] == call_id + "-2" and "hangupTime" in hangup
        await second.wait_closed()
        assert not one_slot.redis.exists(f"pbx:call:{call_id}-2"), "a refused call is never registered"

        # Heartbeats can be stale: a frontend that believes there is room still ends a call nobody takes
        # after PBX_CLAIM_TIMEOUT (2 s here). A made-up heartbeat with room shows that backstop.
        one_slot.redis.set(
            KEYS.proc("media-phantom"),
            json.dumps({"role": "media", "proc": "media-phantom", "calls": 0, "capacity": 5}),
            px=10_000,
        )
        await asyncio.sleep(0.6)  # the frontend's cached figures expire
        t0 = time.monotonic()
        third = await CallClient.open(one_slot.ws, call_id=call_id + "-3")
        clients.append(third)
        hangup = await third.event("hangup", timeout=6)
        assert 1.5 <= time.monotonic() - t0 <= 5.0
        assert hangup["reason"] == "no_worker"
        assert (await third.event("error"))["code"] == 503
        one_slot.redis.delete(KEYS.proc("media-phantom"))

        # Once the first call is over (and a heartbeat says so), a new call works.
        await first.send({"command": "hangup"})
        await first.event("hangup")
        await wait_media_calls(one_slot, 0)
        await asyncio.sleep(0.6)
        fourth = await CallClient.open(one_slot.ws, call_id=call_id + "-4")
        clients.append(fourth)
        await fourth.invite()
        await fourth.send({"command": "hangup"})
        assert (await fourth.event("hangup"))["reason"] == "normal_clearing"
    finally:
        for c in clients:
            await c.close()


async def test_short_calls_in_quick_succession_are_not_refused(one_slot: StackInfo, call_id: str) -> None:
    # One slot, calls one after the other, faster than the frontend re-reads the heartbeats (0.5 s): each
    # call that ended gives its room back, and a heartbeat says so as soon as the full process frees up.
    await wait_media_calls(one_slot, 0)
    await asyncio.sleep(0.6)
    t0 = time.monotonic()
    for i in range(8):
        c = await CallClient.open(one_slot.ws, call_id=f"{call_id}-q{i}")
        try:
            await c.invite()
            await c.send({"command": "hangup"})
            assert (await c.event("hangup"))["reason"] == "normal_clearing", c.names()
            await c.wait_closed()
        finally:
            await c.close()
        # The freed process beats at once: whenever the frontend re-reads, it finds the room.
        await wait_media_calls(one_slot, 0)
    assert time.monotonic() - t0 < 5.0


async def test_a_flood_of_streamed_pieces_is_held_to_its_rate_and_each_dropped_one_named(
    stack: StackInfo, call_id: str
) -> None:
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        mark = len(c.events)
        sent = 20_000
        tokens = [f" t{i}" for i in range(sent)]
        # A provider without credentials (none in the test stack): the pieces that get through are not
        # synthesized (local Piper would be busy with them for seconds after this test). Each piece names it:
        # after a failed track ends, the next piece starts another (the first piece's option is the track's).
        nowhere = {"provider": "tencent"}
        start = time.monotonic()
        for i, token in enumerate(tokens):  # as fast as this client can: ~100,000 a second
            body = {"command": "tts", "text": token, "playId": "llm", "streaming": True, "option": nowhere}
            await c.ws.send_str(json.dumps(body))
            if i % 500 == 499:
                await asyncio.sleep(0)  # the client reads its errors meanwhile (one that does not is cut off)
        await c.send({"command": "history", "speaker": "u", "text": "marker"})
        # Handled in order: once the marker is back, every piece was forwarded or refused.
        await c.event("addHistory", text="marker", after=mark, timeout=30)
        took = time.monotonic() - start
        refused = errors(c, "command", 429, mark)
        named = [m.group(1) for e in refused if (m := re.search(r'text " (t\d+)"\)$', e["error"]))]
        assert len(named) == len(refused), refused[:3]
        assert all(
            e["error"].startswith(
                "more than 5000 streamed tts pieces per second (WS_MAX_TTS_PIECES_PER_SEC): "
                'dropped tts (playId "llm", text '
            )
            for e in refused
        ), refused[:3]
        # The burst (two seconds' worth, the stream's first tts aside) and what refilled meanwhile.
        passed = sent - len(refused)
        assert 10_000 <= passed <= 10_001 + 5000 * took, (passed, took)
        await c.send({"command": "interrupt"})
        await c.send({"command": "hangup"})
        await c.event("hangup", timeout=10)
        await c.wait_closed()
    finally:
        await c.close()
    dump = (stack.recorder_path / f"{call_id}.events.jsonl").read_text().splitlines()
    recorded = [json.loads(x["content"]) for x in map(json.loads, dump) if x["type"] == "command"]
    forwarded = [cmd["text"].strip() for cmd in recorded if cmd["command"] == "tts"]
    assert len(forwarded) == passed
    # Each piece went through or was named in its own error: none lost, none both.
    assert sorted(forwarded + named, key=lambda t: int(t[1:])) == [t.strip() for t in tokens]
