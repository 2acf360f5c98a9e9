"""The SIP side of one media process: the user agent, RTP ports, inbound calls waiting for their app.

An INVITE from outside becomes a pending call: registered in Redis (state `incoming`, owned here), announced
to the webhook, and held (100 Trying) until an app opens `/call/sip?id=<dialogId>` and the frontend attaches
the socket to it; then a CallSession runs it like any other call. A request for a dialog that another
process owns is forwarded to it through its inbox (`pbx:sip:{call-id}` names the owner).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import numpy as np
from redis.exceptions import RedisError

from common import events, wire
from common.errors import DuplicateCall
from common.logs import call_id_var
from common.redact import redact_url
from common.tasks import TaskSet
from worker import metrics
from worker.host import ProcessHost
from worker.sip.agent import Admit, SipAgent
from worker.sip.leg import LegError, SipLeg
from worker.sip.message import Request
from worker.sip.register import Registrations
from worker.sip.rtp import PortPool
from worker.sip.transaction import ServerTransaction
from worker.sip.transport import Source
from worker.urlguard import HTTP, SIP_HINT, UrlRefused

if TYPE_CHECKING:
    from worker.urlguard import UrlGuard

log = logging.getLogger("pbx.worker.sip.telephony")

SIP = wire.SIP  # inbox kind of a forwarded SIP message
DIALOG_TTL = 6 * 3600
WEBHOOK_TIMEOUT = 5.0


class PendingCall:
    """An inbound leg nobody has picked up yet; it ends if the peer cancels or nobody answers in time."""

    def __init__(self, telephony: Telephony, leg: SipLeg, created_ms: int) -> None:
        self.telephony = telephony
        self.leg = leg
        self.created_ms = created_ms
        self.call_id = leg.dialog_id
        self.caller = ""
        self.callee = ""
        self.timer: asyncio.TimerHandle | None = None

    # LegEvents while nobody is attached
    def leg_ended(self, leg: SipLeg, initiator: str, reason: str) -> None:
        self.telephony.drop(self.call_id)

    def leg_ringing(self, leg: SipLeg, early_media: bool) -> None: ...

    def leg_answered(self, leg: SipLeg, remote_sdp: str) -> None: ...

    def leg_failed(self, leg: SipLeg, code: int, reason: str) -> None: ...

    def leg_audio(self, leg: SipLeg, pcm: np.ndarray) -> None: ...

    def leg_digit(self, leg: SipLeg, digit: str) -> None: ...

    def leg_refer(self, leg: SipLeg, target: str, referred_by: str | None) -> None: ...

    def leg_notify(self, leg: SipLeg, status: int, reason: str) -> None: ...

    def leg_message(self, leg: SipLeg, body: str, content_type: str | None) -> None: ...

    def leg_hold(self, leg: SipLeg, on_hold: bool) -> None: ...


class TelephonyHost(ProcessHost, Protocol):
    """What the SIP side needs from its media process."""

    @property
    def url_guard(self) -> UrlGuard: ...

    def has_call(self, call_id: str) -> bool: ...

    def end_call(self, call_id: str, reason: str, initiator: str) -> None:
        """Hang up the process's call `call_id`, if it has one."""
        ...


