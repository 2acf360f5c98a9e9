"""Direct sockets between a frontend and the media processes it talks to, for what the inbox streams carry.

Every 20 ms frame used to cross Redis twice (frontend → Redis → media process and back), and each crossing
woke three processes and cost Redis a copy. Here a media process listens on a TCP port of its own
(`MEDIA_LINK_HOST`, any free port) and announces its address and a random token in its heartbeat; a frontend
dials the media processes it sends to, and both directions of that one connection then carry the batches
the inbox streams would have carried (the same `wire.pack` blobs). Redis keeps dispatch, the registry,
liveness, and every message for which no link is up: a link is an optimisation, never a requirement.

Frames: a 4-byte length and a 1-byte kind, then the payload.

- `HELLO` (dialer → listener): msgpack `{"proc", "token"}`; a wrong token closes the connection.
- `WELCOME` (listener → dialer): msgpack `{"proc"}`; the dialer sends nothing else before it.
- `AFTER`: the last entry the sender wrote to the receiver's inbox stream (empty: none). A sender moves a
  destination from the stream to a link with it, so that what it wrote before cannot be overtaken: the
  receiver holds the link's batches until its inbox reader has handled that entry, or for at most
  `HOLD_LIMIT` s (an entry that a Redis restart lost never comes).
- `BATCH`: one `wire.pack` list of messages.

A link that closes, or backs up past `MAX_BACKLOG` bytes (a receiver that stopped reading), is dropped and
the sender goes back to the stream; whatever sat in its buffers is lost, as audio is lost when a process
dies. Anyone who can reach the port needs the token, which only readers of Redis can see: a link is as
trusted as Redis itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from common import wire
from common.metrics import LINK_DROPS
from common.tasks import TaskSet

log = logging.getLogger("pbx.link")

HEADER = struct.Struct(">IB")
HELLO, WELCOME, AFTER, BATCH = 1, 2, 3, 4
# A batch is at most a tick's audio of every call a process holds (~0.7 KB a call); far beyond it is garbage.
MAX_FRAME = 64 << 20
# Bytes waiting in a link's send buffer past which it is dropped (the receiver is not reading).
MAX_BACKLOG = 8 << 20
# Seconds a receiver holds a new link's batches while waiting for its inbox reader (see AFTER).
HOLD_LIMIT = 1.0
# Seconds before dialing a media process again after a failed dial or a dropped link.
REDIAL_AFTER = 2.0
# Seconds before asking again about a media process that announces no link (link off, an older version).
NO_LINK_RECHECK = 10.0
DIAL_TIMEOUT = 2.0
HANDSHAKE_TIMEOUT = 5.0

Deliver = Callable[[list[dict[str, Any]]], None]
# Where a media process listens and its token, from its heartbeat: None when it has no link.
Lookup = Callable[[str], Awaitable[tuple[str, int, str] | None]]


def entry_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id (`"1700000000000-3"`) as a tuple that orders as Redis orders ids."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class InboxCursor:
    """How far a process's inbox reader has handled its stream; links wait on it (see AFTER)."""

    def __init__(self) -> None:
        self.done = (0, 0)
        self.on_advance: Callable[[], None] | None = None

    def advance(self, entry_id: bytes) -> None:
        self.done = entry_key(entry_id)
        if self.on_advance is not None:
            self.on_advance()

    def reached(self, entry_id: bytes) -> bool:
        return not entry_id or self.done >= entry_key(entry_id)


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind) + payload


