"""`/llm/v1/{path}`: a streaming proxy to an OpenAI-compatible service (`OPENAI_BASE_URL`).

Whatever method, path, query and body the bot sends go upstream with the client's headers (minus Host,
hop-by-hop ones and those that describe the browser or the client's network rather than the request), plus
`Authorization: Bearer $OPENAI_API_KEY` when the client brought no key of its own and the server lends its
key: only to callers it knows (API_TOKEN set, so every caller showed it), or to anyone once the operator says
so (LLM_PROXY_OPEN, TRUST_CLIENTS). Otherwise a request without a key of its own is refused here with 401,
rather than forwarded to fail upstream: the refusal can say which setting opens the proxy.
The answer comes back as it arrives, chunk by chunk, so a server-sent-events completion reaches the bot token
by token; status, headers and bytes are the upstream's own (compressed bodies stay compressed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from urllib.parse import unquote, unquote_plus

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from common.errors import BadCommand, ProviderError, Unauthorized
from frontend import auth
from frontend.keys import LLM_SESSION, SETTINGS

log = logging.getLogger("pbx.frontend.llm")

PREFIX = "/llm/v1"
# Bounds DNS, TCP and TLS to the service; the answer itself may take as long as the model thinks.
CONNECT_TIMEOUT = 10.0
# How often a request waiting on the service checks that its client is still there. aiohttp under gunicorn
# does not cancel a handler when its client leaves, and a non-streaming completion sends nothing until it is
# done, so without this a departed client would keep a model generating (and billing) to the end.
CLIENT_CHECK_INTERVAL = 0.5

# RFC 9110 §7.6.1: these describe one hop, not the message.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The body is read whole and aiohttp frames it again (Content-Length of what it sends). aiohttp has already
# answered the client's `Expect: 100-continue`; forwarded, it would hold the upstream request for another.
_REQUEST_ONLY = frozenset({"host", "content-length", "expect"})
# What a browser or the network in front of us says about the client, not about the request: the page it is
# on (Origin, Referer), its cookies for this host (which may belong to other apps on it), its fetch metadata
# and client hints (Sec-*), its address as our load balancer saw it. None of it is the LLM service's
# business, and some services treat a request with an Origin as a browser's and refuse it.
_ABOUT_THE_CLIENT = frozenset(
    {"origin", "referer", "cookie", "forwarded", "via", "x-real-ip", "x-client-ip", "cf-connecting-ip",
     "true-client-ip"}
)  # fmt: skip
_ABOUT_THE_CLIENT_PREFIXES = ("sec-", "x-forwarded-")
# Without these aiohttp adds headers of its own: an Accept-Encoding the client never sent would bring back
# a compressed body the client cannot read (bytes pass through undecoded), so only the client's go out.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def _dropped(headers: CIMultiDictProxy[str], extra: frozenset[str]) -> frozenset[str]:
    """Names (lower case) not to forward: hop-by-hop ones, `extra`, and any the Connection header lists."""
    listed = {
        token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")
    }
    return _HOP_BY_HOP | extra | listed


def upstream_url(base: str, request: web.Request, api_token: str = "") -> URL:
    """`<base>/<path after /llm/v1>?<query>`, path and query exactly as the client encoded them; with an
    `api_token`, less the `token` parameter, which is this server's and never goes upstream."""
    tail = request.rel_url.raw_path[len(PREFIX) :]
    # A dot segment would climb out of the base path (`/llm/v1/../admin`), with our key attached.
    if any(unquote(segment) in (".", "..") for segment in tail.split("/")):
        raise BadCommand("the path must not contain '.' or '..' segments")
    query = request.rel_url.raw_query_string
    if api_token and query:
        query = "&".join(
            part for part in query.split("&") if unquote_plus(part.partition("=")[0]) != auth.QUERY_PARAM
        )
    return URL(base.rstrip("/") + tail + (f"?{query}" if query else ""), encoded=True)


def upstream_headers(request: web.Request, api_key: str, api_token: str = "") -> CIMultiDict[str]:
    """The client's headers as they go upstream, with the configured key unless the client sent its own.

    An `Authorization` that carries this server's `api_token` is this hop's and is dropped, so the
    configured key goes in its place."""
    drop = _dropped(request.headers, _REQUEST_ONLY | _ABOUT_THE_CLIENT)
    headers = CIMultiDict(
        (k, v)
        for k, v in request.headers.items()
        if k.lower() not in drop
        and not k.lower().startswith(_ABOUT_THE_CLIENT_PREFIXES)
        and not (api_token and k.lower() == "authorization" and auth.matches(auth.bearer(v), api_token))
    )
    if api_key and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _no_answer(url: URL, exc: BaseException) -> ProviderError:
    # Only the host goes into the error: the request's headers (and so the key) stay out of it.
    where = f"{url.host}:{url.port}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return ProviderError("the LLM service is unreachable", f"{where}: {reason}")
    if isinstance(exc, TimeoutError):
        return ProviderError(
            "the LLM service is unreachable", f"{where}: no connection within {CONNECT_TIMEOUT:g} s"
        )
    # Connected, but the service hung up or sent no valid HTTP answer.
    return ProviderError("the LLM service did not answer", f"{where}: {type(exc).__name__}")


