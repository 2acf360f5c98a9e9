"""A call's WebSocket: the size-limit close with a reason, and frames written without a task hop."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, web

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


class CallSocket(web.WebSocketResponse):
    """The WebSocket of a call.

    Two things differ from aiohttp's:
    - A message over `max_msg_size` closes the socket with a reason, after an `error` event. aiohttp answers
      such a message by closing with a bare 1009 from inside `receive()`: the framing of the stream is lost,
      so the socket cannot go on. The call then ends as if the client had closed it.
    - `send_now` writes a frame from the caller's own stack. Each call gets a frame every 20 ms; going
      through `send_bytes` costs a task wake-up and a coroutine per frame, which at hundreds of calls is a
      large share of a frontend's CPU. Call sockets never compress, so a frame is a header and the payload,
      appended whole to the transport (aiohttp's own writes, pings and the close frame, are whole frames
      too, so the stream stays well formed).
    """

    def __init__(self, *, max_msg_size: int, **kwargs: Any) -> None:
        super().__init__(max_msg_size=max_msg_size, **kwargs)
        self.max_msg_size = max_msg_size
        self.too_big_event: Callable[[], dict[str, Any]] | None = None
        self._transport: asyncio.Transport | None = None

    async def prepare(self, request: web.BaseRequest) -> Any:
        writer = await super().prepare(request)
        self._transport = request.transport
        return writer

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
