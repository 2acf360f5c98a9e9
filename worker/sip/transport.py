"""SIP transports (RFC 3261 §18): UDP and TCP, bytes in and out; parsing is the caller's.

Each media process listens on two UDP sockets: the shared `SIP_PORT` (bound by every media process with
`SO_REUSEPORT`, where new requests arrive; the kernel hashes each source address to one process) and a
port of its own, which it puts in the Via and Contact of every dialog it owns so that responses and
in-dialog requests come straight back to it (design §6). TCP listens on the own port; connections are
kept per remote address and reused for the requests and responses that go there.

A TCP stream is cut into messages at the blank line after the headers and `Content-Length` bytes after
it (RFC 3261 §18.3); a stream that breaks that framing is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from common.tasks import TaskSet

log = logging.getLogger("pbx.worker.sip.transport")

MAX_MESSAGE = 64 * 1024
RECEIVE_BUFFER = 4 * 1024 * 1024
# Any header line: `$` (MULTILINE) is before the LF, so the CR of every line but the last must be let in.
_CONTENT_LENGTH = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from, and which of our sockets it reached."""

    transport: str  # "udp" or "tcp"
    host: str
    port: int
    local_port: int


Handler = Callable[[bytes, Source], None]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler, local_port: int) -> None:
        self.handler = handler
        self.local_port = local_port
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.strip(b"\r\n"):  # a bare CRLF is a keep-alive (RFC 5626 §3.5.1)
            self.handler(data, Source("udp", addr[0], addr[1], self.local_port))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


def split_stream(buffer: bytearray) -> list[bytes]:
    """Whole messages taken off the front of a TCP stream buffer (the rest stays in it).

    Raises ValueError when the stream cannot be framed (no Content-Length, or a message too large)."""
    out: list[bytes] = []
    while True:
        while buffer[:2] == b"\r\n":  # keep-alive CRLFs between messages
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_MESSAGE:
                raise ValueError("headers longer than the message limit")
            return out
        m = _CONTENT_LENGTH.search(bytes(buffer[:end]))
        if m is None:
            raise ValueError("a message on a stream transport needs Content-Length (RFC 3261 §18.3)")
        total = end + 4 + int(m.group(1))
        if total > MAX_MESSAGE:
            raise ValueError("message larger than the limit")
        if len(buffer) < total:
            return out
        out.append(bytes(buffer[:total]))
        del buffer[:total]


class _Tcp(asyncio.Protocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")[:2]
        self.owner._tcp[self.peer] = self

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            messages = split_stream(self.buffer)
        except ValueError as exc:
            log.info("closing the TCP connection from %s:%d: %s", *self.peer, exc)
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            self.owner.handler(message, Source("tcp", self.peer[0], self.peer[1], self.owner.own_port))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner._tcp.get(self.peer) is self:
            del self.owner._tcp[self.peer]


def _returning(proto: _Udp) -> Callable[[], _Udp]:
    return lambda: proto


class SipTransport:
    """The SIP sockets of one media process."""

    def __init__(self, host: str, shared_port: int, handler: Handler) -> None:
        self.host = host
        self.shared_port = shared_port
        self.handler = handler
        self.own_port = 0
        self._udp: dict[int, _Udp] = {}
        self._tcp: dict[tuple[str, int], _Tcp] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._connecting = TaskSet(log, "sip-tcp:")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # TCP listens on the number the kernel gave the UDP socket; that TCP port may be in use (any local
        # connection can hold it), so pick again until both are free.
        for attempt in range(20):
            own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            own.bind((self.host, 0))
            try:
                server = await loop.create_server(lambda: _Tcp(self), self.host, own.getsockname()[1])
            except OSError:
                own.close()
                if attempt == 19:
                    raise
                continue
            break
        self._servers.append(server)
        self.own_port = own.getsockname()[1]
        sockets = [own]
        if self.shared_port:
            shared = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            shared.bind((self.host, self.shared_port))
            sockets.append(shared)
        for sock in sockets:
            # A burst of requests (many calls set up at once) must queue, not overflow the default buffer.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            port = sock.getsockname()[1]
            sock.setblocking(False)
            proto = _Udp(self.handler, port)
            await loop.create_datagram_endpoint(_returning(proto), sock=sock)
            self._udp[port] = proto

    def send(
        self, data: bytes, host: str, port: int, transport: str = "udp", local_port: int | None = None
    ) -> None:
        """Send one message. UDP goes out of the own port unless `local_port` names the shared one (a
        response must leave from the port its request reached, RFC 3261 §18.2.2 with rport)."""
        if transport == "tcp":
            conn = self._tcp.get((host, port))
            if conn is not None and conn.transport is not None and not conn.transport.is_closing():
                conn.transport.write(data)
                return
            self._connecting.spawn(self._connect_and_send(data, host, port), f"{host}:{port}")
            return
        udp = self._udp.get(local_port or self.own_port) or self._udp[self.own_port]
        if udp.transport is not None:
            udp.transport.sendto(data, (host, port))

    async def _connect_and_send(self, data: bytes, host: str, port: int) -> None:
        try:
            transport, _proto = await asyncio.get_running_loop().create_connection(
                lambda: _Tcp(self), host, port
            )
        except OSError as exc:
            log.info("cannot open TCP to %s:%d: %s", host, port, exc)
            return
        transport.write(data)

    async def close(self) -> None:
        self._connecting.cancel()
        for server in self._servers:
            server.close()
        for conn in list(self._tcp.values()):
            if conn.transport is not None:
                conn.transport.close()
        for udp in self._udp.values():
            if udp.transport is not None:
                udp.transport.close()
