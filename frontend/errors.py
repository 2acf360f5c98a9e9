"""Map every error to the JSON error body of the API document."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from common.errors import PbxError, Unavailable

log = logging.getLogger("pbx.frontend.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: PbxError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except PbxError as exc:
        return error_response(exc)
    except RedisError as exc:
        log.warning("redis unavailable during %s %s: %s", request.method, request.path, exc)
        return error_response(Unavailable("the call registry (Redis) is unavailable", str(exc)))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = {"error": exc.reason, "code": exc.reason.upper().replace(" ", "_"), "details": exc.text or ""}
        return web.json_response(
            body, status=exc.status, headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        )
    except Exception as exc:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal server error", "code": "INTERNAL_ERROR", "details": type(exc).__name__},
            status=500,
        )
