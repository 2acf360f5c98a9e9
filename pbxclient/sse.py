"""`GET /events/{id}`: a call's Server-Sent Events, typed.

Frames: `event: event` (an event, as on the socket), `event: command` (a command the call ran), and this
server's `event: dropped` (`{"dropped": n}`: frames lost because the reader was slow) and `event: error`
(the stream was refused, e.g. too many watchers). Keep-alive comments are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from pbxclient.errors import ApiError
from pbxclient.events import Event, parse_event

if TYPE_CHECKING:
    from pbxclient.client import Client


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandSeen:
    """A command the call ran (from its socket or `POST /command`), secrets shown as `***`."""

    command: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamGap:
    """(this server) `dropped` frames were lost here because the stream was read too slowly."""

    dropped: int


SseItem = Event | CommandSeen | StreamGap


class EventStream:
    """An async iterator over one call's stream; an async context manager that closes it. The request is
    made on entering (or on the first iteration): `CallNotFound` then if the call is unknown."""

    def __init__(self, client: Client, call_id: str, commands: bool) -> None:
        self._client = client
        self.call_id = call_id
        self.commands = commands
        self._resp: aiohttp.ClientResponse | None = None
        self._done = False

    async def open(self) -> EventStream:
        if self._resp is not None or self._done:
            return self
        client = self._client
        resp = await client.session.get(
            f"{client.base_url}/events/{self.call_id}",
            headers={**client._headers(), "Accept": "text/event-stream"},
            timeout=aiohttp.ClientTimeout(total=None, connect=client.timeout),
        )
        if resp.status >= 400:
            from pbxclient.client import api_error

            text = await resp.text()
            resp.release()
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            raise api_error(resp.status, body)
        self._resp = resp
        return self

    async def close(self) -> None:
        self._done = True
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    async def __aenter__(self) -> EventStream:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SseItem:
        while True:
            if self._done:
                raise StopAsyncIteration
            await self.open()
            frame = await self._frame()
            if frame is None:
                await self.close()
                raise StopAsyncIteration
            kind, data = frame
            if kind == "event" and isinstance(data, dict):
                return parse_event(data)
            if kind == "command" and isinstance(data, dict):
                if self.commands:
                    return CommandSeen(command=str(data.get("command")), fields=data)
            elif kind == "dropped" and isinstance(data, dict):
                return StreamGap(dropped=int(data.get("dropped") or 0))
            elif kind == "error":
                await self.close()
                message = data.get("error") if isinstance(data, dict) else data
                raise ApiError(503, str(message or "the event stream was refused"), body=data)

    async def _frame(self) -> tuple[str, Any] | None:
        """The next frame's event name and JSON data; None at the end of the stream."""
        assert self._resp is not None
        name, data = "message", list[str]()
        while True:
            raw = await self._resp.content.readline()
            if not raw:
                return None
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if data:
                    text = "\n".join(data)
                    try:
                        return name, json.loads(text)
                    except ValueError:
                        return name, text
                name = "message"
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
