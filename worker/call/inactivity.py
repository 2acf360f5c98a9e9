"""active-call's `inactivityTimeout`: a call whose caller sends no audio for that long is ended.

The rule, on the media clock: from the answer on, every caller audio frame (muted or not) restarts the wait;
on the first 20 ms tick at or after `timeout` with none, the call gets `inactivity{trackId: <call id>}` and
is hung up (reason `inactivity_timeout`, initiator `system`). It fires once. active-call looks every second
from a task of its own, so it ends such a call up to a second late; here the tick the call already has
decides, within 20 ms.

A frame only raises a flag (`heard`); the clock is read on the tick, once per call and tick, never per
frame. Time comes from `now` (ms), so the rule runs on a virtual clock in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common import events

REASON = "inactivity_timeout"


class InactivityWatch:
    """Ends a call whose caller has been silent on the wire for `timeout_ms`, counted from its creation.

    `emit` sends an event to the client; `hang_up(reason, initiator)` ends the call (soon, not in the
    caller's stack); `now` is the clock in ms."""

    def __init__(
        self,
        call_id: str,
        timeout_ms: float,
        emit: Callable[[dict[str, Any]], None],
        hang_up: Callable[[str, str], None],
        now: Callable[[], int] = events.now_ms,
    ) -> None:
        self.call_id = call_id
        self.timeout_ms = timeout_ms
        self._emit = emit
        self._hang_up = hang_up
        self._now = now
        self._last = now()
        self.heard = False  # a caller frame came since the last tick
        self.fired = False

    def tick(self) -> None:
        """The media clock's 20 ms tick."""
        if self.fired:
            return
        now = self._now()
        if self.heard:
            self.heard = False
            self._last = now
        elif now - self._last >= self.timeout_ms:
            self.fired = True
            self._emit(events.event("inactivity", track_id=self.call_id, timestamp=now))
            self._hang_up(REASON, "system")
