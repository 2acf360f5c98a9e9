"""The one retry pause: exponential, jittered, bounded (issue 19).

Every loop that retries a failed Redis call used to double a fixed pause: after an outage all processes of a
host retried in step, and the server that came back met them all at once. Decorrelated jitter ("Exponential
Backoff and Jitter", AWS Architecture Blog, 2015) spreads them: each pause is drawn between the base and three
times the previous one, capped. Unlike full jitter it never draws a pause near zero, so a loop against a
server that stays down cannot spin.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable


class Backoff:
    """Pauses between retries: `next()` after each failure, `reset()` after a success.

    Each pause lies in [`base`, `cap`]; `uniform(a, b)` draws it (`random.uniform` unless a test injects a
    deterministic source)."""

    __slots__ = ("base", "cap", "_uniform", "_last")

    def __init__(
        self, base: float = 0.05, cap: float = 2.0, uniform: Callable[[float, float], float] = random.uniform
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base}, cap={cap}")
        self.base = base
        self.cap = cap
        self._uniform = uniform
        self._last = base

    def next(self) -> float:
        """The pause before the next attempt (seconds); each failure in a row lets it grow."""
        drawn = self._uniform(self.base, self._last * 3)
        self._last = min(self.cap, max(self.base, drawn))
        return self._last

    def reset(self) -> None:
        """The operation worked: the next failure starts from the base pause again."""
        self._last = self.base

    async def wait(self) -> float:
        """Sleep the next pause; how long it was."""
        delay = self.next()
        await asyncio.sleep(delay)
        return delay
