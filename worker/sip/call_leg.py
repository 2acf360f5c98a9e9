"""The caller leg of a `/call/sip` session: maps the SIP leg to the API's commands and events."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from common import events
from common.protocol import CallOption, Ringing
from worker.sip.agent import extra_headers
from worker.sip.leg import LegError, SipLeg
from worker.sip.message import Headers

if TYPE_CHECKING:
    from worker.call.session import CallSession
    from worker.sip.telephony import PendingCall, Telephony

log = logging.getLogger("pbx.worker.sip.call_leg")


def leg_options(
    option: CallOption | None,
) -> tuple[list[tuple[str, str]], tuple[str, str] | None, str | None]:
    """Extra headers, digest credentials and Contact override from a `sip` option (ValueError if bad)."""
    sip = option.sip if option is not None else None
    if sip is None:
        return [], None, None
    headers = list(extra_headers(sip.headers))
    creds = (sip.username, sip.password or "") if sip.username else None
    return headers, creds, sip.contact


class SipCall:
    """Owns the session's SIP leg (outbound via `dial`, inbound via `attach`)."""

    def __init__(self, session: CallSession) -> None:
        self.session = session
        self.leg: SipLeg | None = None
        self.pending: PendingCall | None = None

    @property
    def telephony(self) -> Telephony:
        telephony = self.session.proc.telephony
        assert telephony is not None  # the session checks before it makes a SipCall
        return telephony

    # --- outbound ----------------------------------------------------------------------------------------

    async def dial(self, option: CallOption) -> None:
        s = self.session
        if not option.callee:
            s.error("invite", "option.callee: required for a SIP call (the URI to dial)", 400)
            await s.hangup("failed", "system")
            return
        try:
            headers, creds, contact = leg_options(option)
        except ValueError as exc:
            s.error("invite", str(exc), 400)
            await s.hangup("failed", "system")
            return
        timeout = option.ring_seconds()
        leg = SipLeg(self.telephony.agent, self.telephony.pool, self, "uac")
        self.leg = leg
        try:
            admit = self.telephony.admit("option.callee", option.callee)
            await leg.dial(
                option.caller or "", option.callee, _headers(headers), creds, timeout, contact, admit
            )
        except LegError as exc:
            s.error("invite", str(exc), exc.code)
            if exc.code == 403:
                # A destination the rule refuses ends the call as a refusing callee would (nothing was sent).
                s.emit(events.event("reject", track_id=s.call_id, reason=str(exc), code=403))
            await s.hangup("failed", "system")
        except OSError as exc:
            s.error("invite", f"cannot set up media: {exc}", 503)
            await s.hangup("failed", "system")

    # --- inbound -----------------------------------------------------------------------------------------

    def attach(self, pending: PendingCall) -> None:
        self.pending = pending
        self.leg = pending.leg
        pending.leg.bind_events(self)
        req = pending.leg.tx.request if pending.leg.tx is not None else None
        self.session.emit(
            events.event(
                "incoming",
                track_id=self.session.call_id,
                caller=str(req.from_.uri) if req else None,
                callee=str(req.to.uri) if req else None,
                sdp=pending.leg.remote_sdp,
            )
        )

    async def ringing(self, cmd: Ringing) -> bool:
        """180 (or 183 with our answer when earlyMedia/ringtone); False when there is nothing to ring."""
        leg = self.leg
        if leg is None or leg.role != "uas":
            self.session.error(
                "ringing", "no pending call to ring (ringing answers an inbound SIP call)", 400
            )
            return False
        try:
            await leg.ringing(bool(cmd.early_media or cmd.ringtone))
        except LegError as exc:
            self.session.error("ringing", str(exc), exc.code)
            return False
        return True

    async def accept(self) -> str | None:
        leg = self.leg
        if leg is None or leg.role != "uas":
            self.session.error("accept", "no pending call to accept", 400)
            return None
        try:
            answer = await leg.accept()
        except LegError as exc:
            self.session.error("accept", str(exc), exc.code)
            if exc.code == 488:
                leg.reject(488, "Not Acceptable Here")
            return None
        self.telephony.answered(self.session.call_id)
        return answer

    def reject(self, code: int, reason: str) -> bool:
        leg = self.leg
        if leg is None or leg.role != "uas" or leg.state not in ("calling", "early"):
            self.session.error("reject", "no pending call to reject", 400)
            return False
        leg.reject(code, reason)
        self.telephony.answered(self.session.call_id)
        return True

    # --- media -------------------------------------------------------------------------------------------

    def push(self, frame: np.ndarray) -> None:
        if self.leg is not None:
            self.leg.push(frame)

    def close(self) -> None:
        if self.leg is not None:
            self.leg.hangup()
        if self.pending is not None:
            self.telephony.drop(self.session.call_id)

    # --- LegEvents ---------------------------------------------------------------------------------------

    def leg_ringing(self, leg: SipLeg, early_media: bool) -> None:
        self.session.emit(events.event("ringing", track_id=self.session.call_id, early_media=early_media))

    def leg_answered(self, leg: SipLeg, remote_sdp: str) -> None:
        self.session.spawn(self.session.media_up(remote_sdp), "answered")

    def leg_failed(self, leg: SipLeg, code: int, reason: str) -> None:
        s = self.session
        s.emit(events.event("reject", track_id=s.call_id, reason=reason, code=code))
        s.spawn(s.hangup("rejected" if code != 408 else "no_answer", "callee"), "rejected")

    def leg_ended(self, leg: SipLeg, initiator: str, reason: str) -> None:
        s = self.session
        s.spawn(s.hangup(reason, initiator), "leg-ended")

    def leg_audio(self, leg: SipLeg, pcm: np.ndarray) -> None:
        self.session.caller_audio(pcm)

    def leg_digit(self, leg: SipLeg, digit: str) -> None:
        self.session.listener.digit(digit)

    def leg_refer(self, leg: SipLeg, target: str) -> None:
        self.session.emit(events.event("transferRequest", track_id=self.session.call_id, target=target))

    def leg_notify(self, leg: SipLeg, status: int, reason: str) -> None:
        transfer = self.session.transfer
        if transfer is not None:
            transfer.notified(status, reason)


def _headers(pairs: list[tuple[str, str]]) -> Headers:
    h = Headers()
    for name, value in pairs:
        h.add(name, value)
    return h