class Link(asyncio.Protocol):
    """One connection between a frontend and a media process; `peer` is the process at the other end."""

    def __init__(self, links: Links, peer: str | None = None) -> None:
        self.links = links
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.ready = False
        # Sender side: the AFTER frame went out, batches may follow.
        self.switched = False
        # Dialer side: done once the listener welcomed it.
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        # Receiver side: batches held until the inbox reader has handled `_hold_for`.
        self._hold_for: bytes | None = None
        self._held: list[bytes] = []
        self._hold_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self.peer is None:  # accepted: the dialer has HANDSHAKE_TIMEOUT to say who it is
            asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._handshake_overdue)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        at = 0
        end = len(buf)
        while end - at >= HEADER.size:
            size, kind = HEADER.unpack_from(buf, at)
            if size > MAX_FRAME:
                self.drop(f"a frame of {size} bytes")
                return
            if end - at - HEADER.size < size:
                break
            start = at + HEADER.size
            payload = bytes(buf[start : start + size])
            at = start + size
            self._frame(kind, payload)
            if self.transport is None:
                return
        if at:
            del buf[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        self._release()  # what arrived was sent: deliver it
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError("the link closed during its handshake"))
            self.welcomed.exception()  # retrieved: nobody may be waiting any more
        self.links.lost(self)

    # --- frames ---------------------------------------------------------------------------------------------

    def _frame(self, kind: int, payload: bytes) -> None:
        if kind == BATCH and self.ready:
            if self._hold_for is not None:
                self._held.append(payload)
            else:
                self.links.deliver_blob(payload)
        elif kind == AFTER and self.ready:
            self._hold(payload)
        elif kind == HELLO and self.peer is None:
            self._hello(payload)
        elif kind == WELCOME and not self.ready and self.peer is not None:
            self.ready = True
            self.welcomed.set_result(None)
        else:
            self.drop(f"an unexpected frame of kind {kind}")

    def _hello(self, payload: bytes) -> None:
        try:
            hello = msgpack.unpackb(payload, raw=False)
            proc, token = str(hello["proc"]), str(hello["token"])
        except Exception:
            self.drop("an unreadable hello")
            return
        if not hmac.compare_digest(token.encode(), self.links.token.encode()):
            self.drop("a wrong token")
            return
        self.peer = proc
        self.ready = True
        self.write(WELCOME, msgpack.packb({"proc": self.links.proc_id}))
        self.links.accepted(self)

    def _handshake_overdue(self) -> None:
        if not self.ready and self.transport is not None:
            self.drop("no hello in time")

    def _hold(self, entry_id: bytes) -> None:
        if self.links.cursor.reached(entry_id):
            return
        self._hold_for = entry_id
        self.links.held(self)
        self._hold_timer = asyncio.get_running_loop().call_later(HOLD_LIMIT, self._hold_expired)

    def _hold_expired(self) -> None:
        log.warning("link from %s: inbox entry %s not read within %.1fs; going on without it",
                    self.peer, self._hold_for, HOLD_LIMIT)  # fmt: skip
        self._release()

    def inbox_advanced(self) -> None:
        if self._hold_for is not None and self.links.cursor.reached(self._hold_for):
            self._release()

    def _release(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        self._hold_for = None
        held, self._held = self._held, []
        for payload in held:
            self.links.deliver_blob(payload)

    @property
    def holding(self) -> bool:
        return self._hold_for is not None

    # --- sending --------------------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.ready and self.transport is not None and not self.transport.is_closing()

    def write(self, kind: int, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(frame(kind, payload))

    def backlog(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def drop(self, why: str) -> None:
        log.warning("link %s %s: %s; dropped", "with" if self.peer else "from", self.peer or "a client", why)
        LINK_DROPS.labels().value += 1
        if self.transport is not None:
            self.transport.abort()


class Links:
    """A process's links, by the process at their other end.

    A media process listens (`listen`); a frontend dials (`lookup` finds a media process's address in its
    heartbeat). `send` writes a batch for a process over its link when one is up, else returns False and the
    caller writes to the inbox stream. Batches that arrive go to `deliver`, as the inbox reader's do.
    """

    def __init__(
        self, proc_id: str, deliver: Deliver, cursor: InboxCursor, lookup: Lookup | None = None
    ) -> None:
        self.proc_id = proc_id
        self.deliver = deliver
        self.cursor = cursor
        cursor.on_advance = self._inbox_advanced
        self.lookup = lookup
        self.token = secrets.token_urlsafe(18)
        self.address: tuple[str, int] | None = None
        self._links: dict[str, Link] = {}
        self._holding: set[Link] = set()
        self._dialing: set[str] = set()
        self._next_dial: dict[str, float] = {}
        self._server: asyncio.Server | None = None
        self._tasks = TaskSet(log, "link:")

    # --- listening (media process) --------------------------------------------------------------------------

    async def listen(self, host: str, port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Link(self), host, port)
        sock = self._server.sockets[0]
        bound_port = sock.getsockname()[1]
        self.address = (advertised_host(host), bound_port)
        return self.address

    def announcement(self) -> dict[str, Any] | None:
        """The heartbeat's `link` field: where to dial and the token to give (None when not listening)."""
        if self.address is None:
            return None
        return {"host": self.address[0], "port": self.address[1], "token": self.token}

    def accepted(self, link: Link) -> None:
        assert link.peer is not None
        old = self._links.get(link.peer)
        self._links[link.peer] = link
        if old is not None and old is not link and old.transport is not None:
            old.transport.close()

    # --- sending --------------------------------------------------------------------------------------------

    def send(self, proc: str, blob: bytes, after: bytes | None) -> bool:
        """Write `blob` (a packed batch) to `proc` over its link; False when no link is up (use the stream).

        `after`: the last entry this process wrote to `proc`'s inbox stream, sent once when a link starts
        carrying batches (see AFTER)."""
        link = self._links.get(proc)
        if link is None or not link.open:
            if self.lookup is not None:
                self._maybe_dial(proc)
            return False
        if link.backlog() > MAX_BACKLOG:
            link.drop(f"{link.backlog()} bytes not taken by the other end")
            return False
        if not link.switched:
            link.write(AFTER, after or b"")
            link.switched = True
        link.write(BATCH, blob)
        return True

    def linked(self, proc: str) -> bool:
        link = self._links.get(proc)
        return link is not None and link.open

    # --- receiving ------------------------------------------------------------------------------------------

    def deliver_blob(self, payload: bytes) -> None:
        try:
            messages = wire.unpack(payload)
        except Exception:  # a corrupt batch must not stop the link
            log.exception("undecodable batch on a link")
            return
        self.deliver(messages)

    def _inbox_advanced(self) -> None:
        for link in list(self._holding):
            link.inbox_advanced()
            if not link.holding:
                self._holding.discard(link)

    def held(self, link: Link) -> None:
        self._holding.add(link)

    def lost(self, link: Link) -> None:
        self._holding.discard(link)
        if link.peer is not None and self._links.get(link.peer) is link:
            del self._links[link.peer]
            if self.lookup is not None:
                self._next_dial[link.peer] = time.monotonic() + REDIAL_AFTER

    # --- dialing (frontend) ---------------------------------------------------------------------------------

    def _maybe_dial(self, proc: str) -> None:
        if proc in self._dialing or not proc.startswith("media-"):
            return
        now = time.monotonic()
        if now < self._next_dial.get(proc, 0.0):
            return
        if len(self._next_dial) > 256:  # processes long gone: forget them
            self._next_dial = {p: t for p, t in self._next_dial.items() if t > now}
        self._dialing.add(proc)
        self._tasks.spawn(self._dial(proc), proc)

    async def _dial(self, proc: str) -> None:
        assert self.lookup is not None
        retry_in = REDIAL_AFTER
        hint = ""
        try:
            where = await self.lookup(proc)
            if where is None:
                retry_in = NO_LINK_RECHECK
                return
            host, port, token = where
            if host.startswith("127.") or host == "::1":
                # The default MEDIA_LINK_HOST on a worker host of its own: it reaches only that host.
                hint = f"; {host} is a loopback address: on another host, set MEDIA_LINK_HOST there"
            loop = asyncio.get_running_loop()
            link: Link | None = None
            try:
                async with asyncio.timeout(DIAL_TIMEOUT):
                    _, link = await loop.create_connection(lambda: Link(self, proc), host, port)
                    link.write(HELLO, msgpack.packb({"proc": self.proc_id, "token": token}))
                    await link.welcomed
            except BaseException:
                if link is not None and link.transport is not None:
                    link.transport.abort()
                raise
            self._links[proc] = link
            log.debug("linked to %s at %s:%d", proc, host, port)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cannot link to %s (%s)%s; its messages go through Redis", proc, exc, hint)
        finally:
            self._dialing.discard(proc)
            if not self.linked(proc):
                self._next_dial[proc] = time.monotonic() + retry_in

    # --- stopping -------------------------------------------------------------------------------------------

    async def close(self) -> None:
        self._tasks.cancel()
        if self._server is not None:
            self._server.close()
        for link in list(self._links.values()):
            if link.transport is not None:
                link.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


def advertised_host(host: str) -> str:
    """The address others dial: the bound one, or for a wildcard bind the address of the interface this
    host's default route leaves by (a UDP socket "connected" there sends nothing); loopback without one."""
    if host not in ("", "0.0.0.0", "::"):
        return host
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never reached, only routed
        return str(probe.getsockname()[0])
    return "127.0.0.1"


def link_lookup(redis: Any, keys: Any) -> Lookup:
    """A `Lookup` that reads a media process's heartbeat (`pbx:proc:{proc}`, JSON) for its `link` field."""

    async def lookup(proc: str) -> tuple[str, int, str] | None:
        raw = await redis.get(keys.proc(proc))
        if not raw:
            return None
        info = json.loads(raw).get("link")
        if not isinstance(info, dict):
            return None
        return str(info["host"]), int(info["port"]), str(info["token"])

    return lookup
