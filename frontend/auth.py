"""Optional API token (`API_TOKEN`): `Authorization: Bearer <token>` or a `token` query parameter.

Unset, every endpoint is open, as in RustPBX. Set, every route asks for it except the ones a load balancer
or a browser needs before it can know the token: `GET /health`, and the playground (`GET /`,
`/static/{name}`), which asks for the token itself. Unknown paths answer 401 too, so they reveal nothing.
Browsers cannot set headers on a WebSocket, hence the query parameter; it is never logged (see
`AccessLog`) and, like the header, never forwarded by the `/llm/v1` proxy.

The call socket routes also take a short-lived call token in the same places (frontend/calltoken.py), so a
web page can place a call without holding the API token; every other route refuses one.
"""

from __future__ import annotations

import hmac
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_log import AccessLogger

from common.errors import Unauthorized
from frontend import calltoken
from frontend.calltoken import CallTokens, TokenRefused

QUERY_PARAM = "token"
# Routes (by their canonical path) that stay open with a token set.
OPEN_ROUTES = frozenset({"/health", "/", "/static/{name}"})
# Routes a call token opens (with GET, the WebSocket upgrade).
CALL_SOCKETS = frozenset(calltoken.CALL_PATHS)
# How the request was let in: "api_token" (the master token), "call_token", or absent (API_TOKEN unset, or an
# open route). The per-address call limit spares requests that showed the master token.
AUTHENTICATED_BY = web.RequestKey("authenticated_by", str)


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


def _route(request: web.Request) -> str | None:
    # By the route that will serve the request, not by the path string: `/static/../call/lists` and the
    # like resolve to the route they reach.
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def is_open(request: web.Request) -> bool:
    return _route(request) in OPEN_ROUTES and request.method in ("GET", "HEAD")


def _call_tokens_given(request: web.Request) -> list[str]:
    headers = (bearer(h) for h in request.headers.getall("Authorization", ()))
    return [
        value
        for value in (*headers, *request.query.getall(QUERY_PARAM, ()))
        if value and calltoken.is_call_token(value)
    ]


def _refused(exc: Unauthorized) -> web.Response:
    challenge = 'Bearer realm="pbx", error="invalid_token"'
    return web.json_response(exc.body(), status=exc.status, headers={"WWW-Authenticate": challenge})


def call_token_refusal(request: web.Request, tokens: CallTokens, given: list[str]) -> Unauthorized | None:
    """None when one of the call tokens `given` opens this request, else why none does."""
    route = _route(request)
    if request.method != "GET" or route not in CALL_SOCKETS:
        return Unauthorized(
            "a call token opens call sockets only",
            f"GET {', '.join(calltoken.CALL_PATHS)} take one; everything else takes the API token",
        )
    assert route is not None
    first: TokenRefused | None = None
    for token in given:
        try:
            tokens.check(token, route, request.query.get("id"))
            return None
        except TokenRefused as exc:
            first = first or exc
    return first


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


def auth_middleware(token: str, tokens: CallTokens | None = None) -> Middleware:
    """Refuse requests without `token` (401 with the JSON error body and a `WWW-Authenticate` challenge); with
    `tokens`, let a valid call token open a call socket."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_open(request):
            return await handler(request)
        if authenticated(request, token):
            request[AUTHENTICATED_BY] = "api_token"
            return await handler(request)
        given = _call_tokens_given(request) if tokens is not None else []
        if not given:
            return unauthorized(request)
        assert tokens is not None
        refusal = call_token_refusal(request, tokens, given)
        if refusal is not None:
            return _refused(refusal)
        request[AUTHENTICATED_BY] = "call_token"
        return await handler(request)

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
