"""Answers a frontend waits for from a media process, by request id (`POST /precache`)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any


class Replies:
    """The `precached` answers a frontend waits for, by request id."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def expect(self) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        req = secrets.token_hex(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[req] = fut
        return req, fut

    def forget(self, req: str) -> None:
        self._waiting.pop(req, None)

    def deliver(self, body: dict[str, Any]) -> None:
        fut = self._waiting.pop(str(body.get("req")), None)
        if fut is not None and not fut.done():
            fut.set_result(body)
