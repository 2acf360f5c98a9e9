"""CallSocket's fast receive: audio frames straight from the parser, in order with the text messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from frontend import callsocket
from frontend.callsocket import CallSocket
from tests.unit.test_limits import ws_server


@contextlib.asynccontextmanager
async def client_of(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]], autoping: bool = True
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A client socket connected to a server that runs `handle`; both closed on exit."""
    server = await ws_server(handle)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(server.make_url("/ws"), autoping=autoping) as ws:
                yield ws
    finally:
        await server.close()


def test_the_installed_aiohttp_takes_the_fast_receive_and_the_lazy_ping() -> None:
    # If an aiohttp upgrade moves the parts CallSocket swaps, calls still work (every frame through
    # receive()), but the frontend's CPU per call goes up: this says so.
    assert callsocket.FAST_RECEIVE
    assert callsocket.LAZY_PING


async def serve(on_binary: object, script: list[str | bytes]) -> tuple[list[object], bool]:
    """A CallSocket server fed `script` by a client; what it saw, in order: text from `receive()`, bytes
    from `receive()` marked ("queued", b), and bytes from `on_binary` as they are."""
    seen: list[object] = []
    fast: list[bool] = []
    done = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = CallSocket(max_msg_size=1000)
        ws.on_binary = on_binary if on_binary is not None else seen.append  # type: ignore[assignment]
        await ws.prepare(request)
        fast.append(ws.fast_receive)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                seen.append(msg.data)
                if msg.data == "end":
                    done.set()
            elif msg.type == aiohttp.WSMsgType.BINARY:
                seen.append(("queued", msg.data))
        return ws

    async with client_of(handle) as ws:
        for item in script:
            if isinstance(item, str):
                await ws.send_str(item)
            else:
                await ws.send_bytes(item)
            await asyncio.sleep(0.01)
        await ws.send_str("end")
        await asyncio.wait_for(done.wait(), 5)
    return seen, fast[0]


async def test_frames_come_from_the_parser_and_keep_their_order() -> None:
    seen, fast = await serve(None, [b"a", "invite", b"b", b"c", "play", b"d"])
    assert fast
    assert seen == [b"a", "invite", b"b", b"c", "play", b"d", "end"]


async def test_a_frame_behind_a_waiting_text_message_waits_too() -> None:
    seen: list[object] = []
    done = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = CallSocket(max_msg_size=1000)
        ws.on_binary = seen.append
        await ws.prepare(request)
        await asyncio.sleep(0.2)  # the client's text and frame arrive while nothing reads
        async for msg in ws:
            seen.append(msg.data if msg.type == aiohttp.WSMsgType.TEXT else ("queued", msg.data))
            if msg.data == "end":
                done.set()
        return ws

    async with client_of(handle) as ws:
        await ws.send_str("invite")
        await ws.send_bytes(b"a")
        await asyncio.sleep(0.4)
        await ws.send_bytes(b"b")
        await asyncio.sleep(0.05)
        await ws.send_str("end")
        await asyncio.wait_for(done.wait(), 5)
    assert seen == ["invite", ("queued", b"a"), b"b", "end"]


async def test_a_failing_frame_handler_does_not_stop_the_socket() -> None:
    def boom(_frame: bytes) -> None:
        raise RuntimeError("handler failed")

    seen, _ = await serve(boom, [b"a", "still here"])
    assert seen == ["still here", "end"]


async def test_pings_wait_while_data_flows_and_resume_when_it_stops() -> None:
    """heartbeat 0.3 s: no ping while the client sends every 50 ms; once it stops, a ping a heartbeat later,
    and each answered pong arms the next (as aiohttp's own heartbeat does)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = CallSocket(max_msg_size=1000, heartbeat=0.3)
        ws.on_binary = lambda _frame: None
        await ws.prepare(request)
        async for _msg in ws:
            pass
        return ws

    pings: list[float] = []
    loop = asyncio.get_running_loop()
    async with client_of(handle, autoping=False) as ws:

        async def read() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.PING:
                    pings.append(loop.time())
                    await ws.pong(msg.data)

        reader = asyncio.create_task(read())
        began = loop.time()
        while loop.time() - began < 1.0:
            await ws.send_bytes(bytes(640))
            await asyncio.sleep(0.05)
        assert pings == [], "no ping while audio flows"
        quiet = loop.time()
        await asyncio.sleep(1.1)
        reader.cancel()
    assert len(pings) >= 2, [p - quiet for p in pings]
    assert 0.2 <= pings[0] - quiet <= 0.7, pings[0] - quiet
    assert all(0.2 <= b - a <= 0.7 for a, b in zip(pings, pings[1:], strict=False)), pings


async def test_a_client_that_stops_answering_pings_is_dropped() -> None:
    """heartbeat 0.3 s, no pong: the socket is closed about half a heartbeat after the ping, and the handler
    ends (aiohttp cancels it: its `finally` runs, where a call's connection tells the owner it is gone)."""
    ended = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = CallSocket(max_msg_size=1000, heartbeat=0.3)
        ws.on_binary = lambda _frame: None
        await ws.prepare(request)
        try:
            async for _msg in ws:
                pass
        finally:
            ended.set()
        return ws

    loop = asyncio.get_running_loop()
    async with client_of(handle, autoping=False) as ws:
        began = loop.time()
        while loop.time() - began < 0.6:
            await ws.send_bytes(bytes(640))
            await asyncio.sleep(0.05)
        quiet = loop.time()
        await asyncio.wait_for(ended.wait(), 3.0)
        took = loop.time() - quiet
    assert 0.3 <= took <= 1.5, took
