"""The leg of a `/call/sip` session (`CallLeg`, worker/call/leg.py): maps the SIP dialog to the API's commands
and events."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import numpy as np

from common import events
from common.protocol import DEFAULT_MESSAGE_TYPE, CallOption, Message, Ringing
from worker.call.leg import FirstMedia, LegHooks
from worker.call.services import MediaServices
from worker.media.player import SILENT_FRAME
from worker.sip.agent import extra_headers
from worker.sip.leg import LegError, SipLeg
from worker.sip.message import Headers, Response

if TYPE_CHECKING:
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
    """Owns the session's SIP leg (outbound via `invite`, inbound via `attach`)."""

    name = "sip leg"
    answers_at_once = False

    def __init__(self, hooks: LegHooks, services: MediaServices) -> None:
        self.hooks = hooks
        self.services = services
        self.leg: SipLeg | None = None
        self.pending: PendingCall | None = None
        self._bound = False
        self.first_media = FirstMedia(hooks.call)
        self.ring_ms: int | None = None
        self._bye_headers: list[tuple[str, str]] = []

    @property
    def bound(self) -> bool:
        return self._bound

    @property
    def telephony(self) -> Telephony:
        telephony = self.services.telephony
        assert telephony is not None  # invite checks; an inbound call came through it
        return telephony

    def configure(self, option: CallOption) -> None:
        # (The codec is the one the SDP offer and answer agree on.) active-call's `sip.hangup_headers` go on
        # the BYE, unless the `hangup` command gives its own.
        if option.sip is not None and option.sip.hangup_headers:
            self._bye_headers = list(option.sip.hangup_headers.items())

    # --- outbound ----------------------------------------------------------------------------------------

    async def check_invite(self, option: CallOption) -> bool:
        if self._bound:
            self.hooks.call.error(
                "invite", "this is an inbound SIP call: answer it with accept (or reject)", 409
            )
            return False
        return True

    async def invite(self, option: CallOption) -> None:
        if self.services.telephony is None:
            self.hooks.call.error("invite", "SIP is not available in this media process", 503)
            await self.hooks.call.hangup("failed", "system")
            return
        self._bound = True
        await self.dial(option)  # the answer comes as `answered` (or the call ends)

    async def dial(self, option: CallOption) -> None:
        s = self.hooks.call
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
        self._bound = True
        self.pending = pending
        self.leg = pending.leg
        pending.leg.bind_events(self)
        req = pending.leg.tx.request if pending.leg.tx is not None else None
        self.hooks.call.emit(
            events.event(
                "incoming",
                track_id=self.hooks.call.call_id,
                caller=str(req.from_.uri) if req else None,
                callee=str(req.to.uri) if req else None,
                sdp=pending.leg.remote_sdp,
                headers=extension_headers(req.headers) if req else None,
            )
        )

    async def ringing(self, cmd: Ringing) -> bool:
        """180 (or 183 with our answer when earlyMedia/ringtone); False when there is nothing to ring."""
        leg = self.leg
        if leg is None or leg.role != "uas":
            self.hooks.call.error(
                "ringing", "no pending call to ring (ringing answers an inbound SIP call)", 400
            )
            return False
        try:
            await leg.ringing(bool(cmd.early_media or cmd.ringtone))
        except LegError as exc:
            self.hooks.call.error("ringing", str(exc), exc.code)
            return False
        if self.ring_ms is None:
            self.ring_ms = events.now_ms()
        return True

    async def accept(self) -> str | None:
        leg = self.leg
        if leg is None or leg.role != "uas":
            self.hooks.call.error("accept", "no pending call to accept", 400)
            return None
        try:
            answer = await leg.accept()
        except LegError as exc:
            self.hooks.call.error("accept", str(exc), exc.code)
            if exc.code == 488:
                leg.reject(488, "Not Acceptable Here")
            return None
        self.telephony.answered(self.hooks.call.call_id)
        return answer

    def reject(self, code: int, reason: str) -> bool:
        leg = self.leg
        if leg is None or leg.role != "uas" or leg.state not in ("calling", "early"):
            self.hooks.call.error("reject", "no pending call to reject", 400)
            return False
        leg.reject(code, reason)
        self.telephony.answered(self.hooks.call.call_id)
        return True

    # --- media -------------------------------------------------------------------------------------------

    async def candidate(self, line: str, sdp_mid: str | None, index: int | None) -> None:
        return  # RustPBX's first API sent candidates on every call type; nothing uses them here

    def audio(self, data: bytes) -> None:
        return  # the frontend drops socket audio on SIP calls

    def answered(self) -> None:
        return

    def send(self, frame: np.ndarray | None) -> None:
        # Silence too: an RTP stream keeps its pace and timestamps whether or not anything plays.
        if self.leg is not None:
            self.leg.push(SILENT_FRAME if frame is None else frame)

    def sip_dialog(self) -> SipLeg | None:
        return self.leg

    # --- in the dialog -----------------------------------------------------------------------------------

    def message(self, cmd: Message) -> None:
        leg = self.leg
        content_type = cmd.content_type or DEFAULT_MESSAGE_TYPE
        try:
            if leg is None:
                raise LegError("the call is not connected (no confirmed SIP dialog)", 409)
            final = leg.message(cmd.body, content_type, list((cmd.headers or {}).items()))
        except LegError as exc:
            self.hooks.call.error("command", f"message: {exc}", exc.code)
            return
        # The MESSAGE left now, in command order (ahead of a BYE a hangup right after it sends); its answer
        # (up to 32 s: Timer F) is awaited beside the queue, so that hangup is not held up.
        self.hooks.call.spawn(self._message_answered(final), "message")

    async def _message_answered(self, final: asyncio.Future[Response]) -> None:
        resp = await final
        if resp.status >= 300:
            what = "no answer from the peer" if resp.status == 408 else "the peer refused it"
            self.hooks.call.error("command", f"message: {what} ({resp.status} {resp.reason})", resp.status)

    def bye_headers(self, headers: dict[str, str]) -> None:
        self._bye_headers = list(headers.items())

    def close(self) -> None:
        if self.leg is not None:
            self.leg.hangup(self._bye_headers)
        if self.pending is not None:
            self.telephony.drop(self.hooks.call.call_id)

    # --- LegEvents ---------------------------------------------------------------------------------------

    def leg_ringing(self, leg: SipLeg, early_media: bool) -> None:
        now = events.now_ms()
        if self.ring_ms is None:
            self.ring_ms = now
        self.hooks.call.emit(
            events.event("ringing", track_id=self.hooks.call.call_id, timestamp=now, early_media=early_media)
        )

    def leg_answered(self, leg: SipLeg, remote_sdp: str) -> None:
        self.hooks.call.spawn(self.hooks.answered(remote_sdp), "answered")

    def leg_failed(self, leg: SipLeg, code: int, reason: str) -> None:
        s = self.hooks.call
        s.emit(events.event("reject", track_id=s.call_id, reason=reason, code=code))
        s.spawn(s.hangup("rejected" if code != 408 else "no_answer", "callee"), "rejected")

    def leg_ended(self, leg: SipLeg, initiator: str, reason: str) -> None:
        s = self.hooks.call
        s.spawn(s.hangup(reason, initiator), "leg-ended")

    def leg_audio(self, leg: SipLeg, pcm: np.ndarray) -> None:
        if not self.first_media.seen:
            self.first_media()
        self.hooks.caller_audio(pcm)

    def leg_digit(self, leg: SipLeg, digit: str) -> None:
        self.hooks.digit(digit)

    def leg_refer(self, leg: SipLeg, target: str, referred_by: str | None) -> None:
        # `referTo` is active-call's name for the Refer-To value; `target`, this server's first one, stays.
        self.hooks.call.emit(
            events.event(
                "transferRequest",
                track_id=self.hooks.call.call_id,
                target=target,
                refer_to=target,
                referred_by=referred_by,
            )
        )

    def leg_notify(self, leg: SipLeg, status: int, reason: str) -> None:
        self.hooks.notified(status, reason)

    def leg_message(self, leg: SipLeg, body: str, content_type: str | None) -> None:
        s = self.hooks.call
        s.emit(events.event("message", track_id=s.call_id, body=body, content_type=content_type))

    def leg_hold(self, leg: SipLeg, on_hold: bool) -> None:
        s = self.hooks.call
        s.emit(events.event("hold", track_id=s.call_id, on_hold=on_hold))


# The headers of RFC 3261 §20 (and RFC 6665's Event, Subscription-State): active-call's SIP stack gives
# these structure of their own and hands the app only the others, with `incoming`.
_BASE_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Authentication-Info",
        "Authorization", "Call-ID", "Call-Info", "Contact", "Content-Disposition", "Content-Encoding",
        "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date", "Error-Info", "Event",
        "Expires", "From", "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Organization",
        "Priority", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Record-Route",
        "Reply-To", "Require", "Retry-After", "Route", "Server", "Subject", "Subscription-State",
        "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
    )
)  # fmt: skip


def extension_headers(headers: Headers) -> dict[str, str] | None:
    """An INVITE's headers beyond the base protocol's (X-*, P-Asserted-Identity, Diversion, ...), as
    active-call's `incoming.headers`: name -> value, a header on several lines (or a list split into its
    elements) joined with ", "; None when there is none. Credentials (Authorization, Proxy-Authorization)
    are base headers, so they are never among them."""
    out: dict[str, str] = {}
    for name, value in headers:
        if name.lower() in _BASE_HEADERS:
            continue
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out or None


def _headers(pairs: list[tuple[str, str]]) -> Headers:
    h = Headers()
    for name, value in pairs:
        h.add(name, value)
    return h
