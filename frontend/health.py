"""`GET /health`: this process's role and what it can see of the cluster."""

from __future__ import annotations

import time

from aiohttp import web
from redis.exceptions import RedisError

from common.liveness import is_warm
from frontend.keys import HUB

_STARTED = time.time()


async def health(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    body: dict[str, object] = {
        "status": "running",
        "role": "web",
        "proc": hub.proc_id,
        "uptime": round(time.time() - _STARTED, 1),
        "connections": len(hub.connections),
    }
    try:
        calls = await hub.redis.zcard(hub.keys.calls)
        procs = await hub.registry.procs()
        media = [p for p in procs if p.get("role") == "media"]
        body.update(
            redis="ok",
            calls=calls,
            media_processes=len(media),
            # Media processes with their models loaded (the others are warming up and take no call yet).
            media_warm=sum(1 for p in media if is_warm(p)),
            capacity=sum(int(p.get("capacity", 0)) for p in procs if p.get("role") == "media"),
            web_processes=sum(1 for p in procs if p.get("role") == "web"),
        )
        status = 200
    except RedisError as exc:
        body.update(status="degraded", redis=f"unavailable: {exc}")
        status = 503
    return web.json_response(body, status=status)
