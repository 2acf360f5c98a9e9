"""`POST /precache`: a `tts` command synthesized into the media cache before a call speaks it (active-call's
route; docs/protocol.md, "active-call's API"). One warm media process of each host does it
(worker/call/precache.py), since the cache is a directory of each host; the answer is the first host's."""

from __future__ import annotations

import asyncio

from aiohttp import web

from common import wire
from common.errors import BadCommand, PbxError, Unavailable
from common.liveness import is_warm
from common.protocol import MAX_TEXT_FRAME, Tts, command_body, parse_command
from frontend.keys import HUB

# Seconds a synthesis may take before the request is answered 504 (it goes on, and lands in the cache).
PRECACHE_TIMEOUT = 60.0


def _error(message: str, status: int) -> web.Response:
    """active-call's `{"status":"error","error"}` with the API document's error body beside it."""
    code = "BAD_REQUEST" if status == 400 else "PROVIDER_ERROR" if status in (502, 504) else "INTERNAL_ERROR"
    return web.json_response(
        {"status": "error", "error": message, "code": code, "details": ""}, status=status
    )


async def precache(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    if request.content_length is not None and request.content_length > MAX_TEXT_FRAME:
        raise BadCommand(f"a command is at most {MAX_TEXT_FRAME} bytes")
    try:
        cmd = parse_command(await request.text())
    except PbxError as exc:
        return _error(exc.message, exc.status)
    if not isinstance(cmd, Tts):
        return _error("precache only accepts tts commands", 400)
    if cmd.streaming or cmd.base64:
        return _error("precache takes a whole text: not streaming, not base64", 400)
    hosts: dict[str, str] = {}
    for beat in await hub.registry.procs():
        if beat.get("role") == "media" and is_warm(beat) and int(beat.get("max_calls", 0)) > 0:
            host = str(beat.get("host") or beat.get("proc"))
            hosts[host] = min(hosts.get(host, str(beat["proc"])), str(beat["proc"]))
    if not hosts:
        raise Unavailable("no media process is ready", "precache needs a warm media process")
    waits = []
    for proc in hosts.values():
        req, fut = hub.replies.expect()
        body = {"op": wire.Op.PRECACHE, "frontend": hub.proc_id, "req": req, "cmd": command_body(cmd)}
        hub.send(proc, wire.msg(f"precache:{req}", wire.CTL, body))
        waits.append((req, fut))
    try:
        first = await asyncio.wait_for(asyncio.shield(waits[0][1]), PRECACHE_TIMEOUT)
    except TimeoutError:
        return _error(f"the synthesis took longer than {PRECACHE_TIMEOUT:g} s (it goes on)", 504)
    finally:
        for req, _ in waits[1:]:  # the other hosts' answers are not waited for
            hub.replies.forget(req)
        hub.replies.forget(waits[0][0])
    if first.get("status") == "error":
        return _error(str(first.get("error")), int(first.get("code") or 500))
    return web.json_response(
        {"status": first.get("status"), "cacheKey": first.get("cacheKey"), "bytes": first.get("bytes", 0)}
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/precache", precache)
