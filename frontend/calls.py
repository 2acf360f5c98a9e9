"""The call endpoints: the three WebSocket call types, `/call/lists` and `/call/kill/{id}`."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

import msgpack
from aiohttp import web

from common import events, wire
from common.errors import BadCommand, CallNotFound, DuplicateCall, RateLimited
from common.events import SERVER_SIDE_TRACK
from common.logs import call_id_var
from common.metrics import call_failed
from common.protocol import MAX_CALL_ID, MAX_TEXT_FRAME, valid_call_id
from frontend import auth, clientaddr
from frontend.callsocket import CallSocket
from frontend.connection import CallConnection
from frontend.hub import Hub
from frontend.keys import HUB

log = logging.getLogger("pbx.frontend.calls")

# Seconds between log lines about refused calls (no_capacity), and the count since the last line / its time.
REFUSAL_LOG_EVERY = 10.0
_refusals: list[float] = [0, -REFUSAL_LOG_EVERY]
_rate_refusals: list[float] = [0, -REFUSAL_LOG_EVERY]
# Bytes of outgoing data the kernel (and, again, the transport) may hold per call socket: ~0.5 s of PCM.
SEND_BUFFER = 16 * 1024


def _flag(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise BadCommand(f"query parameter {name}: expected true or false, got {raw!r}")


def _ping(request: web.Request) -> int:
    raw = request.query.get("ping", "20")
    try:
        value = int(raw)
    except ValueError:
        raise BadCommand(f"query parameter ping: expected whole seconds, got {raw!r}") from None
    if value < 0:
        raise BadCommand("query parameter ping: must not be negative")
    return value


def _call_id(request: web.Request) -> str:
    call_id = request.query.get("id") or f"s.{uuid.uuid4()}"
    if not valid_call_id(call_id):
        raise BadCommand(
            f"query parameter id: must be at most {MAX_CALL_ID} printable characters without spaces"
        )
    return call_id


def _server_track(request: web.Request, call_id: str) -> str:
    """active-call's `serverSideTrack`: the trackId of what the server plays, by the rule of call ids."""
    track = request.query.get("serverSideTrack") or SERVER_SIDE_TRACK
    if not valid_call_id(track):
        raise BadCommand(
            "query parameter serverSideTrack: must be at most "
            f"{MAX_CALL_ID} printable characters without spaces"
        )
    if track == call_id:
        # `mute{trackId}` and the events would no longer tell the caller's track from the server's.
        raise BadCommand("query parameter serverSideTrack: must differ from the call id")
    return track


