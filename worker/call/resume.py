"""A call that outlives its app socket (`option.resume`, ours; docs/protocol.md, "Resuming a call").

With `option.resume: {"timeout": s}`, a socket that drops (or a frontend that dies) leaves the call up for
`timeout` s: the caller's side goes on, its audio to the app is dropped, and the events the call emits are
held (at most MAX_HELD; past that the newest are dropped and an `error` says how many). A new socket on the
same path with the same `id`, on any frontend, resumes it: the held events go to it in order, then live.
Nobody back in time: the call ends as it would have at the drop.

Nothing is sent twice: the owner remembers the last RING events it sent to the app's frontend, and the
frontend says, when the socket goes, how many of them it wrote to the socket (`gone {written}`); the rest are
held with what comes after. A frontend that died says nothing: what it had not written yet is lost.

A new socket may also come while the old one still looks alive (the app saw the drop first): the owner asks
the old frontend to close it (`replaced`), holds what the call emits meanwhile, and moves to the new one
when the old frontend answers `gone` (or after TAKEOVER_WAIT s without an answer).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from common import events
from common.protocol import ResumeOption

# Events remembered as sent to the current socket, for the ones its frontend had not written yet.
RING = 512
# Events held for the next socket, at most.
MAX_HELD = 2000
# Seconds a takeover waits for the old frontend's `gone`.
TAKEOVER_WAIT = 2.0


class Resumption:
    """One call's side of resumption; the session sends, holds and switches frontends by what it says."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.option: ResumeOption | None = None
        self.detached = False
        self.pending: str | None = None  # the frontend of a new socket, while the old one closes
        self._ring: deque[dict[str, Any]] = deque(maxlen=RING)
        self._sent = 0  # events sent to the current frontend since it had the socket
        self._held: list[dict[str, Any]] = []
        self._dropped = 0
        self.drops = 0  # sockets lost and waited for, over the call

    @property
    def on(self) -> bool:
        return self.option is not None

    @property
    def holding(self) -> bool:
        """Whether events are held rather than sent: no socket, or a new one about to take over."""
        return self.detached or self.pending is not None

    def configure(self, option: ResumeOption | None) -> None:
        if option is not None:
            self.option = option

    def sent(self, ev: dict[str, Any]) -> None:
        """An event went to the current frontend."""
        self._ring.append(ev)
        self._sent += 1

    def hold(self, ev: dict[str, Any]) -> None:
        if len(self._held) < MAX_HELD:
            self._held.append(ev)
        else:
            self._dropped += 1

    def detach(self, written: Any) -> None:
        """The socket went; `written` (from the frontend's `gone`, None when it died) says how many of the
        events sent to it reached it. The ones after are held first."""
        self.drops += 1
        unwritten = 0
        if isinstance(written, int) and 0 <= written < self._sent:
            unwritten = min(self._sent - written, len(self._ring))
        lost = list(self._ring)[len(self._ring) - unwritten :] if unwritten else []
        self._held[:0] = lost
        self._ring.clear()
        self._sent = 0
        self.detached = True

    def attach(self) -> list[dict[str, Any]]:
        """A new socket has the call: the events to send it first, in order."""
        held, self._held = self._held, []
        if self._dropped:
            held.append(
                events.error(
                    self.call_id,
                    "resume",
                    f"{self._dropped} events were dropped while no socket was connected "
                    f"(at most {MAX_HELD} are held)",
                    507,
                )
            )
            self._dropped = 0
        self.detached = False
        self.pending = None
        return held
