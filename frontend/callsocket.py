"""A call's WebSocket: the size-limit close with a reason, and frames written without a task hop."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web, web_ws
from aiohttp._websocket.reader import WebSocketDataQueue

log = logging.getLogger("pbx.frontend.call")

# RFC 6455 §5.2: FIN set; opcodes 0x1 text and 0x2 binary. Server frames are never masked.
_TEXT, _BINARY = 0x81, 0x82
_LEN16, _LEN64 = struct.Struct("!BBH"), struct.Struct("!BBQ")
# Frames are written straight to the transport only while it holds less than this; past it the caller's
# queue and aiohttp's flow control take over (see CallConnection's writer).
DIRECT_WRITE_LIMIT = 16 * 1024


def frame(payload: bytes, first: int) -> bytes:
    """One unmasked, unfragmented WebSocket frame."""
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _LEN16.pack(first, 126, n) + payload
    return _LEN64.pack(first, 127, n) + payload


class _FrameQueue(WebSocketDataQueue):
    """aiohttp's queue of received messages, which hands a binary message to `sink` from the parser instead,
    when nothing waits in the queue ahead of it (so the messages keep their order)."""

    sink: Callable[[bytes], None] | None = None
    socket: CallSocket | None = None

    def feed_data(self, data: Any, size: int) -> None:
        sink, ws = self.sink, self.socket
        if sink is not None and data[0] is WSMsgType.BINARY and not self._buffer and ws is not None:
            if not ws.closed:
                try:
                    sink(data[1])
                except Exception:  # the parser must go on whatever a frame's handler does
                    log.exception("an audio frame's handler failed")
                return
        super().feed_data(data, size)


class CallSocket(web.WebSocketResponse):
    """The WebSocket of a call.

    Four things differ from aiohttp's:
    - A message over `max_msg_size` closes the socket with a reason, after an `error` event. aiohttp answers
      such a message by closing with a bare 1009 from inside `receive()`: the framing of the stream is lost,
      so the socket cannot go on. The call then ends as if the client had closed it.
    - `send_now` writes a frame from the caller's own stack. Each call gets a frame every 20 ms; going
      through `send_bytes` costs a task wake-up and a coroutine per frame, which at hundreds of calls is a
      large share of a frontend's CPU. Call sockets never compress, so a frame is a header and the payload,
      appended whole to the transport (aiohttp's own writes, pings and the close frame, are whole frames
      too, so the stream stays well formed).
    - `on_binary`, when set before `prepare`, gets each binary message (a caller's audio frame) straight from
      the frame parser, in the transport's `data_received`, when no text message waits ahead of it. Through
      `receive()` every frame cost a future, a task wake-up and the iterator's coroutines (~15 % of a
      frontend's CPU at 50 calls); text messages, pings and the close still go that way. It uses aiohttp's
      private queue and parser classes; `FAST_RECEIVE` says whether they were found as expected (else every
      message goes through `receive()`, as before), and a unit test checks it for the installed aiohttp.
    - The ping timer is moved when it fires, from the time of the client's last data, instead of being
      re-armed per received chunk (`LAZY_PING`, checked alike).
    """

    def __init__(self, *, max_msg_size: int, **kwargs: Any) -> None:
        super().__init__(max_msg_size=max_msg_size, **kwargs)
        self.max_msg_size = max_msg_size
        self.too_big_event: Callable[[], dict[str, Any]] | None = None
        self.on_binary: Callable[[bytes], None] | None = None
        self._data_at = float("-inf")  # loop time of the client's last data (see _on_data_received)
        self._transport: asyncio.Transport | None = None

    async def prepare(self, request: web.BaseRequest) -> Any:
        writer = await super().prepare(request)
        self._transport = request.transport
        return writer

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        if self.on_binary is None or not FAST_RECEIVE:
            super()._post_start(request, protocol, writer)
            return
        # aiohttp's _post_start makes the queue by the name its module holds: _FrameQueue for this call
        # only (synchronous, so no other socket sees it). What arrived with the handshake is queued before
        # the sink is set, so it keeps its place ahead of later frames.
        web_ws.WebSocketDataQueue = _FrameQueue
        try:
            super()._post_start(request, protocol, writer)
        finally:
            web_ws.WebSocketDataQueue = WebSocketDataQueue
        queue = self._reader
        if isinstance(queue, _FrameQueue):
            queue.sink, queue.socket = self.on_binary, self

    @property
    def fast_receive(self) -> bool:
        """Whether binary messages go to `on_binary` from the parser (see the class's docstring)."""
        return isinstance(self._reader, _FrameQueue)

    def send_now(self, data: bytes | str) -> bool:
        """Write one message now if the transport takes it without waiting; False (nothing written) when
        the socket is closing or the client is not keeping up, and the caller must queue it."""
        transport = self._transport
        if (
            transport is None
            or self.closed
            or transport.is_closing()
            or transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT
        ):
            return False
        if isinstance(data, str):
            transport.write(frame(data.encode(), _TEXT))
        else:
            transport.write(frame(data, _BINARY))
        return True

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message and not self.closed:
            if self.too_big_event is not None:
                event = json.dumps(self.too_big_event(), separators=(",", ":"), ensure_ascii=False)
                try:
                    await self.send_str(event)
                except (ConnectionError, RuntimeError):
                    pass
            # A close frame's reason is at most 123 bytes.
            message = f"message too big (limit {self.max_msg_size} bytes)".encode()[:123]
        return await super().close(code=code, message=message, drain=drain)

    def _reset_heartbeat(self) -> None:
        # aiohttp (3.14) re-arms the ping timer when data arrives after close() began, typically the
        # client's reply to our close frame: the loop's timer then kept the closed socket, its request,
        # transport and parser, and the CallConnection for 1.5 × `heartbeat` (30 s at ping=20).
        if not self.closed:
            super()._reset_heartbeat()

    def _on_data_received(self) -> None:
        # Data from the client: the next ping may wait, and a pong awaited is no longer needed. Only noted
        # here; the ping timer, when it fires, moves itself to a heartbeat after the last data. (aiohttp
        # re-arms the timer from a callback scheduled per received chunk: with a caller's audio, a callback,
        # a timer computation and four calls every 20 ms per call.)
        if not LAZY_PING:
            super()._on_data_received()
            return
        loop = self._loop
        if loop is None or self._heartbeat is None:
            return
        self._data_at = loop.time()
        if self._pong_response_cb is not None:
            self._cancel_pong_response_cb()
        if self._heartbeat_cb is None and not self.closed:  # a ping went out: the next one's timer
            self._heartbeat_cb = loop.call_at(self._data_at + self._heartbeat, self._send_heartbeat)

    def _send_heartbeat(self) -> None:
        loop, heartbeat = self._loop, self._heartbeat
        if LAZY_PING and loop is not None and heartbeat is not None and not self.closed:
            due = self._data_at + heartbeat
            if loop.time() < due:
                self._heartbeat_cb = loop.call_at(due, self._send_heartbeat)
                return
        super()._send_heartbeat()


def _fast_receive_fits() -> bool:
    """Whether this aiohttp makes a socket's queue as `CallSocket._post_start` expects: by the name
    `WebSocketDataQueue` in aiohttp.web_ws, a class whose `feed_data` gets each parsed message."""
    return (
        getattr(web_ws, "WebSocketDataQueue", None) is WebSocketDataQueue
        and callable(getattr(web.WebSocketResponse, "_post_start", None))
        and callable(getattr(WebSocketDataQueue, "feed_data", None))
        and hasattr(WebSocketDataQueue, "_buffer")
    )


FAST_RECEIVE = _fast_receive_fits()


def _lazy_ping_fits() -> bool:
    """Whether this aiohttp's heartbeat has the parts `CallSocket`'s lazy ping timer overrides and uses (else
    aiohttp's own timer runs, re-armed per received chunk)."""
    probe = web.WebSocketResponse()
    return all(
        callable(getattr(web.WebSocketResponse, name, None))
        for name in ("_on_data_received", "_send_heartbeat", "_cancel_pong_response_cb")
    ) and all(hasattr(probe, name) for name in ("_pong_response_cb", "_heartbeat_cb", "_heartbeat", "_loop"))


LAZY_PING = _lazy_ping_fits()
