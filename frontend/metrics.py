"""`GET /metrics`: the whole cluster's figures in Prometheus text format, and the frontend's own figures.

Every process publishes a snapshot of its figures to Redis about once a second (`common.metrics`); this
handler renders all of them, with its own process's taken fresh from memory. Any frontend answers for the
whole cluster, so a scraper may hit the load-balanced port. docs/metrics.md lists the figures.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from common import metrics, wire
from common.config import Settings
from common.keys import Keys
from common.metrics import AUDIO_DROPPED, CALL_TYPES, REGISTRY


class Held(Protocol):
    """A client connection, as the connection gauge counts it."""

    @property
    def call_type(self) -> str: ...


class Frontend(Protocol):
    """What the metrics read of their frontend process (frontend.hub.Hub, which imports this module)."""

    @property
    def redis(self) -> aioredis.Redis: ...

    @property
    def keys(self) -> Keys: ...

    @property
    def proc_id(self) -> str: ...

    @property
    def connections(self) -> Mapping[str, Held]: ...

    @property
    def settings(self) -> Settings: ...


# Commands forwarded and not acknowledged yet, per connection. The owner never acknowledges a command that
# arrives while the call ends, so the oldest stamp gives way once this many wait.
MAX_UNACKED = 64

COMMAND_SECONDS = REGISTRY.histogram(
    "pbx_command_roundtrip_seconds",
    "From the frontend receiving a valid command to the owner's acknowledgement that it has handled it.",
    ("command",),
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CONNECTIONS = REGISTRY.gauge("pbx_frontend_connections", "Call sockets this frontend holds now.", ("type",))
SLOW_CLIENT_DROPS = AUDIO_DROPPED.labels("slow_client")
RATE_LIMIT_DROPS = AUDIO_DROPPED.labels("rate_limit")
COMMANDS_REFUSED = REGISTRY.counter(
    "pbx_commands_refused_total",
    "Client commands refused by the frontend before reaching the call's owner.",
    ("reason",),
)


class CommandTimer:
    """Stamps the commands one connection forwards and times each until the owner acknowledges it."""

    __slots__ = ("_next", "_sent")

    def __init__(self) -> None:
        self._next = 0
        self._sent: dict[int, tuple[str, float]] = {}

    def stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        """The command body with its sequence number (`wire.SEQ`), now on the clock."""
        self._next += 1
        if len(self._sent) >= MAX_UNACKED:
            del self._sent[next(iter(self._sent))]
        self._sent[self._next] = (str(body.get("command")), time.monotonic())
        body[wire.SEQ] = self._next
        return body

    def acked(self, seq: Any) -> None:
        sent = self._sent.pop(seq, None) if isinstance(seq, int) else None
        if sent is not None:
            COMMAND_SECONDS.labels(sent[0]).observe(time.monotonic() - sent[1])

    @property
    def waiting(self) -> int:
        return len(self._sent)


async def publish(hub: Frontend) -> None:
    """This frontend's snapshot to Redis every second, for as long as the hub runs."""

    def collect() -> None:
        held = dict.fromkeys(CALL_TYPES, 0)
        for conn in list(hub.connections.values()):
            held[conn.call_type] = held.get(conn.call_type, 0) + 1
        for call_type, n in held.items():
            CONNECTIONS.labels(call_type).set(n)

    REGISTRY.add_collector(collect)
    try:
        await metrics.publish(hub.redis, hub.keys, hub.proc_id, "web", host=hub.settings.host_name)
    finally:
        REGISTRY.remove_collector(collect)


async def scrape(hub: Frontend) -> web.Response:
    """The answer to `GET /metrics` (frontend/app.py routes it here with its hub)."""
    try:
        snapshots = [
            s for s in await metrics.read_snapshots(hub.redis, hub.keys) if s.get("proc") != hub.proc_id
        ]
    except RedisError:
        # Redis is down: this process's own figures are still worth a scrape.
        metrics.redis_error("metrics_read")
        snapshots = []
    snapshots.append(REGISTRY.snapshot(hub.proc_id, "web"))
    return web.Response(
        body=metrics.render(snapshots).encode(), headers={"Content-Type": metrics.CONTENT_TYPE}
    )
