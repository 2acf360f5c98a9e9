"""Builders for the events of the RustPBX call API: camelCase names, epoch-ms timestamps, no null fields."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from common.schema import camel

SERVER_SIDE_TRACK = "server-side-track"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def event(name: str, **fields: Any) -> dict[str, Any]:
    """An event dict; keyword names are Python snake_case, turned into camelCase, None values dropped."""
    out: dict[str, Any] = {"event": name}
    if "timestamp" not in fields:
        out["timestamp"] = now_ms()
    for key, value in fields.items():
        if value is not None:
            out[camel(key)] = value
    return out


def error(track_id: str | None, sender: str, message: str, code: int | None = None) -> dict[str, Any]:
    return event("error", track_id=track_id, sender=sender, error=message, code=code)


def ended_by_system(
    call_id: str, message: str, code: int, reason: str, started_ms: int
) -> list[dict[str, Any]]:
    """What a client hears when the server ends its call for it (no capacity, its worker died, ...): an
    `error` from the worker, then `hangup` with the reason and initiator `system`."""
    now = now_ms()
    return [
        error(call_id, "worker", message, code),
        event(
            "hangup",
            track_id=call_id,
            timestamp=now,
            reason=reason,
            initiator="system",
            start_time=rfc3339(started_ms),
            hangup_time=rfc3339(now),
        ),
    ]