def _key_not_lent() -> web.Response:
    exc = Unauthorized(
        "this server lends its LLM key only to authenticated callers",
        "send your own key as Authorization: Bearer <key>; or the operator sets API_TOKEN (callers then send "
        "it) or LLM_PROXY_OPEN=1 (any caller may use the server's OPENAI_API_KEY)",
    )
    challenge = {"WWW-Authenticate": 'Bearer realm="llm"'}
    return web.json_response(exc.body(), status=exc.status, headers=challenge)


class _ClientLeft(Exception):
    """Writing to the client failed: it has gone."""


async def _send(write: Awaitable[object]) -> None:
    # Keeps the client's connection errors apart from the upstream's (aiohttp's reset error is both a
    # ConnectionError and a ClientError), so each side's failure is handled as its own.
    try:
        await write
    except ConnectionError as exc:
        raise _ClientLeft from exc


async def _forward(request: web.Request, url: URL, headers: CIMultiDict[str]) -> web.StreamResponse:
    body = await request.read() if request.body_exists else None
    started = time.monotonic()
    try:
        upstream = await request.app[LLM_SESSION].request(
            request.method,
            url,
            headers=headers,
            data=body,
            skip_auto_headers=_NO_AUTO_HEADERS,
            allow_redirects=False,
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = _no_answer(url, exc)
        log.warning("llm %s %s: %s (%s)", request.method, url.path, error.message, error.details)
        raise error from None
    waited = (time.monotonic() - started) * 1e3
    sent = 0
    try:
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        drop = _dropped(upstream.headers, frozenset())
        for name, value in upstream.headers.items():
            # The service's CORS headers speak for its origin; this server's (frontend/cors.py) go on. Its
            # cookies (load balancer affinity and the like) would be set on this server's origin.
            lower = name.lower()
            if lower not in drop and lower != "set-cookie" and not lower.startswith("access-control-"):
                resp.headers.add(name, value)
        # Proxies in front of us (nginx) must not hold a stream back to buffer it.
        resp.headers["X-Accel-Buffering"] = "no"
        try:
            await _send(resp.prepare(request))
            async for chunk in upstream.content.iter_any():
                await _send(resp.write(chunk))
                sent += len(chunk)
        except _ClientLeft:
            log.info("llm %s %s: client left after %d bytes; upstream closed", request.method, url.path, sent)
            upstream.close()
            return resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The headers are out, so no error body can follow. Closing without the final chunk tells the
            # client the body is incomplete; ending it normally would pass a cut answer off as whole.
            log.warning(
                "llm %s %s: upstream failed after %d bytes (%s)",
                request.method,
                url.path,
                sent,
                type(exc).__name__,
            )
            upstream.close()
            if request.transport is not None:
                request.transport.close()
            return resp
    except asyncio.CancelledError:
        # The client left (or the process stops) mid-answer: that connection cannot go back to the pool.
        upstream.close()
        raise
    finally:
        # Back to the pool if the answer was read to its end, closed otherwise.
        upstream.release()
    log.info(
        "llm %s %s -> %d, headers after %.0f ms, %d bytes in %.0f ms",
        request.method,
        url.path,
        upstream.status,
        waited,
        sent,
        (time.monotonic() - started) * 1e3,
    )
    return resp


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _stop(task: asyncio.Task[web.StreamResponse]) -> None:
    """Cancel `task` and wait until it has let go of the upstream connection."""
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled() and task.exception() is not None:
        log.debug("llm forward ended with %r while being stopped", task.exception())


async def proxy(request: web.Request) -> web.StreamResponse:
    """`* /llm/v1/{path}`: forward the request to `OPENAI_BASE_URL` and stream the answer back as it comes.

    Upstream errors (4xx/5xx) pass through as they are; an unreachable service is a 502 JSON error body.
    """
    settings = request.app[SETTINGS]
    url = upstream_url(settings.openai_base_url, request, settings.api_token)
    if settings.openai_api_key and not settings.lends_llm_key and "Authorization" not in request.headers:
        return _key_not_lent()
    key = settings.openai_api_key if settings.lends_llm_key else ""
    headers = upstream_headers(request, key, settings.api_token)
    forward = asyncio.create_task(_forward(request, url, headers), name=f"llm:{request.method}:{url.path}")
    try:
        while not forward.done():
            await asyncio.wait((forward,), timeout=CLIENT_CHECK_INTERVAL)
            if not forward.done() and _client_gone(request):
                log.info("llm %s %s: client left; upstream cancelled", request.method, url.path)
                await _stop(forward)
                if forward.cancelled():
                    # Nobody is left to read it; aiohttp drops a response for a closed connection quietly.
                    return web.Response(status=499)
    finally:
        if not forward.done():
            await _stop(forward)
    return forward.result()


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One HTTP client session per frontend process for all proxied requests."""
    connector = aiohttp.TCPConnector(
        # Every call's bot may hold a stream open for a while: a pool limit would queue them behind each
        # other, and the connect timeout would then fire on the wait.
        limit=0,
    )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT),
        # Bytes pass through as the service encoded them, with its Content-Encoding and Content-Length.
        auto_decompress=False,
        # Cookies one client's answer sets must never ride along on another client's request.
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        app[LLM_SESSION] = session
        yield


def setup_routes(app: web.Application) -> None:
    """Register `/llm/v1/{path}` for every method; `app[SETTINGS]` and `session_ctx` must be in place."""
    app.router.add_route("*", PREFIX + "/{path:.*}", proxy)
