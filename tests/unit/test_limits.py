"""Token bucket, media-capacity cache and the call socket's message-size close."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import fakeredis
import pytest
from aiohttp import WSCloseCode, web
from aiohttp.test_utils import TestServer

from common.keys import Keys
from common.protocol import parse_command
from common.registry import Registry
from frontend.callsocket import CallSocket
from frontend.limits import (
    CAPACITY_CACHE_TTL,
    MAX_PIECE_FRAME,
    CommandLimit,
    MediaCapacity,
    TokenBucket,
    describe,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def takes(bucket: TokenBucket, n: int) -> int:
    return sum(bucket.take() for _ in range(n))


def test_bucket_starts_full_with_one_seconds_worth() -> None:
    clock = Clock()
    bucket = TokenBucket(100, clock=clock)
    assert takes(bucket, 150) == 100, "the burst is one second's worth"
    assert not bucket.take()


def test_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(64, clock=clock)
    takes(bucket, 64)
    clock.now += 0.125
    assert takes(bucket, 20) == 8, "1/8 s at 64/s is 8 tokens"
    clock.now += 1 / 128
    assert bucket.take() is False, "half a token is not one"
    clock.now += 1 / 128
    assert bucket.take() is True
    clock.now += 60
    assert takes(bucket, 200) == 64, "a long pause saves up one burst, not more"


def test_bucket_steady_rate_is_the_limit() -> None:
    clock = Clock()
    bucket = TokenBucket(150, clock=clock)
    takes(bucket, 150)
    passed = 0
    for _ in range(1000):  # 10 s of a client sending every 10 ms, 3 frames each: 300/s
        clock.now += 0.01
        passed += takes(bucket, 3)
    assert 1490 <= passed <= 1510, passed


def test_bucket_failed_take_spends_nothing() -> None:
    clock = Clock()
    bucket = TokenBucket(2, burst=2, clock=clock)
    assert bucket.take(2)
    clock.now += 0.25
    assert not bucket.take(1), "half a token"
    clock.now += 0.25
    assert bucket.take(1), "the failed take did not spend the half token"


def piece(text: str, play_id: str | None = "llm", **more: Any) -> tuple[Any, int]:
    frame = json.dumps({"command": "tts", "text": text, "playId": play_id, "streaming": True, **more})
    return parse_command(frame), len(frame)


def command(body: dict[str, Any]) -> tuple[Any, int]:
    frame = json.dumps(body)
    return parse_command(frame), len(frame)


def test_a_thousand_pieces_a_second_pass_for_minutes_and_commands_keep_their_own_budget() -> None:
    clock = Clock()
    limit = CommandLimit(100, 5000, clock=clock)
    assert limit.admit(*piece("Hello")) is None, "the stream's first tts is a command"
    word = piece(" word")
    for _ in range(120_000):  # two minutes of an LLM at 1,000 tokens a second
        clock.now += 0.001
        assert limit.admit(*word) is None
    assert limit.commands.take(99), "the pieces took nothing from the commands' budget"
    assert limit.admit(*piece("", endOfStream=True)) is None


def test_a_whole_reply_at_once_passes_and_a_flood_of_pieces_is_held_to_the_rate() -> None:
    clock = Clock()
    limit = CommandLimit(100, 5000, clock=clock)
    limit.admit(*piece("Hi"))
    x = piece(" x")
    assert sum(limit.admit(*x) is None for _ in range(12_000)) == 10_000, "a two-second burst"
    passed = refused_by_pieces = 0
    for _ in range(10_000):  # then 10 s of a flood at 50,000 a second
        clock.now += 0.001
        for _ in range(50):
            refused = limit.admit(*x)
            passed += refused is None
            refused_by_pieces += refused is limit.pieces
    assert 49_900 <= passed <= 50_100, passed
    assert refused_by_pieces == 500_000 - passed
    assert limit.admit(*command({"command": "interrupt"})) is None, "an interrupt still gets through"


def test_what_counts_as_a_piece() -> None:
    clock = Clock()  # never moves: nothing refills
    limit = CommandLimit(100, 1000, clock=clock)

    def commands_spent() -> float:
        return 100 - limit.commands._tokens

    limit.admit(*piece("a"))
    limit.admit(*piece("b"))
    assert commands_spent() == 1, "only the first opened the stream"
    limit.admit(*piece("c", play_id="other"))
    assert commands_spent() == 2, "another playId opens another stream"
    limit.admit(*piece("d", play_id="llm"))
    assert commands_spent() == 3, "the first stream is no longer open"
    limit.admit(*piece("e", play_id="llm"))
    assert commands_spent() == 3, "a piece of the open stream"
    limit.admit(*piece("f" * MAX_PIECE_FRAME, play_id="llm"))
    assert commands_spent() == 4, "a frame over MAX_PIECE_FRAME is a command"
    for body in ({"command": "interrupt"}, {"command": "play", "url": "a.wav"}, {"command": "hangup"}):
        limit.admit(*piece("g"))
        limit.admit(*command(body))
        spent = commands_spent()
        limit.admit(*piece("h"))
        assert commands_spent() == spent + 1, f"{body['command']} closed the stream"
    spent = commands_spent()
    limit.admit(*command({"command": "history", "speaker": "u", "text": "t"}))
    limit.admit(*command({"command": "tts", "text": "more", "playId": "llm"}))
    limit.admit(*piece("i"))
    assert commands_spent() == spent + 2, "other commands, and plain tts of the same playId, leave it open"
    limit.admit(*command({"command": "tts", "text": "Hi", "playId": "plain"}))
    limit.admit(*command({"command": "tts", "text": "Hi", "playId": "plain"}))
    assert commands_spent() == spent + 4, "a plain tts opens no stream"
    limit.admit(*piece("j", play_id=None))
    limit.admit(*piece("k", play_id=None))
    assert commands_spent() == spent + 5, "no playId is a playId of its own"
    limit.admit(None, 10)
    assert commands_spent() == spent + 6, "a bad frame is a command"
    limit.admit(*piece("l", play_id=None))
    assert commands_spent() == spent + 6, "and does not close the stream"
    limit.admit(*piece("once", play_id="x", endOfStream=True))
    limit.admit(*piece("once more", play_id="x"))
    assert commands_spent() == spent + 8, "a stream ended by its first tts is not open"


def test_the_end_of_an_open_stream_is_never_dropped_and_then_the_stream_is_closed() -> None:
    clock = Clock()
    limit = CommandLimit(1, 1, clock=clock)
    assert limit.admit(*piece("Hi")) is None
    assert limit.admit(*piece(" there")) is None
    assert limit.admit(*piece(" you")) is None, "two seconds' worth"
    assert limit.admit(*piece(" all")) is limit.pieces
    end = piece("!" * 2000, endOfStream=True)
    assert limit.admit(*end) is None, "over the limit and over the piece size, the end still passes"
    assert limit.admit(*end) is limit.commands, "once closed, an end is a command like any other"


def test_a_refused_command_is_named() -> None:
    cmd, size = piece(' "quoted"\n', endOfStream=True)
    assert describe(cmd, size) == 'tts (playId "llm", text " \\"quoted\\"\\n", endOfStream)'
    cmd, size = piece("y" * 100, play_id=None)
    assert describe(cmd, size) == f'tts (no playId, text "{"y" * 80}"... (100 characters))'
    assert describe(*command({"command": "history", "speaker": "u", "text": "t"})) == "history"
    assert describe(None, 12) == "a text frame of 12 characters"


def test_bucket_edge_rates() -> None:
    clock = Clock()
    assert takes(TokenBucket(0, clock=clock), 10_000) == 10_000, "0 means no limit"
    slow = TokenBucket(0.5, clock=clock)
    assert takes(slow, 5) == 1, "a rate under one still lets one through"
    clock.now += 1.0
    assert not slow.take()
    clock.now += 1.0
    assert slow.take()


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    redis = fakeredis.FakeAsyncRedis()
    yield Registry(redis, Keys("pbx:"))
    await redis.aclose()


async def beat(registry: Registry, proc: str, role: str = "media", **info: Any) -> None:
    await registry.heartbeat(proc, {"role": role, "proc": proc, **info}, 3.0)


class CountingRegistry:
    """A registry stand-in that counts heartbeat reads."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.reads = 0

    async def procs(self) -> list[dict[str, Any]]:
        self.reads += 1
        return await self.registry.procs()


