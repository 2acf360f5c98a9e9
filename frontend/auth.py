"""Optional API token (`API_TOKEN`): `Authorization: Bearer <token>` or a `token` query parameter.

Unset, every endpoint is open, as in RustPBX. Set, every route asks for it except the ones a load balancer
or a browser needs before it can know the token: `GET /health`, and the playground (`GET /`,
`/static/{name}`), which asks for the token itself. Unknown paths answer 401 too, so they reveal nothing.
Browsers cannot set headers on a WebSocket, hence the query parameter; it is never logged (see
`AccessLog`) and, like the header, never forwarded by the `/llm/v1` proxy.
"""

from __future__ import annotations

import hmac
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_log import AccessLogger

from common.errors import Unauthorized

QUERY_PARAM = "token"
# Routes (by their canonical path) that stay open with a token set.
OPEN_ROUTES = frozenset({"/health", "/", "/static/{name}"})


def bearer(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (scheme case-insensitive, RFC 6750 §2.1)."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def matches(candidate: str | None, token: str) -> bool:
    """`candidate == token`, in time that does not depend on where they differ."""
    if candidate is None:
        return False
    return hmac.compare_digest(candidate.encode(), token.encode())


def authenticated(request: web.Request, token: str) -> bool:
    return any(matches(bearer(h), token) for h in request.headers.getall("Authorization", ())) or any(
        matches(v, token) for v in request.query.getall(QUERY_PARAM, ())
    )


def is_open(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    # By the route that will serve the request, not by the path string: `/static/../call/lists` and the
    # like resolve to the route they reach.
    return resource is not None and resource.canonical in OPEN_ROUTES and request.method in ("GET", "HEAD")


def unauthorized(request: web.Request) -> web.Response:
    given = bool(request.headers.get("Authorization")) or QUERY_PARAM in request.query
    if given:
        exc = Unauthorized(
            "invalid API token",
            "the token given (Authorization: Bearer, or the token query parameter) is not this server's "
            "API_TOKEN",
        )
        challenge = 'Bearer realm="pbx", error="invalid_token"'
    else:
        exc = Unauthorized(
            "an API token is required",
            "send Authorization: Bearer <API_TOKEN>, or ?token=<API_TOKEN> on a WebSocket",
        )
        challenge = 'Bearer realm="pbx"'
    return web.json_response(exc.body(), status=exc.status, headers={"WWW-Authenticate": challenge})


def auth_middleware(token: str) -> Middleware:
    """Refuse requests without `token` (401 with the JSON error body and a `WWW-Authenticate` challenge)."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_open(request) or authenticated(request, token):
            return await handler(request)
        return unauthorized(request)

    return auth


class _Redacted:
    """A request as the access log sees it, with the token query parameter hidden."""

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    @property
    def path_qs(self) -> str:
        return str(self._request.rel_url.update_query({QUERY_PARAM: "***"}))


class AccessLog(AccessLogger):
    """aiohttp's access log (off unless gunicorn's access log is turned on) without the `token` value."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request is not None and QUERY_PARAM in request.query:
            request = cast(web.BaseRequest, _Redacted(request))
        super().log(request, response, time)