def _limit_send_buffers(request: web.Request) -> None:
    """Keep little audio queued below us: what sits in kernel or transport buffers can't be interrupted,
    and a client that stops reading is noticed (and its audio dropped) within about a second."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    with contextlib.suppress(AttributeError, NotImplementedError):
        transport.set_write_buffer_limits(high=SEND_BUFFER)


async def _refuse_no_capacity(
    request: web.Request, hub: Hub, call_id: str, call_type: str, ws: CallSocket
) -> web.StreamResponse:
    """Accept the socket, send `error{code:503}` and `hangup{reason:"no_capacity"}`, close. Nothing is
    registered: no media process will ever see this call.

    All of it from this one task, with nothing else reading the socket: aiohttp's `close()` then reads the
    client's frames up to its close reply before it closes the connection. Closed while another task reads
    the socket, aiohttp drops the connection at once; the `invite` a client sends right after connecting then
    reached a closed socket, the kernel answered with a reset, and the client lost the two events still
    unread in its buffers (about one refused call in ten, in a burst).
    """
    why = hub.capacity.refused
    _refusals[0] += 1
    if time.monotonic() - _refusals[1] >= REFUSAL_LOG_EVERY:  # an overload refuses many: a line now and then
        log.warning("new call refused (%d since the last such line): %s", int(_refusals[0]), why)
        _refusals[:] = [0, time.monotonic()]
    call_failed(call_type, "no_capacity")
    refusal = events.ended_by_system(call_id, why, 503, "no_capacity", events.now_ms())
    await ws.prepare(request)
    with contextlib.suppress(ConnectionError, RuntimeError):  # the client is gone already
        for ev in refusal:
            await ws.send_str(json.dumps(ev, separators=(",", ":"), ensure_ascii=False))
        await ws.close()
    return ws


async def _over_rate(request: web.Request, hub: Hub, call_type: str) -> web.Response | None:
    """The 429 for a client address that opened more new calls than CALLS_PER_IP_PER_MIN lets it, or None.

    Requests that showed the master API token are not counted: that is the operator's backend, which may
    place every call of a deployment from one address."""
    if not hub.call_rate.enabled or request.get(auth.AUTHENTICATED_BY) == "api_token":
        return None
    address = clientaddr.limit_key(clientaddr.client_address(request, hub.settings.trusted_proxies))
    wait = await hub.call_rate.take(address)
    if wait <= 0:
        return None
    _rate_refusals[0] += 1
    if time.monotonic() - _rate_refusals[1] >= REFUSAL_LOG_EVERY:
        log.warning("new call refused (%d since the last such line): %s over CALLS_PER_IP_PER_MIN",
                    int(_rate_refusals[0]), address)  # fmt: skip
        _rate_refusals[:] = [0, time.monotonic()]
    call_failed(call_type, "rate_limited")
    settings = hub.settings
    exc = RateLimited(
        "too many new calls from this address",
        f"{address} may open {settings.calls_per_ip_per_min:g} calls a minute (CALLS_PER_IP_PER_MIN), "
        f"{max(settings.calls_per_ip_burst, 1):g} at once (CALLS_PER_IP_BURST); the next in {wait:.1f} s",
    )
    return web.json_response(exc.body(), status=exc.status, headers={"Retry-After": str(math.ceil(wait))})


def call_handler(call_type: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        hub = request.app[HUB]
        call_id = _call_id(request)
        dump = _flag(request, "dump", True)
        ping = _ping(request)
        server_track = _server_track(request, call_id)
        call_id_var.set(call_id)
        ws = CallSocket(
            heartbeat=ping or None,
            max_msg_size=4 * MAX_TEXT_FRAME,
            writer_limit=SEND_BUFFER,
            # No permessage-deflate: audio frames do not compress, and deflating each one costs CPU.
            compress=False,
        )
        ws.headers["X-Pbx-Proc"] = hub.proc_id
        if not ws.can_prepare(request).ok:
            raise BadCommand("this endpoint takes a WebSocket upgrade")
        if call_id in hub.connections and not await hub.registry.resumable(call_id):
            raise DuplicateCall(f"call {call_id!r} already exists", "a live call already uses this id")
        over = await _over_rate(request, hub, call_type)
        if over is not None:
            return over
        ticket = await hub.capacity.admit()
        if ticket is None and await hub.registry.get(call_id) is None:
            # Every media process is full or draining: say so now rather than after the claim timeout. An
            # id already in the registry goes on below, to its 409 or, on `/call/sip`, to the inbound call
            # a media process already holds.
            return await _refuse_no_capacity(request, hub, call_id, call_type, ws)
        try:
            return await _serve_call(request, hub, call_id, call_type, ws, dump, ping, server_track)
        finally:
            hub.capacity.release(ticket)

    return handle


async def _serve_call(
    request: web.Request,
    hub: Hub,
    call_id: str,
    call_type: str,
    ws: CallSocket,
    dump: bool,
    ping: int,
    server_track: str,
) -> web.StreamResponse:
    """Register the call, dispatch it (or attach to the inbound call it names) and serve its socket."""
    params = msgpack.packb({"dump": dump, "ping": ping, "serverSideTrack": server_track})
    # In the table before it is dispatched: the owner's `claimed` may arrive before the handshake ends.
    conn = CallConnection(hub, call_id, call_type, ws)
    old = hub.connections.get(call_id)
    if old is not None:
        # A new socket for a resumable call whose old socket is on this frontend: that one goes first.
        await hub.replace(old)
    hub.connections[call_id] = conn
    try:
        # Dispatched while the handshake completes, so a media process is usually ready first.
        conn.created_ms = await hub.registry.register_pending(
            call_id, call_type, hub.proc_id, params, host=hub.settings.host_name
        )
    except DuplicateCall:
        # `/call/sip?id=<dialogId>`: the app picks up an inbound call that a media process holds; or a call
        # with `option.resume` gets a new socket (docs/protocol.md, "Resuming a call").
        owner = await hub.registry.attach(call_id, hub.proc_id) if call_type == "sip" else None
        op = wire.Op.ATTACH
        if owner is None:
            owner, op = await hub.registry.resume(call_id, call_type, hub.proc_id), wire.Op.RESUME
        if owner is None:
            hub.connections.pop(call_id, None)
            raise
        conn.created_ms = events.now_ms()
        body = {"op": op, "frontend": hub.proc_id, "socket": conn.socket_id, "dump": dump,
                "serverSideTrack": server_track}  # fmt: skip
        hub.send(owner, wire.msg(call_id, wire.CTL, body))
        conn.owner = owner  # the inbox keeps order: commands arrive after the attach
    except BaseException:
        hub.connections.pop(call_id, None)
        raise
    try:
        _limit_send_buffers(request)
        await ws.prepare(request)
        log.info("%s call opened", call_type)
        await conn.serve()
    finally:
        if hub.connections.get(call_id) is conn:  # (a new socket of a resumed call may have replaced it)
            del hub.connections[call_id]
        if not ws.prepared:
            conn.client_gone()
        log.info("call socket closed")
    return ws


async def list_calls(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    entries = await hub.registry.entries()
    return web.json_response({"calls": [e.listing() for e in entries]})


async def kill_call(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    call_id = request.match_info["id"]
    entry = await hub.registry.get(call_id)
    if entry is None:
        raise CallNotFound(f"call {call_id!r} not found", "no active call has this id")
    target = entry.owner or entry.frontend
    hub.send(target, wire.msg(call_id, wire.CTL, {"op": wire.Op.KILL}))
    return web.json_response(True)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/call", call_handler("websocket"))
    app.router.add_get("/call/webrtc", call_handler("webrtc"))
    app.router.add_get("/call/sip", call_handler("sip"))
    app.router.add_get("/call/lists", list_calls)
    app.router.add_post("/call/kill/{id}", kill_call)