async def test_capacity_from_heartbeats(registry: Registry) -> None:
    await beat(registry, "media-1", calls=3, capacity=4)
    await beat(registry, "media-2", calls=5, capacity=0)  # draining, still has calls
    await beat(registry, "web-1", role="web", calls=9)
    clock = Clock()
    capacity = MediaCapacity(registry, clock=clock)
    assert await capacity.free() == 1
    ticket = await capacity.admit()
    assert ticket is not None
    assert await capacity.admit() is None, "the call admitted counts against the cached figure"
    capacity.release(ticket)
    assert await capacity.free() == 1, "a call that ended before the next read gives its room back"
    ticket = await capacity.admit()
    assert ticket is not None
    await beat(registry, "media-1", calls=4, capacity=4)
    clock.now += 0.5
    assert await capacity.free() == 0


async def test_each_frontend_takes_its_share_of_the_room(registry: Registry) -> None:
    await beat(registry, "media-1", calls=10, capacity=30)
    await beat(registry, "media-2", calls=0, capacity=5)
    for frontend in ("web-1", "web-2", "web-3"):
        await beat(registry, frontend, role="web", calls=0)
    assert await MediaCapacity(registry).free() == 9, "25 free among 3 frontends: 9 each (rounded up)"
    await beat(registry, "media-1", calls=30, capacity=30)
    await beat(registry, "media-2", calls=4, capacity=5)
    assert await MediaCapacity(registry).free() == 1, "the last free call is anyone's"


