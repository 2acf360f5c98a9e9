"""Limits on what one client may send, and on how many calls the media pool can take right now."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from common.liveness import room
from common.registry import Registry

# How long the media processes' free capacity, read from their heartbeats, is reused: a burst of new calls
# costs one Redis read. A media process rewrites its capacity every 0.5 s under load (common/headroom.py).
CAPACITY_CACHE_TTL = 0.25


class TokenBucket:
    """`rate` tokens a second, at most `burst` of them (default: one second's worth, and at least one)
    saved up; it starts full. A rate of 0 or less means no limit."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst if burst is not None else rate, 1.0)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def take(self, n: float = 1.0) -> bool:
        """Spend `n` tokens if there are that many; False (and nothing spent) when there are not."""
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True


class MediaCapacity:
    """Whether the live media processes can take another call, from their heartbeats (`calls`,
    `capacity`; a draining process announces capacity 0; one still warming up counts with its `max_calls`,
    and the calls admitted on it wait in the dispatch stream until it is warm: common/liveness.py `room`).

    The figures are read at most every `ttl` seconds; calls admitted since the last read count against
    them, so a burst on this frontend does not all squeeze into the last free slot. Every live frontend
    admits against the same figures, so each takes its share of the room (the room divided by the
    frontends, rounded up): together they do not let in several times what is free. The heartbeats are
    stale by up to a heartbeat, so this is a fast refusal, not a guarantee: a call let through may still
    find no room, and then the media process refuses it (or the claim timeout ends it).
    """

    def __init__(
        self, registry: Registry, ttl: float = CAPACITY_CACHE_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry
        self.ttl = ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self._read_at: float | None = None
        self._free = 0
        self._admitted = 0
        self._window = 0  # which read the admitted calls count against

    async def free(self) -> int:
        """Calls the media processes can still take, as far as this frontend knows."""
        async with self._lock:
            if self._read_at is None or self._clock() - self._read_at >= self.ttl:
                procs = await self.registry.procs()
                free = sum(room(p) for p in procs)
                frontends = max(1, sum(1 for p in procs if p.get("role") == "web"))
                self._free = -(-free // frontends)
                self._read_at = self._clock()
                self._admitted = 0
                self._window += 1
            return self._free - self._admitted

    async def admit(self) -> int | None:
        """Count a new call against the free capacity: None when there is none, else a ticket for
        `release`."""
        if await self.free() <= 0:
            return None
        self._admitted += 1
        return self._window

    def release(self, ticket: int | None) -> None:
        """An admitted call's socket closed. If the figures were not read again since it was admitted, it
        no longer counts against them: short calls in quick succession do not use up the room."""
        if ticket is not None and ticket == self._window and self._admitted > 0:
            self._admitted -= 1
