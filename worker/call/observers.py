"""Who watches one call through `/events/{id}` (active-call's Server-Sent Events), in the call's owner.

A frontend serving `/events/{id}` sends the owner `ctl watch {frontend, w}`; the owner answers `start` (the
frontend answers its client only then, so the stream holds everything from the request on), and from then
on each event the call emits and each command it runs goes to that frontend as well, as an `obs` message
tagged with the watch id `w` (common/wire.py), and an `end` when the call is over. Commands are sent
redacted, as the dump records them. Watchers cost the call nothing while there are none (a test of an empty
dict per event).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common import wire

# Watchers of one call at a time; the next one is told so and ended at once.
MAX_WATCHERS = 32


class Observers:
    def __init__(self, call_id: str, send: Callable[[str, dict[str, Any]], None]) -> None:
        self.call_id = call_id
        self._send = send
        self._watchers: dict[str, str] = {}  # watch id -> the frontend serving it

    def __bool__(self) -> bool:
        return bool(self._watchers)

    def watch(self, watch_id: str, frontend: str) -> None:
        if not watch_id or not frontend:
            return
        if len(self._watchers) >= MAX_WATCHERS and watch_id not in self._watchers:
            why = f"this call has {MAX_WATCHERS} watchers already"
            self._send(frontend, self._msg(watch_id, "end", {"error": why}))
            return
        self._watchers[watch_id] = frontend
        self._send(frontend, self._msg(watch_id, "start", None))

    def unwatch(self, watch_id: str) -> None:
        self._watchers.pop(watch_id, None)

    def event(self, ev: dict[str, Any]) -> None:
        for watch_id, frontend in self._watchers.items():
            self._send(frontend, self._msg(watch_id, "event", ev))

    def command(self, cmd: dict[str, Any]) -> None:
        for watch_id, frontend in self._watchers.items():
            self._send(frontend, self._msg(watch_id, "command", cmd))

    def end(self) -> None:
        """The call is over: every stream ends."""
        watchers, self._watchers = self._watchers, {}
        for watch_id, frontend in watchers.items():
            self._send(frontend, self._msg(watch_id, "end", None))

    def frontends(self) -> set[str]:
        return set(self._watchers.values())

    def forget(self, gone: set[str]) -> None:
        """Drop the watchers served by frontends that died."""
        self._watchers = {w: f for w, f in self._watchers.items() if f not in gone}

    def _msg(self, watch_id: str, kind: str, data: Any) -> dict[str, Any]:
        return wire.msg(self.call_id, wire.OBS, {"w": watch_id, "t": kind, "d": data})


def not_watched(call_id: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """For a `watch` that reached a process without the call (it ended meanwhile): the `end` to send back,
    and to whom."""
    frontend, watch_id = str(body.get("frontend") or ""), str(body.get("w") or "")
    if not frontend or not watch_id:
        return None
    return frontend, wire.msg(call_id, wire.OBS, {"w": watch_id, "t": "end", "d": None})
