"""CORS for the HTTP API: pages served from another origin may call it (`CORS_ORIGINS`, `*` by default).

RustPBX puts a permissive CORS layer in front of every route, and browser apps built for it rely on that.
Two parts: a middleware, first of all, that answers preflights itself (before the token check: a browser
never sends credentials on a preflight, and a preflight to a route without OPTIONS would be a 405); and a
response hook that marks every response, so JSON errors (401, 404, ...) and streamed `/llm/v1` answers,
whose headers go out before their handler returns, are readable by the page too. WebSocket upgrades are
left alone: browsers do not apply CORS to them.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from common.errors import Forbidden
from frontend.errors import error_response

ANY = "*"
# How long a browser may reuse a preflight's answer (Chromium caps it at 2 hours).
MAX_AGE = 600


class CorsPolicy:
    """Which origins may read the API's answers, and the headers that tell a browser so."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any = ANY in origins
        self.origins = frozenset(origins) - {ANY}

    def allows(self, origin: str) -> bool:
        return self.any or origin in self.origins

    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        method = request.headers.get("Access-Control-Request-Method")
        if request.method != "OPTIONS" or origin is None or method is None:
            return await handler(request)
        if not self.allows(origin):
            return error_response(
                Forbidden(
                    "origin not allowed",
                    f"CORS_ORIGINS does not list {origin!r}; pages of that origin cannot call this API",
                )
            )
        # Whatever the page asks for is granted (as RustPBX's permissive layer does): the token check and
        # the routes still judge the request itself. `Authorization` must be named, a `*` would not cover it.
        headers = {
            "Access-Control-Allow-Methods": method,
            "Access-Control-Max-Age": str(MAX_AGE),
            "Vary": "Access-Control-Request-Method, Access-Control-Request-Headers",
        }
        requested = request.headers.get("Access-Control-Request-Headers")
        if requested:
            headers["Access-Control-Allow-Headers"] = requested
        return web.Response(status=204, headers=headers)

    async def mark(self, request: web.Request, response: web.StreamResponse) -> None:
        """`on_response_prepare`: mark a response as readable by the asking page, if its origin may."""
        if response.status == 101:
            return
        if self.any:
            allowed = ANY
        else:
            # The answer depends on the asking origin: caches must keep one per origin.
            _vary(response, "Origin")
            origin = request.headers.get("Origin", "")
            if origin not in self.origins:
                return
            allowed = origin
        response.headers["Access-Control-Allow-Origin"] = allowed
        # Lets the page read `X-Pbx-Proc`, `WWW-Authenticate` and an LLM service's own headers.
        response.headers["Access-Control-Expose-Headers"] = ANY


def _vary(response: web.StreamResponse, name: str) -> None:
    present = [v.strip().lower() for value in response.headers.getall("Vary", ()) for v in value.split(",")]
    if name.lower() not in present and "*" not in present:
        response.headers.add("Vary", name)


def setup(app: web.Application, origins: tuple[str, ...]) -> None:
    """Put CORS in front of every other middleware of `app` and on every response it sends."""
    policy = CorsPolicy(origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await policy.preflight(request, handler)

    app.middlewares.insert(0, cors)
    app.on_response_prepare.append(policy.mark)
