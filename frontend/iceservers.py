"""`GET /iceservers`: the ICE servers a browser should give its `RTCPeerConnection`.

The configured list (`ICE_SERVERS`) or a public STUN server; with `RESTSEND_TOKEN` set, short-lived TURN
credentials fetched from RESTSEND for the asking client, falling back to the configured list.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from common.config import Settings
from common.ice import IceServer, InvalidIceServers, normalize, parse_configured
from frontend.keys import SETTINGS

log = logging.getLogger("pbx.frontend.iceservers")

DEFAULT_ICE_SERVERS: list[IceServer] = [{"urls": ["stun:restsend.com:3478"]}]
FETCH_TIMEOUT = 5.0
# A list of a few servers is a few hundred bytes; anything far bigger is not an answer we can use.
MAX_FETCH_BYTES = 256 * 1024
# Proxy headers that carry the browser's address, most specific first (RustPBX's `ClientAddr` order).
_CLIENT_IP_HEADERS = ("X-Client-IP", "X-Forwarded-For", "X-Real-IP", "CF-Connecting-IP")


def client_ip(request: web.Request) -> str:
    """The browser's address as the proxies in front of us report it, else the socket's peer."""
    for header in _CLIENT_IP_HEADERS:
        value = request.headers.get(header, "")
        # X-Forwarded-For is "client, proxy1, proxy2": the first hop is the client.
        first = value.split(",", 1)[0].strip()
        if first:
            return first
    return request.remote or ""


class IceServers:
    """Answers `/iceservers` for one app: the parsed configuration and the HTTP session for RESTSEND."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.configured = parse_configured(settings.ice_servers)
        self._token = settings.restsend_token
        self._url = URL(settings.restsend_ice_url)
        self._session = session

    @property
    def fallback(self) -> list[IceServer]:
        return DEFAULT_ICE_SERVERS if self.configured is None else self.configured

    async def servers(self, client: str) -> list[IceServer]:
        """The list for a browser at address `client`."""
        if not self._token:
            return self.fallback
        fetched = await self._fetch(client)
        return self.fallback if fetched is None else fetched

    async def _fetch(self, client: str) -> list[IceServer] | None:
        # Only the host is ever logged: the URL carries the token, and aiohttp's exception texts the URL.
        started = time.monotonic()
        try:
            return await self._get(self._url.update_query(token=self._token, user="", client=client))
        except TimeoutError:
            reason = f"no answer within {FETCH_TIMEOUT:g} s"
        except aiohttp.ClientError as exc:
            reason = type(exc).__name__
        except _BadAnswer as exc:
            reason = str(exc)
        except InvalidIceServers as exc:
            reason = f"unusable answer: {exc}"
        except ValueError as exc:
            # Not UTF-8 or not JSON; the decoder's message would quote the body.
            reason = f"unusable answer ({type(exc).__name__})"
        log.warning(
            "ice servers from %s failed after %.0f ms (%s); using the configured list",
            self._url.host,
            (time.monotonic() - started) * 1e3,
            reason,
        )
        return None

    async def _get(self, url: URL) -> list[IceServer]:
        async with self._session.get(
            url, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT), allow_redirects=False
        ) as resp:
            if resp.status != 200:
                raise _BadAnswer(f"HTTP {resp.status}")
            body = await resp.content.read(MAX_FETCH_BYTES + 1)
        if len(body) > MAX_FETCH_BYTES:
            raise _BadAnswer("answer too large")
        return normalize(json.loads(body))


class _BadAnswer(Exception):
    """RESTSEND answered, but not with a list we can use."""


ICE_SERVERS = web.AppKey("ice_servers", IceServers)


async def _ice_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[ICE_SERVERS] = IceServers(app[SETTINGS], session)
        yield


async def ice_servers(request: web.Request) -> web.Response:
    """`GET /iceservers`: always 200 with a list; a failed fetch falls back instead of failing the call."""
    servers = await request.app[ICE_SERVERS].servers(client_ip(request))
    return web.json_response(servers)


def setup(app: web.Application) -> None:
    """Register `GET /iceservers` and the per-app state it needs; `app[SETTINGS]` must be set."""
    app.cleanup_ctx.append(_ice_ctx)
    app.router.add_get("/iceservers", ice_servers)
