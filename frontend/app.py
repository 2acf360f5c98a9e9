"""The aiohttp application factory run by gunicorn (`frontend.app:create_app`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from common import logs
from common.config import Settings
from common.embedded import DEFAULT_LOCAL_URL
from common.redisconn import connect
from frontend import (
    auth,
    callapi,
    calls,
    calltoken,
    cors,
    dashboard,
    health,
    iceservers,
    llm,
    metrics,
    precache,
)
from frontend.calltoken import CallTokens
from frontend.errors import errors_middleware
from frontend.hub import Hub
from frontend.keys import HUB, SETTINGS

log = logging.getLogger("pbx.frontend")

STATIC = Path(__file__).resolve().parent / "static"


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # On a thread: finding out whether REDIS_URL is a cluster asks the server with a blocking client.
    redis = await asyncio.to_thread(connect, settings.redis_url or DEFAULT_LOCAL_URL)
    hub = Hub(settings, redis)
    app[HUB] = hub
    await hub.start()
    log.info("frontend %s up (redis %s)", hub.proc_id, "ok" if hub.redis_ok else "not reachable yet")
    yield
    await hub.stop()
    await redis.aclose()


async def _drain(app: web.Application) -> None:
    # gunicorn's SIGTERM: calls may finish for DRAIN_TIMEOUT, then they are hung up (SIGINT: at once).
    await app[HUB].drain(app[SETTINGS].drain_timeout)


async def _proc_header(request: web.Request, response: web.StreamResponse) -> None:
    # Which frontend process answered: operators (and tests) can tell the processes apart.
    response.headers["X-Pbx-Proc"] = request.app[HUB].proc_id


async def _metrics(request: web.Request) -> web.Response:
    return await metrics.scrape(request.app[HUB])


async def _playground(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _static(request: web.Request) -> web.FileResponse:
    # Not add_static: its 404 is an empty body, and every error here is the JSON error body.
    path = STATIC / request.match_info["name"]
    try:
        found = path.resolve().parent == STATIC and path.is_file()
    except (ValueError, OSError):  # a NUL byte, a name too long for the filesystem
        found = False
    if not found:
        raise web.HTTPNotFound(text="no such file in the playground")
    return web.FileResponse(path)


async def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    logs.setup(settings.log_level, "web")
    middlewares: list[Middleware] = [errors_middleware]
    # Without API_TOKEN every route is open and tokens are minted all the same (nothing checks them), so a
    # browser app written for a protected deployment runs unchanged against an open one.
    call_tokens = CallTokens(settings.api_token)
    if settings.api_token:
        middlewares.append(auth.auth_middleware(settings.api_token, call_tokens))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=4 * 1024 * 1024,
        # The access log (when gunicorn's is turned on) must not show a `?token=` API token.
        handler_args={"access_log_class": auth.AccessLog},
    )
    app[SETTINGS] = settings
    cors.setup(app, settings.cors_origins)
    app.on_response_prepare.append(_proc_header)
    app.cleanup_ctx.append(_hub_ctx)
    app.on_shutdown.append(_drain)
    calls.setup_routes(app)
    callapi.setup_routes(app)
    precache.setup_routes(app)
    calltoken.setup(app, call_tokens)
    app.router.add_get("/health", health.health)
    app.router.add_get("/metrics", _metrics)
    # The live operations page and its figures (the API token's, like /metrics).
    dashboard.setup(app)
    iceservers.setup(app)
    app.cleanup_ctx.append(llm.session_ctx)
    llm.setup_routes(app)
    # The playground page: plain files, no build step; everything it loads comes from here.
    app.router.add_get("/", _playground)
    app.router.add_get("/static/{name}", _static)
    return app
