"""active-call's REST routes beside the original ones (docs/protocol.md, "active-call's API"): `GET /list`,
`GET /kill/{id}`, `POST /command/{id}` and `GET /events/{id}` (frontend/watch.py), from any frontend, for
every call of the cluster.

Their 404 carries active-call's `{"status":"not_found","id"}` and the JSON error body of the API document
(`error`, `code`, `details`) in one object, so a client of either finds what it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web

from common import wire
from common.errors import BadCommand, CallNotFound
from common.events import rfc3339
from common.protocol import (
    MAX_TEXT_FRAME,
    Accept,
    Invite,
    command_body,
    command_to_dict,
    parse_command,
    redact,
)
from common.registry import CallEntry
from frontend import watch
from frontend.keys import HUB

log = logging.getLogger("pbx.frontend.callapi")

# active-call's names of the call types (its ActiveCallType, camelCase).
CALL_TYPES = {"websocket": "webSocket", "webrtc": "webrtc", "sip": "sip"}


def _time(ms: int | None) -> str | None:
    return rfc3339(ms).replace("+00:00", "Z") if ms else None


def listing(entry: CallEntry) -> dict[str, Any]:
    """A call as active-call's `/list` shows it. Its option sits under the key `cs.option` there (a quirk of
    the code that builds it); it is given under that key and under `option`, secrets redacted, null until an
    `invite` or `accept` gave one. `startTime` is the answer's time, null before it."""
    return {
        "id": entry.id,
        "callType": CALL_TYPES.get(entry.call_type, entry.call_type),
        "option": entry.option,
        "cs.option": entry.option,
        "ringTime": _time(entry.ringing_at),
        "startTime": _time(entry.answered_at),
    }


def _not_found(call_id: str) -> web.Response:
    exc = CallNotFound(f"call {call_id!r} not found", "no active call has this id")
    return web.json_response({"status": "not_found", "id": call_id, **exc.body()}, status=exc.status)


async def list_active(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    entries = await hub.registry.entries()
    return web.json_response({"active_calls": [listing(e) for e in entries]})


async def kill(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    call_id = request.match_info["id"]
    entry = await hub.registry.get(call_id)
    if entry is None:
        return _not_found(call_id)
    hub.send(entry.owner or entry.frontend, wire.msg(call_id, wire.CTL, {"op": wire.Op.KILL}))
    return web.json_response({"status": "killed", "id": call_id})


async def command(request: web.Request) -> web.Response:
    """Any command, run by the call as if it came on its socket, in the order the owner gets them."""
    hub = request.app[HUB]
    call_id = request.match_info["id"]
    if request.content_length is not None and request.content_length > MAX_TEXT_FRAME:
        raise BadCommand(f"a command is at most {MAX_TEXT_FRAME} bytes")
    text = await request.text()
    entry = await hub.registry.get(call_id)
    if entry is None:
        return _not_found(call_id)
    cmd = parse_command(text, entry.call_type)  # BadCommand: 400 naming the field
    message = wire.msg(call_id, wire.CMD, command_body(cmd))
    if entry.owner:
        hub.send(entry.owner, message)
    else:  # not claimed yet: the frontend holding the socket passes it on with what it holds
        hub.send(entry.frontend, wire.msg(call_id, wire.CTL, {"op": wire.Op.RELAY, "m": message}))
    if isinstance(cmd, Invite | Accept):
        # What `/call/lists` and `/list` show, as the socket's frontend records it for its own commands.
        option = command_to_dict(cmd).get("option") or {}
        hub.background(
            hub.registry.update(call_id, option=json.dumps(redact(option))), f"call:{call_id}:option"
        )
    return web.json_response({"status": "sent", "id": call_id})


async def stream_events(request: web.Request) -> web.StreamResponse:
    """`GET /events/{id}`: the call's events and commands from now on, as Server-Sent Events, until it ends
    (frontend/watch.py)."""
    hub = request.app[HUB]
    call_id = request.match_info["id"]
    entry = await hub.registry.get(call_id)
    if entry is None:
        return _not_found(call_id)
    sub = hub.watches.open(call_id)
    ask = wire.msg(call_id, wire.CTL, {"op": wire.Op.WATCH, "frontend": hub.proc_id, "w": sub.id})
    if entry.owner:
        hub.send(entry.owner, ask)
    else:  # not claimed yet: the frontend holding the socket passes it on with what it holds
        hub.send(entry.frontend, wire.msg(call_id, wire.CTL, {"op": wire.Op.RELAY, "m": ask}))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream;charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy in front must not hold the frames back
        }
    )
    transport = request.transport
    try:
        # Answered once the owner copies the call's frames: what the client does after the answer is seen.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sub.started.wait(), watch.START_WAIT)
        await response.prepare(request)
        await watch.serve(hub.registry, sub, response, lambda: transport is None or transport.is_closing())
    except ConnectionError:
        pass  # the client left
    finally:
        hub.watches.close(sub)
        if not sub.ended:
            owner = entry.owner
            if not owner:
                with contextlib.suppress(Exception):
                    later = await hub.registry.get(call_id)
                    owner = later.owner if later is not None else ""
            if owner:
                hub.send(owner, wire.msg(call_id, wire.CTL, {"op": wire.Op.UNWATCH, "w": sub.id}))
    return response


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/list", list_active)
    app.router.add_get("/kill/{id}", kill)
    app.router.add_post("/command/{id}", command)
    app.router.add_get("/events/{id}", stream_events)