async def test_a_draining_frontend_leaves_the_room_to_the_others(registry: Registry) -> None:
    await beat(registry, "media-1", calls=0, capacity=4)
    await beat(registry, "web-1", role="web", calls=0)
    await beat(registry, "web-2", role="web", calls=2, draining=True)
    assert await MediaCapacity(registry).free() == 4, "web-2 takes no new call (SIGTERM): all 4 are web-1's"


async def test_capacity_none_when_no_media_process(registry: Registry) -> None:
    await beat(registry, "web-1", role="web", calls=0)
    assert await MediaCapacity(registry).admit() is None


async def test_a_warming_process_counts_with_its_max_calls(registry: Registry) -> None:
    # A media process that is still loading its models announces capacity 0: calls admitted on it wait in
    # the dispatch stream until it is warm, instead of being refused.
    await beat(registry, "media-1", calls=0, capacity=0, max_calls=3, warm=False)
    capacity = MediaCapacity(registry)
    assert [await capacity.admit() is not None for _ in range(4)] == [True, True, True, False]
    await beat(registry, "media-1", calls=0, capacity=0, max_calls=0, warm=False)  # stopping while warming
    assert await MediaCapacity(registry).free() == 0
    await beat(registry, "media-1", calls=2, capacity=3, max_calls=3, warm=True)
    await beat(registry, "media-2", calls=9, capacity=9, max_calls=9)  # from before warm-ups: warm
    assert await MediaCapacity(registry).free() == 1


async def test_capacity_is_read_once_per_ttl(registry: Registry) -> None:
    await beat(registry, "media-1", calls=0, capacity=100)
    counting = CountingRegistry(registry)
    clock = Clock()
    capacity = MediaCapacity(counting, clock=clock)  # type: ignore[arg-type]
    tickets = [await capacity.admit() for _ in range(20)]
    assert None not in tickets
    assert counting.reads == 1, "a burst of calls costs one Redis read"
    clock.now += CAPACITY_CACHE_TTL - 0.01
    await capacity.free()
    assert counting.reads == 1
    clock.now += 0.02
    assert await capacity.free() == 100, "a new read forgets the calls admitted against the old one"
    assert counting.reads == 2
    capacity.release(tickets[0])
    assert await capacity.free() == 100, "a release from before the read changes nothing"


