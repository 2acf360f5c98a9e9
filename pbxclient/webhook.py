"""A receiver for the inbound SIP call webhook (`SIP_WEBHOOK_URL` on this server, RustPBX's `invite`
webhook): a small aiohttp server that answers 200 at once and hands each call to the app.

The server POSTs `{"dialogId","createdAt","caller","callee","event":"invite","headers":[...],"offer"}`
and holds the call (100 Trying) until the app attaches a socket with `Client.attach(dialog_id)` and sends
`accept`, `ringing` or `reject`. A webhook that answers slowly or with an error gets the INVITE refused
(503), so the app's work happens after the answer: through `next()` or an `on_call` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger("pbxclient.webhook")


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundCall:
    """A webhook's announcement of an inbound SIP call. `headers` are the INVITE's header lines
    (`Name: value`), `offer` its SDP; `raw` is the body as posted."""

    dialog_id: str
    caller: str = ""
    callee: str = ""
    created_at: str | None = None
    event: str = "invite"
    headers: list[str] = field(default_factory=list)
    offer: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        """The value of the INVITE's first header called `name` (any case)."""
        want = name.lower()
        for line in self.headers:
            key, _, value = line.partition(":")
            if key.strip().lower() == want:
                return value.strip()
        return None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> InboundCall:
        headers = body.get("headers")
        return cls(
            dialog_id=str(body.get("dialogId") or body.get("dialog_id") or ""),
            caller=str(body.get("caller") or ""),
            callee=str(body.get("callee") or ""),
            created_at=body.get("createdAt"),
            event=str(body.get("event") or "invite"),
            headers=[str(h) for h in headers] if isinstance(headers, list) else [],
            offer=str(body.get("offer") or ""),
            raw=body,
        )


class WebhookReceiver:
    """Listens on `host:port` (port 0: a free one) at `path`; `url` is what to configure as the webhook.
    Each call goes to `on_call` (run as a task the receiver owns and cancels on `stop`) if given, and to
    the queue `next()` reads otherwise. Use as `async with WebhookReceiver() as hook:`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/webhook",
        on_call: Callable[[InboundCall], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.on_call = on_call
        self._queue: asyncio.Queue[InboundCall] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if self.port == 0 and sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookReceiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def next(self, timeout: float | None = None) -> InboundCall:
        """The next inbound call (when no `on_call` takes them)."""
        async with asyncio.timeout(timeout):
            return await self._queue.get()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            return web.json_response({"error": "expected a JSON body"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "expected a JSON object"}, status=400)
        call = InboundCall.from_body(body)
        if self.on_call is None:
            self._queue.put_nowait(call)
        else:
            task = asyncio.create_task(self._run(call), name=f"webhook:{call.dialog_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"status": "ok"})

    async def _run(self, call: InboundCall) -> None:
        assert self.on_call is not None
        try:
            await self.on_call(call)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the webhook's handler failed for %s", call.dialog_id)
