"""The SIP user agent core of one media process (RFC 3261 §8, §12, §17 glue).

It owns the transports and the transaction layer, routes each message that arrives to its transaction, to
the dialog it belongs to, or (out of dialog) to the INVITE handler; answers what nobody else does
(OPTIONS, 481 for unknown dialogs, 405, 400 for what does not parse) and hands a message for a dialog this
process does not own to the forwarder, which looks the owner up in Redis (design §6).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

from common.tasks import TaskSet
from worker.sip.message import Headers, Request, Response, parse, response_to
from worker.sip.transaction import (
    ClientTransaction,
    ResponseCallback,
    ServerTransaction,
    Target,
    Timers,
    TransactionLayer,
    new_branch,
)
from worker.sip.transport import SipTransport, Source
from worker.sip.uri import SipParseError

log = logging.getLogger("pbx.worker.sip.agent")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY, UPDATE, MESSAGE"
USER_AGENT = "pbx-voice"


class DialogUser(Protocol):
    """What owns a dialog (a call leg): in-dialog requests, ACKs of its 2xx and stray 2xx go to it."""

    def on_request(self, request: Request, tx: ServerTransaction) -> None: ...

    def on_ack(self, request: Request) -> None: ...

    def on_stray_2xx(self, response: Response) -> None: ...

    def on_cancel(self, cancel: Request) -> None: ...


InviteHandler = Callable[[Request, ServerTransaction], None]
# Forward a message for an unknown dialog to its owner; False when no other process owns it.
Forwarder = Callable[[str, bytes, Source], Awaitable[bool]]
DialogClaim = Callable[[str, bool], None]  # (sip call-id, owned now?) → record in Redis
# (host as written, port, its addresses) → the address to send to; raises to refuse the destination.
Admit = Callable[[str, int, list[str]], str]


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def advertised_address(bind: str, public_ip: str) -> str:
    """The address put in Via, Contact and SDP: PUBLIC_IP, else the bound one, else the address the
    kernel would route outward from."""
    if public_ip:
        return public_ip
    if bind not in ("0.0.0.0", ""):
        return bind
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class SipAgent:
    def __init__(
        self,
        bind: str,
        shared_port: int,
        public_ip: str = "",
        timers: Timers | None = None,
        forwarder: Forwarder | None = None,
        claim: DialogClaim | None = None,
    ) -> None:
        self.bind = bind
        self.address = advertised_address(bind, public_ip)
        self.transport = SipTransport(bind, shared_port, self._on_data)
        self.layer = TransactionLayer(self._send, timers)
        self.on_invite: InviteHandler | None = None
        self.forwarder = forwarder
        self.claim = claim
        self._dialogs: dict[tuple[str, str], DialogUser] = {}
        self._by_call_id: dict[str, int] = {}
        self._pending: dict[str, DialogUser] = {}  # INVITEs we sent or got, before their dialog exists
        self._tasks = TaskSet(log, "sip-agent:")
        self.received = 0
        self.parse_errors = 0

    @property
    def port(self) -> int:
        return self.transport.own_port

    async def start(self) -> None:
        await self.transport.start()
        log.info("SIP on %s:%d (shared %d), advertised as %s", self.bind, self.port,
                 self.transport.shared_port, self.address)  # fmt: skip

    async def close(self) -> None:
        self.layer.close()
        self._tasks.cancel()
        await self.transport.close()

    # --- addresses ---------------------------------------------------------------------------------------

    def via(self, transport: str = "udp", branch: str | None = None) -> str:
        return f"SIP/2.0/{transport.upper()} {self.address}:{self.port};rport;branch={branch or new_branch()}"

    def contact(self, user: str | None = None, transport: str = "udp") -> str:
        who = f"{user}@" if user else ""
        param = ";transport=tcp" if transport == "tcp" else ""
        return f"<sip:{who}{self.address}:{self.port}{param}>"

    async def resolve(self, target: Target, admit: Admit | None = None) -> Target:
        """`target` with its host resolved (A records, on the loop's executor); `admit` picks the address
        among the answers and may refuse them all (what it raises goes to the caller)."""
        if is_ip(target.host):
            addresses = [target.host]
        else:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(target.host, target.port, family=socket.AF_INET)
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if not addresses:
                raise OSError(f"cannot resolve {target.host}")
        address = addresses[0] if admit is None else admit(target.host, target.port, addresses)
        return Target(address, target.port, target.transport)

    # --- dialogs -----------------------------------------------------------------------------------------

    def add_dialog(self, key: tuple[str, str], user: DialogUser) -> None:
        if key in self._dialogs:
            return
        self._dialogs[key] = user
        count = self._by_call_id.get(key[0], 0)
        self._by_call_id[key[0]] = count + 1
        if count == 0 and self.claim is not None:
            self.claim(key[0], True)

    def owned_call_ids(self) -> list[str]:
        """The Call-IDs of the dialogs this agent holds (what its `claim` callback was told about)."""
        return list(self._by_call_id)

    def remove_dialog(self, key: tuple[str, str]) -> None:
        if self._dialogs.pop(key, None) is None:
            return
        count = self._by_call_id.get(key[0], 1) - 1
        if count <= 0:
            self._by_call_id.pop(key[0], None)
            if self.claim is not None:
                self.claim(key[0], False)
        else:
            self._by_call_id[key[0]] = count

    def track_call_id(self, call_id: str, user: DialogUser | None) -> None:
        """A leg whose dialog is not there yet (INVITE sent/received): stray 2xx and CANCEL find it here."""
        if user is None:
            self._pending.pop(call_id, None)
        else:
            self._pending[call_id] = user

    @property
    def dialog_count(self) -> int:
        return len(self._dialogs)

    # --- out ---------------------------------------------------------------------------------------------

    def _send(self, data: bytes, target: Target) -> None:
        self.transport.send(data, target.host, target.port, target.transport, target.local_port)

    def send_request(
        self, request: Request, target: Target, on_response: ResponseCallback | None = None
    ) -> ClientTransaction:
        """Start a client transaction; a Via with a fresh branch goes on top unless the caller put one."""
        if "Via" not in request.headers:
            request.headers.prepend("Via", self.via(target.transport))
        if "Max-Forwards" not in request.headers:
            request.headers.add("Max-Forwards", "70")
        if "User-Agent" not in request.headers:
            request.headers.add("User-Agent", USER_AGENT)
        return self.layer.client(request, target, on_response)

    def send_stateless(self, request: Request, target: Target) -> None:
        """ACK of a 2xx (§13.2.2.4: its own branch, no transaction)."""
        if "Via" not in request.headers:
            request.headers.prepend("Via", self.via(target.transport))
        self._send(request.serialize(), target)

    def response(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        contact: bool = False,
    ) -> Response:
        resp = response_to(request, status, reason, to_tag)
        if contact:
            resp.headers.add("Contact", self.contact())
            for rr in request.headers.get_all("Record-Route"):  # §12.1.1
                resp.headers.add("Record-Route", rr)
        if status in (405, 200) and request.method in ("OPTIONS", "INVITE") or status == 405:
            resp.headers.add("Allow", ALLOW)
        resp.headers.add("Server", USER_AGENT)
        for name, value in headers:
            resp.headers.add(name, value)
        if content_type is not None:
            resp.headers.add("Content-Type", content_type)
        resp.body = body
        return resp

    def reply(self, tx: ServerTransaction, status: int, reason: str | None = None, **kw: object) -> Response:
        resp = self.response(tx.request, status, reason, **kw)  # type: ignore[arg-type]
        tx.respond(resp)
        return resp

    # --- in ----------------------------------------------------------------------------------------------

    def _on_data(self, data: bytes, source: Source) -> None:
        self.handle(data, source, forwarded=False)

    def handle(self, data: bytes, source: Source, forwarded: bool) -> None:
        """One message from the network (or forwarded by another process)."""
        self.received += 1
        try:
            message = parse(data)
        except SipParseError as exc:
            self.parse_errors += 1
            self._reject_unparsable(exc, source)
            return
        except Exception:  # the parser promises SipParseError only; never let a datagram end the loop
            log.exception("SIP parser failed on a %d-byte message", len(data))
            self.parse_errors += 1
            return
        try:
            if isinstance(message, Response):
                self._on_response(message, data, source, forwarded)
            else:
                self._on_request(message, data, source, forwarded)
        except Exception:
            log.exception("handling a SIP message failed")

    def _reject_unparsable(self, exc: SipParseError, source: Source) -> None:
        partial = exc.partial
        log.info("unparsable SIP message from %s:%d: %s", source.host, source.port, exc)
        if partial is None or partial.method == "ACK":
            return
        try:
            resp = response_to(partial, exc.status, None)
        except Exception:
            return
        if not resp.headers.get_all("Via"):
            return  # nowhere to send it (§18.2.2 needs a Via)
        resp.headers.add("Warning", f'399 {self.address} "{_quoted(str(exc))[:200]}"')
        self._send(resp.serialize(), _target(source))

    def _on_response(self, response: Response, data: bytes, source: Source, forwarded: bool) -> None:
        tx = self.layer.match_response(response)
        if tx is not None:
            tx.receive(response)
            return
        if response.cseq.method == "INVITE" and 200 <= response.status < 300:
            user = self._dialogs.get((response.call_id, response.from_.tag or ""))
            user = user or self._pending.get(response.call_id)
            if user is not None:
                user.on_stray_2xx(response)
                return
        if not forwarded:
            self._forward(response.call_id, data, source)

    def _on_request(self, request: Request, data: bytes, source: Source, forwarded: bool) -> None:
        target = _target(source)
        if request.method == "ACK":
            st = self.layer.match_request(request)
            if st is not None and st.status >= 300:
                st.ack(request)
                return
            user = self._dialogs.get((request.call_id, request.to.tag or ""))
            if user is not None:
                user.on_ack(request)
            elif not forwarded:
                self._forward(request.call_id, data, source)
            return
        st = self.layer.match_request(request)
        if st is not None:
            st.source = target  # answer where it came from this time (a NAT may have moved it)
            st.retransmission()
            return
        if request.method == "CANCEL":
            self._on_cancel(request, data, source, forwarded)
            return
        to_tag = request.to.tag
        if to_tag:
            user = self._dialogs.get((request.call_id, to_tag))
            if user is None:
                if forwarded:
                    self._stateless(request, target, 481)
                else:
                    self._forward_or(request, data, source, 481)
                return
            user.on_request(request, self.layer.server(request, target))
            return
        tx = self.layer.server(request, target)
        if request.method == "INVITE":
            if self.on_invite is None:
                self.reply(tx, 503, headers=[("Reason", 'SIP;cause=503;text="No invite handler configured"')])
                return
            self.on_invite(request, tx)
        elif request.method == "OPTIONS":
            self.reply(tx, 200, headers=[("Accept", "application/sdp")])
        elif request.method in ("BYE", "INFO", "REFER", "NOTIFY", "UPDATE", "PRACK", "MESSAGE"):
            # Only in a call: a MESSAGE outside one (RFC 3428 pager mode) has no call to reach either.
            self.reply(tx, 481)
        else:
            self.reply(tx, 405)

    def _on_cancel(self, cancel: Request, data: bytes, source: Source, forwarded: bool) -> None:
        target = _target(source)
        invite_tx = self.layer.invite_for_cancel(cancel)
        if invite_tx is None:
            if forwarded:
                self._stateless(cancel, target, 481)
            else:
                self._forward_or(cancel, data, source, 481)
            return
        tx = self.layer.server(cancel, target)
        self.reply(tx, 200)
        if invite_tx.status >= 200:
            return  # too late: the INVITE is already answered (§9.2)
        user = self._pending.get(cancel.call_id)
        if user is not None:
            user.on_cancel(cancel)
        else:
            self.reply(invite_tx, 487)

    def _stateless(self, request: Request, target: Target, status: int) -> None:
        self._send(self.response(request, status).serialize(), target)

    def _forward(self, call_id: str, data: bytes, source: Source) -> None:
        if self.forwarder is None:
            return
        self._spawn(self._forward_task(call_id, data, source, None), f"forward:{call_id}")

    def _forward_or(self, request: Request, data: bytes, source: Source, status: int) -> None:
        if self.forwarder is None:
            self._stateless(request, _target(source), status)
            return
        self._spawn(
            self._forward_task(request.call_id, data, source, (request, status)), f"forward:{request.call_id}"
        )

    async def _forward_task(
        self, call_id: str, data: bytes, source: Source, fallback: tuple[Request, int] | None
    ) -> None:
        assert self.forwarder is not None
        try:
            sent = await self.forwarder(call_id, data, source)
        except Exception as exc:
            log.warning("forwarding a SIP message for %s failed: %s", call_id, exc)
            sent = False
        if not sent and fallback is not None:
            request, status = fallback
            self._stateless(request, _target(source), status)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.spawn(coro, name)


def _target(source: Source) -> Target:
    """Responses go back where the request came from (RFC 3581 symmetric response routing), leaving by
    the port it reached; over TCP, on its connection."""
    return Target(source.host, source.port, source.transport, source.local_port)


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


def extra_headers(pairs: dict[str, str] | None) -> Headers:
    headers = Headers()
    for name, value in (pairs or {}).items():
        if not name or any(c in name for c in ":\r\n ") or "\r" in str(value) or "\n" in str(value):
            raise ValueError(f"sip.headers: {name!r} is not a usable header")
        headers.add(name, str(value))
    return headers