async def ws_server(handler: Any) -> TestServer:
    app = web.Application()
    app.router.add_get("/ws", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_call_socket_explains_a_message_too_big() -> None:
    received: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = CallSocket(max_msg_size=1000)
        ws.too_big_event = lambda: {"event": "error", "sender": "socket", "code": 413}
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                received.append(msg.data)
        return ws

    server = await ws_server(handle)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(server.make_url("/ws")) as ws:
                await ws.send_str("small")
                await ws.send_str("x" * 5000)
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.TEXT
                assert json.loads(msg.data) == {"event": "error", "sender": "socket", "code": 413}
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert msg.data == WSCloseCode.MESSAGE_TOO_BIG
                assert msg.extra == "message too big (limit 1000 bytes)"
    finally:
        await server.close()
    assert received == ["small"]


async def test_call_socket_closes_normally_otherwise() -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        ws = CallSocket(max_msg_size=1000)
        ws.too_big_event = lambda: {"event": "error"}
        await ws.prepare(request)
        await ws.close()
        return ws

    server = await ws_server(handle)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(server.make_url("/ws")) as ws:
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == WSCloseCode.OK
                assert not msg.extra
    finally:
        await server.close()


async def test_closed_call_socket_is_released_at_once() -> None:
    """The client's reply to our close frame must not re-arm the ping timer: the loop would keep the
    closed socket (and the call's connection, request, transport) for 1.5 × heartbeat (a memory leak
    proportional to call churn)."""
    sockets: list[weakref.ref[CallSocket]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = CallSocket(max_msg_size=1000, heartbeat=20)
        sockets.append(weakref.ref(ws))
        await ws.prepare(request)
        await ws.close()  # the server closes first, as when a call hangs up
        return ws

    server = await ws_server(handle)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.ws_connect(server.make_url("/ws")) as ws:
                    msg = await ws.receive(timeout=5)
                    assert msg.type == aiohttp.WSMsgType.CLOSE
        await asyncio.sleep(0.05)
        gc.collect()
        assert len(sockets) == 3
        assert [ref() for ref in sockets] == [None, None, None]
    finally:
        await server.close()


async def test_send_now_frames_parse_as_aiohttp_sends_them() -> None:
    """Frames written straight to the transport (no task hop) are valid WebSocket frames of every length
    class (7-bit, 16-bit and 64-bit lengths), interleave with aiohttp's own writes, and stop at close."""
    sizes = [0, 1, 125, 126, 640, 65535, 65536, 70000]
    results: list[bool] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = CallSocket(max_msg_size=1 << 20)
        await ws.prepare(request)
        for n in sizes:
            results.append(ws.send_now(bytes([n % 251]) * n))
        results.append(ws.send_now('{"event":"é"}'))
        await ws.send_str("from aiohttp")
        results.append(ws.send_now(b"after"))
        await ws.close()
        results.append(ws.send_now(b"after close"))
        return ws

    server = await ws_server(handle)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(server.make_url("/ws"), max_msg_size=1 << 20) as ws:
                got = []
                async for msg in ws:
                    got.append(msg.data)
    finally:
        await server.close()
    # A full transport buffer makes send_now refuse (the caller queues); here the client reads.
    assert results[: len(sizes)] == [n <= 16 * 1024 or r for n, r in zip(sizes, results, strict=False)]
    written = [bytes([n % 251]) * n for n, ok in zip(sizes, results, strict=False) if ok]
    assert got[: len(written)] == written
    assert got[len(written) :] == ['{"event":"é"}', "from aiohttp", b"after"]
    assert results[-1] is False, "nothing is written once the socket is closed"
