"""One SIP call leg: an INVITE dialog (ours or the peer's) with its RTP stream.

Outbound (`dial`): INVITE with our offer, digest challenges answered, 18x → ringing (early SDP applied),
2xx → ACK and answered, a final failure → failed; `hangup` sends CANCEL while early, BYE once confirmed.
Inbound (`SipLeg.incoming`): 100 Trying at once; `ringing` sends 180 (or 183 with the answer SDP), `accept`
200 OK with the answer, `reject` the given final; a CANCEL from the peer ends it (487).
In both, in-dialog BYE, INFO (DTMF relay), re-INVITE / UPDATE (hold, codec change, moved address), OPTIONS,
REFER (202 and a final NOTIFY), NOTIFY (the progress of our REFER) and MESSAGE (RFC 3428) are answered here;
`message` and `refer` send the last two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

import numpy as np

from common.tasks import TaskSet
from worker.sip import sdp
from worker.sip.agent import ALLOW, Admit, SipAgent
from worker.sip.dialog import Dialog, new_call_id, new_tag, target_of, uri_of
from worker.sip.digest import DigestState, header_names
from worker.sip.message import Headers, Request, Response
from worker.sip.rtp import PortPool, RtpSession
from worker.sip.transaction import ServerTransaction, Target

log = logging.getLogger("pbx.worker.sip.leg")

DTMF_RELAY = "application/dtmf-relay"


class LegEvents(Protocol):
    """What a leg tells its call."""

    def leg_ringing(self, leg: SipLeg, early_media: bool) -> None: ...

    def leg_answered(self, leg: SipLeg, remote_sdp: str) -> None: ...

    def leg_failed(self, leg: SipLeg, code: int, reason: str) -> None: ...

    def leg_ended(self, leg: SipLeg, initiator: str, reason: str) -> None: ...

    def leg_audio(self, leg: SipLeg, pcm: np.ndarray) -> None: ...

    def leg_digit(self, leg: SipLeg, digit: str) -> None: ...

    def leg_refer(self, leg: SipLeg, target: str, referred_by: str | None) -> None: ...

    def leg_notify(self, leg: SipLeg, status: int, reason: str) -> None: ...

    def leg_message(self, leg: SipLeg, body: str, content_type: str | None) -> None: ...

    def leg_hold(self, leg: SipLeg, on_hold: bool) -> None: ...


class LegError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class SipLeg:
    def __init__(self, agent: SipAgent, pool: PortPool, events: LegEvents, role: str) -> None:
        self.agent = agent
        self.pool = pool
        self.events = events
        self.role = role  # "uac" (we called) or "uas" (they called)
        self.state = "idle"  # calling → early → confirmed → ended
        self.dialog: Dialog | None = None
        self.rtp: RtpSession | None = None
        self.sending = False
        self.remote_sdp = ""
        self.local_sdp = ""
        self.negotiated: sdp.Negotiated | None = None
        self.on_hold = False  # we send nothing: our side of the agreed direction is recvonly or inactive
        self.held = False  # the peer's last re-offer put the call on hold (RFC 3264 §8.4)
        self.contact = agent.contact()
        self._session_id = str(secrets.randbelow(10**9))
        self._sdp_version = 1
        # uac
        self._invite: Request | None = None
        self._target: Target | None = None
        self._auth: DigestState | None = None
        self._provisional = False
        self._cancel_wanted = False
        self._cancel_sent = False
        self._ack: bytes | None = None
        self._ack_target: Target | None = None
        self._outcome: asyncio.Future[None] | None = None
        # uas
        self.tx: ServerTransaction | None = None
        self.offer: sdp.SessionDescription | None = None
        self.local_tag = new_tag()
        self._tasks = TaskSet(log, "sip-leg:")

    @property
    def call_id(self) -> str:
        if self._invite is not None:
            return self._invite.call_id
        return self.tx.request.call_id if self.tx is not None else ""

    @property
    def dialog_id(self) -> str:
        """`<Call-ID>-<remote tag>-<local tag>` for an inbound leg: the RustPBX dialog id."""
        if self.tx is not None:
            return f"{self.tx.request.call_id}-{self.tx.request.from_.tag or ''}-{self.local_tag}"
        return self.call_id

    # --- media -------------------------------------------------------------------------------------------

    async def _open_rtp(self) -> RtpSession:
        if self.rtp is None:
            # Codec and peer are placeholders until the offer/answer settles them.
            rtp = RtpSession(
                "pcmu", 0, ("0.0.0.0", 9), self._audio, self._digit, telephone_event_pt=sdp.TELEPHONE_EVENT_PT
            )
            await rtp.start(
                self.pool, self.agent.bind if self.agent.bind not in ("", "0.0.0.0") else "0.0.0.0"
            )
            self.rtp = rtp
        return self.rtp

    def _audio(self, pcm: np.ndarray) -> None:
        if self.state != "ended":
            self.events.leg_audio(self, pcm)

    def _digit(self, digit: str) -> None:
        if self.state != "ended":
            self.events.leg_digit(self, digit)

    def _apply(self, n: sdp.Negotiated) -> None:
        self.negotiated = n
        if self.rtp is None:
            return
        self.rtp.update_remote((n.remote_address, n.remote_port), n.codec.lower(), n.payload_type)
        self.rtp.telephone_event_pt = n.telephone_event_pt
        self.rtp.remote_rtcp = (n.remote_address, n.remote_rtcp_port)
        self.on_hold = n.direction in ("recvonly", "inactive")

    def push(self, frame: np.ndarray) -> None:
        """One 20 ms frame of what this leg's peer should hear."""
        if self.sending and self.rtp is not None and not self.on_hold:
            self.rtp.send(frame)

    # --- outbound ----------------------------------------------------------------------------------------

    async def dial(
        self,
        caller: str,
        callee: str,
        headers: Headers | None = None,
        credentials: tuple[str, str] | None = None,
        timeout: float = 60.0,
        contact: str | None = None,
        admit: Admit | None = None,
    ) -> None:
        """Place the call; returns when it is answered, failed or timed out (events tell which).

        `admit` judges the callee's addresses before anything is sent (the caller's rule for destinations a
        client chose); every request outside the dialog (INVITE, its retries and CANCEL) goes to the one it
        picked. In-dialog requests go where the peer's Contact and Record-Route say."""
        try:
            uri = uri_of(callee)
            target = target_of(uri)
        except ValueError as exc:
            raise LegError(f"callee: not a SIP URI ({exc})", 400) from None
        if target is None:
            raise LegError(f"callee: {callee!r} is not a sip: URI", 400)
        try:
            self._target = await self.agent.resolve(target, admit)
        except OSError as exc:
            raise LegError(f"callee: cannot resolve {target.host}: {exc}", 502) from None
        if self._abandoned():
            return
        try:
            from_uri = uri_of(caller) if caller else None
        except ValueError as exc:
            raise LegError(f"caller: not a SIP URI ({exc})", 400) from None
        rtp = await self._open_rtp()
        if self._abandoned():
            return
        self.local_sdp = sdp.offer(
            self.agent.address, rtp.local_port, sdp.SUPPORTED, session_id=self._session_id
        )
        if credentials is not None:
            self._auth = DigestState(credentials[0], credentials[1])
        if contact:
            self.contact = contact
        h = Headers()
        from_text = f"<{from_uri}>" if from_uri is not None else f"<sip:pbx@{self.agent.address}>"
        h.add("From", f"{from_text};tag={self.local_tag}")
        h.add("To", f"<{uri}>")
        h.add("Call-ID", new_call_id(self.agent.address))
        h.add("CSeq", "1 INVITE")
        h.add("Contact", self.contact)
        h.add("Allow", ALLOW)
        for name, value in headers or ():
            h.add(name, value)
        h.add("Content-Type", "application/sdp")
        self._invite = Request("INVITE", uri, h, self.local_sdp.encode())
        self.agent.track_call_id(self._invite.call_id, self)
        self.state = "calling"
        self._outcome = asyncio.get_running_loop().create_future()
        self._send_invite()
        try:
            await asyncio.wait_for(asyncio.shield(self._outcome), timeout)
        except TimeoutError:
            if self.state in ("calling", "early"):
                self._send_cancel()
                self._end()
                self.events.leg_failed(self, 408, "Request Timeout")

    def _abandoned(self) -> bool:
        """Whether `hangup` came while `dial` waited (DNS, the RTP port) before its INVITE left: then
        nothing is sent at all, and an RTP port opened meanwhile is closed."""
        if self.state != "ended":
            return False
        if self.rtp is not None:
            rtp, self.rtp = self.rtp, None
            self._spawn(rtp.close(), "rtp-close")
        return True

    def _send_invite(self) -> None:
        assert self._invite is not None and self._target is not None
        invite = self._invite
        invite.headers.remove("Via")
        for name in ("Authorization", "Proxy-Authorization"):
            invite.headers.remove(name)
        if self._auth is not None:
            for name, value in self._auth.authorize("INVITE", str(invite.uri), invite.body):
                invite.headers.add(name, value)
        self.agent.send_request(invite, self._target, self._on_invite_response)

    def _on_invite_response(self, resp: Response) -> None:
        status = resp.status
        if status < 200:
            self._provisional = True  # any provisional, 100 Trying too, allows the CANCEL (§9.1)
            if self._cancel_wanted:
                self._send_cancel()
                return
            if status == 100:
                return
            if self.state == "ended":
                return
            self.state = "early"
            body = resp.body.decode("utf-8", "replace")
            if body.strip():
                self._take_answer(body)
            self.events.leg_ringing(self, bool(body.strip()))
            return
        if status < 300:
            self._on_2xx(resp)
            return
        if status in (401, 407) and self._auth is not None and self.state != "ended":
            challenge_header, _ = header_names(status)
            values = resp.headers.get_all(challenge_header)
            try:
                retry = self._auth.on_challenge(status, values)
            except ValueError:
                retry = False
            if retry:
                assert self._invite is not None
                cseq = self._invite.cseq.number + 1
                self._invite.headers.set("CSeq", f"{cseq} INVITE")
                self._send_invite()
                return
        if self.state == "ended":
            return
        self._end()
        self.events.leg_failed(self, status, resp.reason or str(status))
        self._resolve()

    def _take_answer(self, body: str) -> bool:
        try:
            n = sdp.negotiated_from_answer(self.local_sdp, sdp.parse(body))
        except ValueError as exc:
            log.info("unusable answer SDP: %s", exc)
            return False
        self.remote_sdp = body
        self._apply(n)
        return True

    def _on_2xx(self, resp: Response) -> None:
        assert self._invite is not None
        if self.dialog is None:
            self.dialog = Dialog.as_uac(self._invite, resp)
            self.dialog.early = False
            self.agent.add_dialog(self.dialog.key, self)
        self._send_ack()
        if self.state == "confirmed":
            return  # a retransmission of the 2xx: ACKed again, nothing more to do
        if self.state == "ended" or self._cancel_wanted:
            self._send_bye()  # answered after we gave up: hang it up at once (§15)
            return
        body = resp.body.decode("utf-8", "replace")
        if not (body.strip() and self._take_answer(body)) and self.negotiated is None:
            self._send_bye()
            self._end()
            self.events.leg_failed(self, 488, "No answer received")
            self._resolve()
            return
        self.state = "confirmed"
        self.sending = True
        self.events.leg_answered(self, self.remote_sdp)
        self._resolve()

    def _send_ack(self) -> None:
        assert self.dialog is not None
        if self._ack is None:
            ack = self.dialog.request("ACK", self.contact)
            ack.headers.remove("Contact")
            for name, value in self._auth.authorize("ACK", str(ack.uri)) if self._auth else []:
                ack.headers.add(name, value)
            self._ack_target = self._dialog_target()
            ack.headers.prepend("Via", self.agent.via(self._ack_target.transport))
            self._ack = ack.serialize()
        assert self._ack_target is not None
        self.agent.transport.send(
            self._ack, self._ack_target.host, self._ack_target.port, self._ack_target.transport
        )

    def on_stray_2xx(self, response: Response) -> None:
        if self._ack is not None:
            self._send_ack()

    def _send_cancel(self) -> None:
        """CANCEL the INVITE (§9.1); before any provisional response it waits for one."""
        if self._invite is None or self._target is None:
            return
        self._cancel_wanted = True
        if not self._provisional or self._cancel_sent:
            return
        self._cancel_sent = True
        invite = self._invite
        h = Headers()
        h.add("Via", invite.headers.get_all("Via")[0])
        for name in ("From", "To", "Call-ID"):
            h.add(name, invite.headers.get(name) or "")
        h.add("CSeq", f"{invite.cseq.number} CANCEL")
        for route in invite.headers.get_all("Route"):
            h.add("Route", route)
        self.agent.send_request(Request("CANCEL", invite.uri, h), self._target)

    def _resolve(self) -> None:
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(None)

    # --- inbound -----------------------------------------------------------------------------------------

    @classmethod
    def incoming(
        cls, agent: SipAgent, pool: PortPool, events: LegEvents, request: Request, tx: ServerTransaction
    ) -> SipLeg:
        leg = cls(agent, pool, events, "uas")
        leg.tx = tx
        leg.state = "calling"
        agent.reply(tx, 100)
        agent.track_call_id(request.call_id, leg)
        body = request.body.decode("utf-8", "replace")
        leg.remote_sdp = body
        if body.strip():
            with contextlib.suppress(ValueError):
                leg.offer = sdp.parse(body)
        tx.on_ack = leg._on_invite_ack
        return leg

    def bind_events(self, events: LegEvents) -> None:
        self.events = events

    async def _answer_sdp(self) -> str:
        if self.local_sdp:
            return self.local_sdp
        if self.offer is None:
            raise LegError("the INVITE has no usable SDP offer", 488)
        rtp = await self._open_rtp()
        try:
            text, n = sdp.answer(
                self.offer, self.agent.address, rtp.local_port, sdp.SUPPORTED, session_id=self._session_id
            )
        except ValueError as exc:
            raise LegError(str(exc), 488) from None
        self.local_sdp = text
        self._apply(n)
        return text

    def _uas_dialog(self) -> Dialog:
        assert self.tx is not None
        if self.dialog is None:
            self.dialog = Dialog.as_uas(self.tx.request, self.local_tag)
            self.agent.add_dialog(self.dialog.key, self)
        return self.dialog

    async def ringing(self, early_media: bool) -> None:
        if self.tx is None or self.state != "calling" and self.state != "early":
            raise LegError("there is no incoming call waiting for an answer", 409)
        if early_media:
            answer = await self._answer_sdp()
            self._uas_dialog().early = True
            self.agent.reply(self.tx, 183, to_tag=self.local_tag, contact=True, body=answer.encode(),
                             content_type="application/sdp")  # fmt: skip
            self.sending = True
        else:
            self._uas_dialog().early = True
            self.agent.reply(self.tx, 180, to_tag=self.local_tag, contact=True)
        self.state = "early"

    async def accept(self) -> str:
        if self.tx is None or self.state not in ("calling", "early"):
            raise LegError("there is no incoming call waiting for an answer", 409)
        answer = await self._answer_sdp()
        dialog = self._uas_dialog()
        dialog.early = False
        self.agent.reply(self.tx, 200, to_tag=self.local_tag, contact=True, body=answer.encode(),
                         content_type="application/sdp")  # fmt: skip
        self.state = "confirmed"
        self.sending = True
        self.agent.track_call_id(self.call_id, None)
        self._spawn(self._await_ack(), "await-ack")
        return answer

    async def _await_ack(self) -> None:
        assert self.tx is not None
        acked = await self.tx.acked
        if not acked and self.state == "confirmed":
            log.info("no ACK for our 200 OK: ending the call (RFC 3261 §13.3.1.4)")
            self._send_bye()
            self._end()
            self.events.leg_ended(self, "system", "ack_timeout")

    def _on_invite_ack(self, ack: Request) -> None:
        pass

    def reject(self, code: int, reason: str) -> None:
        if self.tx is None or self.state not in ("calling", "early"):
            return
        code = code if 300 <= code <= 699 else 603
        self.agent.reply(self.tx, code, to_tag=self.local_tag,
                         headers=[("Reason", f'SIP;cause={code};text="{_safe(reason)}"')])  # fmt: skip
        self._end()

    def on_cancel(self, cancel: Request) -> None:
        if self.tx is None or self.state not in ("calling", "early"):
            return
        self.agent.reply(self.tx, 487, to_tag=self.local_tag)
        self._end()
        self.events.leg_ended(self, "caller", "canceled")

    # --- in dialog ---------------------------------------------------------------------------------------

    def _dialog_target(self) -> Target:
        assert self.dialog is not None
        target = target_of(self.dialog.destination())
        if target is None and self._target is not None:
            return self._target
        if target is None and self.tx is not None:
            return self.tx.source
        assert target is not None
        # A peer that gave a hostname keeps the address we reached it on (no DNS in the media path).
        if self._target is not None and not _ip(target.host):
            return Target(self._target.host, target.port, target.transport)
        if self.tx is not None and not _ip(target.host):
            return Target(self.tx.source.host, target.port, target.transport)
        return target

    def _send_in_dialog(
        self,
        method: str,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> asyncio.Future[Response] | None:
        if self.dialog is None:
            return None
        req = self.dialog.request(method, self.contact, body, content_type)
        for name, value in headers:
            req.headers.add(name, value)
        if self._auth is not None:
            for name, value in self._auth.authorize(method, str(req.uri), body):
                req.headers.add(name, value)
        tx = self.agent.send_request(req, self._dialog_target())
        return tx.final

    def _send_bye(self, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._send_in_dialog("BYE", headers=headers)

    def on_ack(self, request: Request) -> None:
        # The ACK of our 2xx to the initial INVITE or to a re-INVITE: same CSeq number (§13.2.2.4).
        for tx in (self.tx, self._reinvite_tx):
            if tx is not None and not tx.acked.done() and tx.request.cseq.number == request.cseq.number:
                tx.ack(request)
        body = request.body.decode("utf-8", "replace")
        if body.strip() and self._reoffer is not None:
            with contextlib.suppress(ValueError):
                self._apply(sdp.negotiated_from_answer(self._reoffer, sdp.parse(body)))
            self._reoffer = None

    _reoffer: str | None = None
    _reinvite_tx: ServerTransaction | None = None

    def on_request(self, request: Request, tx: ServerTransaction) -> None:
        agent = self.agent
        if self.dialog is None or not self.dialog.accepts(request):
            agent.reply(tx, 500, "CSeq out of order", headers=[("Retry-After", "1")])
            return
        method = request.method
        if method == "BYE":
            agent.reply(tx, 200)
            if self.state != "ended":
                self._end()
                self.events.leg_ended(self, "callee" if self.role == "uac" else "caller", "bye")
        elif method == "INFO":
            agent.reply(tx, 200)
            digit = _relay_digit(request)
            if digit is not None and self.state != "ended":
                self.events.leg_digit(self, digit)
        elif method in ("INVITE", "UPDATE"):
            if method == "INVITE":
                self._reinvite_tx = tx
            self._on_reoffer(request, tx)
        elif method == "OPTIONS":
            agent.reply(tx, 200, headers=[("Accept", "application/sdp")])
        elif method == "MESSAGE":
            agent.reply(tx, 200)
            if self.state != "ended":
                ctype = request.headers.get("Content-Type")
                self.events.leg_message(self, request.body.decode("utf-8", "replace"), ctype)
        elif method == "REFER":
            self._on_refer(request, tx)
        elif method == "NOTIFY":
            agent.reply(tx, 200)
            if (request.headers.get("Event") or "").split(";")[0].strip().lower() == "refer":
                status, reason = _sipfrag(request.body)
                if status:
                    self.events.leg_notify(self, status, reason)
        elif method == "PRACK":
            agent.reply(tx, 200)
        else:
            agent.reply(tx, 501)

    def _on_reoffer(self, request: Request, tx: ServerTransaction) -> None:
        assert self.dialog is not None
        self.dialog.update_target(request)
        body = request.body.decode("utf-8", "replace")
        if self.rtp is None:
            self.agent.reply(tx, 488)
            return
        self._sdp_version += 1
        if not body.strip():
            # A re-INVITE without an offer: ours goes in the 200, the answer comes in the ACK (§14.2).
            ours = sdp.offer(self.agent.address, self.rtp.local_port, sdp.SUPPORTED,
                             session_id=self._session_id, version=self._sdp_version)  # fmt: skip
            self._reoffer = ours
            self.agent.reply(tx, 200, contact=True, body=ours.encode(), content_type="application/sdp")
            return
        try:
            offer = sdp.parse(body)
            current = self.negotiated.codec if self.negotiated else None
            text, n = sdp.answer(
                offer, self.agent.address, self.rtp.local_port, sdp.SUPPORTED,
                prefer=(current,) + sdp.SUPPORTED if current else None,
                session_id=self._session_id, version=self._sdp_version,
            )  # fmt: skip
        except ValueError as exc:
            self.agent.reply(tx, 488, headers=[("Warning", f'304 - "{_safe(str(exc))[:120]}"')])
            return
        self.remote_sdp = body
        self.local_sdp = text
        self._apply(n)
        self.agent.reply(tx, 200, contact=True, body=text.encode(), content_type="application/sdp")
        held = sdp.is_hold(offer)
        if held != self.held:
            self.held = held
            self.events.leg_hold(self, held)

    def _on_refer(self, request: Request, tx: ServerTransaction) -> None:
        target = request.headers.get("Refer-To")
        if not target:
            self.agent.reply(tx, 400, "Missing Refer-To")
            return
        self.agent.reply(tx, 202)
        # We do not place the call ourselves: the app decides (it can `refer` the call). The implicit
        # subscription ends at once, as RFC 6665 §4.2.2 allows.
        self._send_in_dialog(
            "NOTIFY",
            b"SIP/2.0 100 Trying\r\n",
            "message/sipfrag;version=2.0",
            [("Event", "refer"), ("Subscription-State", "terminated;reason=noresource")],
        )
        self.events.leg_refer(self, target, request.headers.get("Referred-By"))

    async def refer(self, target: str) -> Response:
        """Send REFER (RFC 3515) to the peer; the final response to it (202 when accepted)."""
        final = self._send_in_dialog(
            "REFER",
            headers=[
                ("Refer-To", f"<{uri_of(target)}>"),
                ("Referred-By", self.dialog.local_uri if self.dialog else ""),
            ],
        )
        if final is None:
            raise LegError("the call is not connected", 409)
        return await final

    def message(
        self, body: str, content_type: str, headers: Iterable[tuple[str, str]] = ()
    ) -> asyncio.Future[Response]:
        """Send a MESSAGE (RFC 3428) in the confirmed dialog, now; the future of its final response (a
        synthetic 408 when the peer never answers, 503 when it cannot be reached)."""
        final = None
        if self.state == "confirmed":
            final = self._send_in_dialog("MESSAGE", body.encode("utf-8"), content_type, headers)
        if final is None:
            raise LegError("the call is not connected (no confirmed SIP dialog)", 409)
        return final

    # --- the end -----------------------------------------------------------------------------------------

    def hangup(self, headers: Iterable[tuple[str, str]] = ()) -> None:
        """End the leg from our side: CANCEL (early, ours), a final response (early, theirs) or BYE."""
        if self.state == "ended" or self.state == "idle":
            self._end()
            return
        if self.role == "uac" and self.state in ("calling", "early"):
            self._send_cancel()
        elif self.role == "uas" and self.state in ("calling", "early"):
            self.reject(603, "Decline")
        elif self.state == "confirmed":
            self._send_bye(headers)
        self._end()

    def _end(self) -> None:
        if self.state == "ended":
            return
        self.state = "ended"
        self.sending = False
        self._resolve()
        if self.call_id:
            self.agent.track_call_id(self.call_id, None)
        if self.rtp is not None:
            rtp, self.rtp = self.rtp, None
            self._spawn(rtp.close(), "rtp-close")
        # The dialog stays routable a little longer: the BYE's response, retransmitted requests.
        if self.dialog is not None:
            key = self.dialog.key
            asyncio.get_running_loop().call_later(
                32 * self.agent.layer.timers.t1, self.agent.remove_dialog, key
            )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.spawn(coro, f"{self.call_id}:{name}")


def _ip(host: str) -> bool:
    from worker.sip.agent import is_ip

    return is_ip(host)


def _safe(text: str) -> str:
    return text.replace("\\", "").replace('"', "'").replace("\r", " ").replace("\n", " ")


def _relay_digit(request: Request) -> str | None:
    """The key of an INFO DTMF relay body (`Signal=5`; application/dtmf-relay or application/dtmf)."""
    ctype = request.content_type
    mime = ctype.mime if ctype is not None else ""
    text = request.body.decode("utf-8", "replace")
    if mime == "application/dtmf":
        value = text.strip()
    elif mime == DTMF_RELAY:
        value = ""
        for line in text.splitlines():
            name, _, rest = line.partition("=")
            if name.strip().lower() == "signal":
                value = rest.strip()
                break
    else:
        return None
    if len(value) == 1 and value.upper() in "0123456789*#ABCD":
        return value.upper()
    return {"10": "*", "11": "#"}.get(value)


def _sipfrag(body: bytes) -> tuple[int, str]:
    """The status line of a message/sipfrag body (RFC 3420), e.g. `SIP/2.0 200 OK` → (200, "OK")."""
    first = body.decode("utf-8", "replace").strip().split("\r\n")[0].split("\n")[0]
    parts = first.split(" ", 2)
    if len(parts) >= 2 and parts[0].upper().startswith("SIP/") and parts[1].isdigit():
        return int(parts[1]), parts[2] if len(parts) > 2 else ""
    return 0, ""
