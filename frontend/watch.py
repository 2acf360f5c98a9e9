"""`GET /events/{id}`: one call's events and commands as Server-Sent Events, from any frontend (active-call's
route; docs/protocol.md, "active-call's API").

The frontend asks the call's owner to copy what the call emits and runs to it (`ctl watch`, common/wire.py;
worker/call/observers.py) and writes each copy as an SSE frame: `event: event` with the event's JSON, `event:
command` with the command's (secrets redacted). The stream ends when the call does. Each subscription holds
at most MAX_QUEUED frames for its client: past that, frames are dropped and an `event: dropped` frame with
`{"dropped": n}` says how many once the client catches up, so a slow reader never slows the call. Audio is
not sent (active-call sends each outgoing frame as a JSON array of bytes).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web

from common.errors import Unavailable
from common.registry import Registry

log = logging.getLogger("pbx.frontend.watch")

# Frames one subscription holds for a client that reads slower than the call produces them.
MAX_QUEUED = 512
# Subscriptions one frontend serves at once.
MAX_WATCHES = 1000
# Seconds the response waits for the owner to say it copies the call's frames (then it answers anyway: an
# owner that is slow to claim the call, or of an older version that does not say so).
START_WAIT = 2.0
# Seconds between checks that the call still exists (its owner may die without an `end`), and between
# keep-alive comments on a quiet stream.
CHECK_EVERY = 2.0
KEEP_ALIVE = 15.0


class Watch:
    """One `/events/{id}` subscription: the frames its client has yet to read."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.id = secrets.token_hex(8)
        self.frames: collections.deque[tuple[str, Any]] = collections.deque()
        self.dropped = 0
        self.ended = False
        self.error: str | None = None
        self.wake = asyncio.Event()
        self.started = asyncio.Event()  # the owner copies the call's frames to it (or it ended)

    def put(self, kind: str, data: Any) -> None:
        if self.ended:
            return
        self.started.set()
        if kind == "start":
            return
        if kind == "end":
            self.ended = True
            if isinstance(data, dict) and data.get("error"):
                self.error = str(data["error"])
        elif len(self.frames) >= MAX_QUEUED:
            self.dropped += 1
            return
        else:
            self.frames.append((kind, data))
        self.wake.set()


class Watches:
    """The frontend's subscriptions, by watch id; `deliver` takes the owners' `obs` messages."""

    def __init__(self) -> None:
        self._by_id: dict[str, Watch] = {}

    def open(self, call_id: str) -> Watch:
        if len(self._by_id) >= MAX_WATCHES:
            raise Unavailable(
                "too many event streams on this frontend", f"at most {MAX_WATCHES} `/events` streams at once"
            )
        watch = Watch(call_id)
        self._by_id[watch.id] = watch
        return watch

    def close(self, watch: Watch) -> None:
        self._by_id.pop(watch.id, None)

    def deliver(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        watch = self._by_id.get(str(body.get("w")))
        if watch is not None:
            watch.put(str(body.get("t")), body.get("d"))

    def end_all(self) -> None:
        for watch in list(self._by_id.values()):
            watch.put("end", None)


def sse_frame(name: str, data: Any) -> bytes:
    """One Server-Sent Events frame; the JSON holds no raw newline, so it is one `data:` line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


async def _gone(registry: Registry, call_id: str) -> bool:
    try:
        return await registry.get(call_id) is None
    except Exception:  # Redis away for a moment: the call may well go on
        return False


async def serve(
    registry: Registry, watch: Watch, response: web.StreamResponse, client_gone: Callable[[], bool]
) -> None:
    """Write the subscription's frames to its client until the call ends, the client leaves, or the call's
    entry is gone (its owner died without an `end`)."""
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while True:
        while watch.frames:
            if watch.dropped:
                dropped, watch.dropped = watch.dropped, 0
                await response.write(sse_frame("dropped", {"dropped": dropped}))
            kind, data = watch.frames.popleft()
            await response.write(sse_frame(kind, data))
            quiet_since = loop.time()
        if watch.ended:
            if watch.error:
                await response.write(sse_frame("error", {"error": watch.error}))
            return
        watch.wake.clear()
        try:
            await asyncio.wait_for(watch.wake.wait(), CHECK_EVERY)
            continue
        except TimeoutError:
            pass
        if client_gone() or await _gone(registry, watch.call_id):
            return  # its owner died without saying so; the reaper has removed the entry
        if loop.time() - quiet_since >= KEEP_ALIVE:
            await response.write(b": keep-alive\n\n")
            quiet_since = loop.time()
