"""Where a call's events and audio for its app go: the app's socket, through the frontend holding it; or, for
a call with `option.resume` whose socket went, held until a new socket resumes it (worker/call/resume.py).

The session sends through this and tells it what the frontends say (`gone`, `resume`); this decides whether
the call waits for its app or ends, and switches the call to a new socket's frontend.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from common import events, wire
from common.protocol import ResumeOption
from worker.call.resume import TAKEOVER_WAIT, Resumption
from worker.call.services import CallHooks, CallHost

log = logging.getLogger("pbx.worker.call.applink")


class AppLink:
    """`frontend`: the process holding the app's socket ("" while none does); `owner`: this media process.
    `end_soon(reason, initiator)` ends the call; `moh` stops the hold file (`moh_wanted`, which the session
    plays whenever nothing else does while the call waits); `update` writes fields of the call's registry
    entry."""

    def __init__(
        self,
        hooks: CallHooks,
        host: CallHost,
        owner: str,
        frontend: str,
        end_soon: Callable[[str, str], None],
        answered: Callable[[], bool],
        moh: Callable[[], None],
        update: Callable[..., Coroutine[Any, Any, Any]],
    ) -> None:
        self.hooks = hooks
        self.host = host
        self.owner = owner
        self._end_soon = end_soon
        self.call_id = hooks.call_id
        self.frontend = frontend
        self.resume = Resumption(hooks.call_id)
        self.holding = False  # events held, audio dropped: no socket, or a new one about to take over
        self._answered = answered
        self._moh = moh
        self._update = update
        self._timer: asyncio.Task[Any] | None = None
        self.moh_wanted: str | None = None
        # The frontend's id of the socket the call has (None: the first one, whose id the owner never got)
        # and of a new one about to take it over: a `gone` names the socket it is about.
        self.socket: str | None = None
        self._pending_socket: str | None = None

    async def configure(self, option: ResumeOption | None) -> None:
        """`option.resume`: in the registry before the call is answered, so a socket that comes back right
        after the answer finds the call resumable."""
        if option is None:
            return
        self.resume.configure(option)
        await self._update(self.call_id, resume=str(option.timeout))

    # --- to the app --------------------------------------------------------------------------------------

    def event(self, ev: dict[str, Any]) -> None:
        if self.holding:
            self.resume.hold(ev)
            return
        self.host.send(self.frontend, wire.msg(self.call_id, wire.EVT, ev))
        if self.resume.on:
            self.resume.sent(ev)

    def audio(self, data: bytes) -> None:
        if not self.holding:
            self.host.send(self.frontend, wire.msg(self.call_id, wire.PCM, data))

    def control(self, body: dict[str, Any]) -> None:
        if not self.holding:
            self.host.send(self.frontend, wire.msg(self.call_id, wire.CTL, body))

    def close(self) -> None:
        """The call is over: the socket closes once its events are out (a new socket waiting to take over
        gets the held ones first)."""
        if self.resume.pending is not None and not self.resume.detached:
            self.resume.detach(None)
        if self.resume.pending is not None:
            self._attach(self.resume.pending, self._pending_socket)
        if not self.holding and self.frontend:
            self.host.send(self.frontend, wire.msg(self.call_id, wire.CTL, {"op": wire.Op.CLOSE}))
        self._cancel_timer()

    # --- from the frontends ------------------------------------------------------------------------------

    def gone(self, body: dict[str, Any]) -> None:
        """`gone`: a socket closed (or was replaced)."""
        socket = body.get("socket") or None
        if socket is not None and socket == self._pending_socket and self.resume.pending is not None:
            # The new socket left before it had the call: no takeover; once the old socket's `gone` comes
            # (or the takeover's wait ends), the call waits for the app.
            self.resume.pending = self._pending_socket = None
            return
        if socket is not None and self.socket is not None and socket != self.socket:
            return  # an old socket's, after the call moved on
        sender = body.get("frontend")
        if sender and sender != self.frontend:
            return
        self.lost(body.get("written"))

    def lost(self, written: Any, why: str = "connection_closed", initiator: str = "caller") -> None:
        """The socket is gone (`written`: the frontend's count, None when it died)."""
        if self.hooks.ending():
            return
        if not self.resume.on:
            self._end_soon(why, initiator)
            return
        if self.resume.detached:
            return
        self.resume.detach(written)
        self.holding = True
        pending = self.resume.pending
        if pending is not None:
            self._attach(pending, self._pending_socket)
            return
        self.frontend = ""
        option = self.resume.option
        assert option is not None
        log.info("socket gone: waiting %.0f s for the app to reconnect", option.timeout)
        self.hooks.spawn(self._update(self.call_id, state="detached"), "detached")
        self._cancel_timer()
        self._timer = self.hooks.spawn(self._wait(option.timeout, why, initiator), "resume-wait")
        self.moh_wanted = option.moh

    def frontend_stops(self) -> None:
        """`shutdown`: the frontend holding the socket stops. The call ends, or its socket is closed now
        (its frontend answers `gone {written}`) and the call waits for the app on another frontend."""
        if not self.resume.on or self.hooks.ending():
            self._end_soon("shutdown", "system")
            return
        if self.holding:
            return
        self.holding = True  # until the `gone`: what comes meanwhile waits for the next socket
        why = "the server is restarting: connect again with the same id to resume the call"
        self.host.send(self.frontend, wire.msg(self.call_id, wire.CTL, {"op": wire.Op.REPLACED, "why": why}))

    def resumed(self, frontend: str, socket: str | None = None) -> None:
        """`resume`: a new socket (`socket`, its frontend's id for it) on `frontend` names this call."""
        if not frontend:
            return
        if self.hooks.ending() or not self.resume.on:
            why = "the call is ending" if self.resume.on else "this call cannot be resumed (no option.resume)"
            self.host.send(frontend, wire.msg(self.call_id, wire.EVT, events.error(self.call_id, "resume",
                                                                                 why, 409)))  # fmt: skip
            self.host.send(frontend, wire.msg(self.call_id, wire.CTL, {"op": wire.Op.CLOSE}))
            return
        if self.resume.detached:
            self._attach(frontend, socket)
            return
        if frontend == self.frontend:
            # That frontend closed the old socket itself, and its `gone` did not come first: what the old
            # socket had not written is lost.
            self.resume.detach(None)
            self._attach(frontend, socket)
            return
        # The old socket still looks alive: it closes first (its frontend answers `gone {written}`).
        old, self.resume.pending, self.holding = self.frontend, frontend, True
        self._pending_socket = socket
        self.host.send(old, wire.msg(self.call_id, wire.CTL, {"op": wire.Op.REPLACED}))
        self._cancel_timer()
        self._timer = self.hooks.spawn(self._takeover(), "takeover")

    def _attach(self, frontend: str, socket: str | None) -> None:
        self._cancel_timer()
        held = self.resume.attach()
        self.frontend, self.holding = frontend, False
        self.socket, self._pending_socket = socket, None
        self.host.send(
            frontend, wire.msg(self.call_id, wire.CTL, {"op": wire.Op.CLAIMED, "owner": self.owner})
        )
        for ev in held:
            self.event(ev)
        if self.moh_wanted is not None:
            self.moh_wanted = None
            self._moh()
        state = "active" if self._answered() else "claimed"
        self.hooks.spawn(self._update(self.call_id, state=state, frontend=frontend), "resumed")
        log.info("resumed on %s: %d held events sent", frontend, len(held))

    async def _wait(self, timeout: float, why: str, initiator: str) -> None:
        await asyncio.sleep(timeout)
        if self.resume.detached and not self.hooks.ending():
            log.info("no socket came back within %.0f s: the call ends", timeout)
            await self.hooks.hangup(why, initiator)

    async def _takeover(self) -> None:
        await asyncio.sleep(TAKEOVER_WAIT)
        if not self.resume.detached:
            log.warning("the replaced socket's frontend did not answer: going on without it")
            self._timer = None
            self.lost(None)  # to the new socket, or (it left too) waiting for the app

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