class Telephony:
    """The process's SIP side: its agent and RTP ports, inbound INVITEs until an app answers them, the
    routing of SIP messages to the process that owns their dialog."""

    def __init__(self, proc: TelephonyHost) -> None:
        self.proc = proc
        s = proc.settings
        self.agent = SipAgent(s.sip_addr, s.sip_port, s.public_ip, forwarder=self._forward, claim=self._claim)
        self.pool = PortPool(s.rtp_port_min, s.rtp_port_max)
        if s.sip_webhook_url:
            self.agent.on_invite = self._on_invite
        self.pending: dict[str, PendingCall] = {}
        self.registrations = Registrations(self.agent, s.sip_register)
        # Where a client may send a call: the URL rule, plus the PBXs the operator registers with.
        self.guard = proc.url_guard.with_trusted(self.registrations.destinations())
        self._http: aiohttp.ClientSession | None = None
        self._tasks = TaskSet(log, "telephony:")

    async def start(self) -> None:
        await self.agent.start()
        self.registrations.start()

    async def close(self) -> None:
        await self.registrations.close()
        for pending in list(self.pending.values()):
            pending.leg.reject(503, "Service Unavailable")
            self.drop(pending.call_id)
        if self._http is not None:
            await self._http.close()
        await self.agent.close()

    def spawn(self, coro: Any, name: str) -> None:
        self._tasks.spawn(coro, name)

    def admit(self, field: str, uri: str) -> Admit:
        """The check of a SIP destination a client named (`field`: `uri`) for `SipLeg.dial`: the callee's
        resolved addresses are judged by the URL rule, and a refusal is a LegError(403) naming the field."""
        guard = self.guard

        def admit(host: str, port: int, addresses: list[str]) -> str:
            try:
                return guard.pick_address(host, port, addresses, SIP_HINT)
            except UrlRefused as exc:
                raise LegError(exc.for_field(field, uri), 403) from None

        return admit

    # --- cross-process routing ---------------------------------------------------------------------------

    def registry_entries(self) -> list[dict[str, str | int]]:
        """The registry entries of the inbound calls still waiting for their app (see MediaProcess)."""
        return [
            {
                "id": p.call_id,
                "call_type": "sip",
                "state": "incoming",
                "owner": self.proc.proc_id,
                "frontend": "",
                "created_at": p.created_ms,
                "option": json.dumps({"caller": p.caller, "callee": p.callee}),
            }
            for p in self.pending.values()
        ]

    async def reclaim_dialogs(self) -> None:
        """Record again which SIP dialogs this process owns, after Redis lost the claims."""
        pipe = self.proc.redis.pipeline(transaction=False)
        for sip_call_id in self.agent.owned_call_ids():
            pipe.set(self.proc.keys.sip(sip_call_id), self.proc.proc_id, ex=DIALOG_TTL)
        await pipe.execute()

    def _claim(self, sip_call_id: str, owned: bool) -> None:
        self.spawn(self._record_claim(sip_call_id, owned), f"claim:{sip_call_id}")

    async def _record_claim(self, sip_call_id: str, owned: bool) -> None:
        key = self.proc.keys.sip(sip_call_id)
        try:
            if owned:
                await self.proc.redis.set(key, self.proc.proc_id, ex=DIALOG_TTL)
            else:
                await self.proc.redis.delete(key)
        except RedisError as exc:
            log.warning("could not record the SIP dialog %s: %s", sip_call_id, exc)

    async def _forward(self, sip_call_id: str, data: bytes, source: Source) -> bool:
        owner: Any = await self.proc.redis.get(self.proc.keys.sip(sip_call_id))
        if not owner:
            return False
        owner = owner.decode() if isinstance(owner, bytes) else str(owner)
        if owner == self.proc.proc_id:
            return False
        body = {"d": data, "t": source.transport, "h": source.host, "p": source.port, "l": source.local_port}
        self.proc.send(owner, wire.msg(sip_call_id, SIP, body))
        metrics.SIP_FORWARDED.labels().inc()
        return True

    def forwarded(self, body: dict[str, Any]) -> None:
        source = Source(str(body["t"]), str(body["h"]), int(body["p"]), int(body["l"]))
        self.agent.handle(bytes(body["d"]), source, forwarded=True)

    # --- inbound -----------------------------------------------------------------------------------------

    def _on_invite(self, request: Request, tx: ServerTransaction) -> None:
        if self.proc.call_count() + len(self.pending) >= self.proc.settings.max_calls:
            self.agent.reply(tx, 503, headers=[("Retry-After", "5")])
            return
        leg = SipLeg.incoming(self.agent, self.pool, _Detached(), request, tx)
        pending = PendingCall(self, leg, events.now_ms())
        leg.bind_events(pending)
        self.pending[pending.call_id] = pending
        self.spawn(self._announce(pending, request), f"announce:{pending.call_id}")

    async def _announce(self, pending: PendingCall, request: Request) -> None:
        call_id = pending.call_id
        token = call_id_var.set(call_id)
        try:
            caller, callee = str(request.from_.uri), str(request.to.uri)
            pending.caller, pending.callee = caller, callee
            try:
                await self.proc.registry.register_incoming(
                    call_id, self.proc.proc_id, {"caller": caller, "callee": callee}
                )
            except (DuplicateCall, RedisError) as exc:
                log.warning("cannot register the inbound call: %s", exc)
                pending.leg.reject(503, "Service Unavailable")
                self.pending.pop(call_id, None)
                return
            timeout = self.proc.settings.sip_accept_timeout
            pending.timer = asyncio.get_running_loop().call_later(timeout, self._unanswered, call_id)
            payload = {
                "dialogId": call_id,
                "createdAt": events.rfc3339(pending.created_ms),
                "caller": caller,
                "callee": callee,
                "event": "invite",
                "headers": [f"{name}: {value}" for name, value in request.headers],
                "offer": request.body.decode("utf-8", "replace"),
            }
            if not await self._post_webhook(payload) and call_id in self.pending:
                pending.leg.reject(503, "Service Unavailable")
                self.drop(call_id)
        finally:
            call_id_var.reset(token)

    async def _post_webhook(self, payload: dict[str, Any]) -> bool:
        if self._http is None:
            # The operator's URL, so its host may be private (UrlGuard.from_settings trusts it); its scheme
            # and any redirect still go through the rule.
            timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)
            self._http = self.proc.url_guard.session(HTTP, timeout=timeout)
        url = self.proc.settings.sip_webhook_url
        shown = redact_url(url)
        try:
            async with self._http.post(
                url, data=json.dumps(payload), headers={"Content-Type": "application/json"}
            ) as resp:
                if 200 <= resp.status < 300:
                    return True
                log.warning("webhook %s answered %d: rejecting the call", shown, resp.status)
        except UrlRefused as exc:
            log.warning("%s: rejecting the call", exc.for_field("SIP_WEBHOOK_URL", shown))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("webhook %s failed (%s): rejecting the call", shown, exc)
        return False

    def _unanswered(self, call_id: str) -> None:
        pending = self.pending.get(call_id)
        if pending is None:
            return
        log.info("inbound call %s not answered in %.0f s", call_id, self.proc.settings.sip_accept_timeout)
        if pending.leg.state in ("calling", "early"):
            pending.leg.reject(480, "Temporarily Unavailable")
        self.proc.end_call(call_id, "no_answer", "system")
        self.drop(call_id)

    def take(self, call_id: str) -> PendingCall | None:
        """The pending call an attached session now runs (its timer keeps running until accept)."""
        return self.pending.get(call_id)

    def answered(self, call_id: str) -> None:
        pending = self.pending.pop(call_id, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()

    def drop(self, call_id: str) -> None:
        pending = self.pending.pop(call_id, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        if not self.proc.has_call(call_id):
            with contextlib.suppress(Exception):
                self.spawn(self.proc.registry.remove(call_id), f"remove:{call_id}")


class _Detached(PendingCall):
    """Events before the pending call is built (a 100 Trying is all that happens then)."""

    def __init__(self) -> None:  # noqa: D107 - nothing to hold
        pass

    def leg_ended(self, leg: SipLeg, initiator: str, reason: str) -> None: ...
