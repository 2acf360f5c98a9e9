"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state): retransmission and timeouts.

A client transaction sends one request and reports its responses; over UDP it retransmits the request
(Timer A/E, doubling from T1 up to T2 for non-INVITE) until a response arrives, gives up after 64·T1
(Timer B/F: a synthetic 408), ACKs a non-2xx final to an INVITE itself and absorbs that final's
retransmissions (Timer D/K). A 2xx to an INVITE is the dialog's to ACK (§13.2.2.4); the transaction lingers
in Accepted for 64·T1 passing retransmitted 2xx up so the dialog can ACK them again.

A server transaction answers retransmissions of its request with the last response sent. An INVITE server
transaction retransmits a non-2xx final until the ACK (Timer G, to 64·T1 Timer H) and a 2xx likewise
until the dialog's ACK arrives (§13.3.1.4: the UAS core's job; it lives here so it is in one place).

Over TCP nothing is retransmitted and the lingering timers are zero (§17.1.1.2, §17.2.1).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.sip.message import Headers, Request, Response, response_to

log = logging.getLogger("pbx.worker.sip.transaction")

T1 = 0.5
T2 = 4.0
T4 = 5.0
MAGIC = "z9hG4bK"  # RFC 3261 §8.1.1.7: branches of RFC 3261 elements start with it


def new_branch() -> str:
    return MAGIC + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a message goes: address, port, transport, and (for UDP replies) which local port it leaves."""

    host: str
    port: int
    transport: str = "udp"
    local_port: int | None = None

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


Send = Callable[[bytes, Target], None]
ResponseCallback = Callable[[Response], None]


class Timers:
    """Timer values; tests shrink them."""

    def __init__(self, t1: float = T1, t2: float = T2, t4: float = T4) -> None:
        self.t1, self.t2, self.t4 = t1, t2, t4


class ClientTransaction:
    """One request out, its responses in. `final` resolves with the final response (or a synthetic 408
    on timeout, 503 on a transport failure); `on_response` sees every response, provisional ones too."""

    def __init__(
        self,
        layer: TransactionLayer,
        request: Request,
        target: Target,
        on_response: ResponseCallback | None = None,
    ) -> None:
        self.layer = layer
        self.request = request
        self.target = target
        self.on_response = on_response
        self.method = request.method
        self.branch = request.top_via.branch or ""
        self.final: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.provisional = False
        self._data = request.serialize()
        self._timers: list[asyncio.TimerHandle] = []
        self._ack: bytes | None = None
        self.done = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.branch, self.method)

    def start(self) -> None:
        t = self.layer.timers
        self.layer.send(self._data, self.target)
        if not self.target.reliable:
            self._later(t.t1, self._retransmit, t.t1)
        self._later(64 * t.t1, self._timeout)

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay, fn, *args))

    def _retransmit(self, interval: float) -> None:
        if self.final.done() or self.done:
            return
        if self.provisional and self.method == "INVITE":
            return  # Proceeding: INVITE retransmissions stop (§17.1.1.2)
        self.layer.send(self._data, self.target)
        t = self.layer.timers
        nxt = interval * 2 if self.method == "INVITE" else min(interval * 2, t.t2)
        if self.provisional:
            nxt = t.t2  # non-INVITE Proceeding retransmits every T2 (§17.1.2.2)
        self._later(nxt, self._retransmit, nxt)

    def _timeout(self) -> None:
        if self.final.done():
            return
        if self.provisional and self.method == "INVITE":
            return  # Timer B only runs in Calling: a ringing INVITE waits for its TU (§17.1.1.2)
        self.fail(408, "Request Timeout")

    def fail(self, status: int, reason: str) -> None:
        """End without a real final response (timeout, transport error): a synthetic one reports it."""
        if self.final.done():
            return
        response = response_to(self.request, status, reason)
        self.final.set_result(response)
        if self.on_response is not None:
            self.on_response(response)
        self.terminate()

    def receive(self, response: Response) -> None:
        if self.done:
            return
        status = response.status
        if status < 200:
            if self.final.done():
                return
            self.provisional = True
            if self.on_response is not None:
                self.on_response(response)
            return
        t = self.layer.timers
        if self.final.done():
            # A retransmitted final: re-ACK a non-2xx (§17.1.1.2); a 2xx goes up for the dialog to ACK.
            if self.method == "INVITE":
                if status >= 300 and self._ack is not None:
                    self.layer.send(self._ack, self.target)
                elif status < 300 and self.on_response is not None:
                    self.on_response(response)
            return
        self.final.set_result(response)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self.method == "INVITE":
            if status >= 300:
                # Built before the TU sees the response: it may reuse the request for a retry.
                self._ack = self._build_ack(response).serialize()
                self.layer.send(self._ack, self.target)
                self._later(0 if self.target.reliable else 32.0 * t.t1 / T1, self.terminate)
            else:
                self._later(64 * t.t1, self.terminate)  # Accepted (RFC 6026 §8.4)
        else:
            self._later(0 if self.target.reliable else t.t4, self.terminate)
        if self.on_response is not None:
            self.on_response(response)

    def _build_ack(self, response: Response) -> Request:
        """The ACK of a non-2xx final (§17.1.1.3): same branch, Request-URI, Call-ID, From and Route as
        the INVITE, the response's To."""
        req = self.request
        headers = Headers()
        headers.add("Via", req.headers.get_all("Via")[0])
        for name in ("Max-Forwards", "From", "Call-ID"):
            value = req.headers.get(name)
            if value is not None:
                headers.add(name, value)
        headers.add("To", response.headers.get("To") or req.headers.get("To") or "")
        headers.add("CSeq", f"{req.cseq.number} ACK")
        for route in req.headers.get_all("Route"):
            headers.add("Route", route)
        return Request("ACK", req.uri, headers)

    def terminate(self) -> None:
        self.done = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.layer.forget_client(self)


class ServerTransaction:
    """One request in; `respond` sends (and keeps, for retransmissions) each response."""

    def __init__(self, layer: TransactionLayer, request: Request, source: Target) -> None:
        self.layer = layer
        self.request = request
        self.source = source
        self.method = request.method
        self.last: bytes | None = None
        self.status = 0
        self.acked = asyncio.get_running_loop().create_future()
        self._timers: list[asyncio.TimerHandle] = []
        self.done = False
        self.on_ack: Callable[[Request], None] | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return server_key(self.request)

    def respond(self, response: Response) -> None:
        if self.done:
            return
        if self.status >= 200:
            if not (self.method == "INVITE" and self.status < 300 and response.status < 300):
                log.debug("a second final response to %s was not sent", self.method)
                return
        self.last = response.serialize()
        self.status = response.status
        self.layer.send(self.last, self.response_target())
        if response.status < 200:
            return
        t = self.layer.timers
        if self.method == "INVITE":
            # Until the ACK: Timer G (non-2xx) or the 2xx retransmission (§13.3.1.4), both T1 doubling to
            # T2, given up after 64·T1 (Timer H; for a 2xx the dialog then ends, §13.3.1.4).
            if not self.source.reliable:
                self._later(t.t1, self._retransmit, t.t1)
            self._later(64 * t.t1, self._no_ack)
        else:
            self._later(0 if self.source.reliable else 64 * t.t1, self.terminate)

    def response_target(self) -> Target:
        """Where responses go (§18.2.2 with RFC 3581): the source address for UDP with rport or when it
        differs from sent-by, else the Via's sent-by (`received` always wins over the host)."""
        return self.source

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay, fn, *args))

    def _retransmit(self, interval: float) -> None:
        if self.done or self.acked.done() or self.last is None:
            return
        self.layer.send(self.last, self.response_target())
        nxt = min(interval * 2, self.layer.timers.t2)
        self._later(nxt, self._retransmit, nxt)

    def _no_ack(self) -> None:
        if not self.acked.done():
            self.acked.set_result(False)
        self.terminate()

    def retransmission(self) -> None:
        """The request came again: repeat the last response (§17.2.1, §17.2.2)."""
        if self.last is not None and not self.done:
            self.layer.send(self.last, self.response_target())

    def ack(self, request: Request) -> None:
        """The ACK of our final response came (through the transaction for non-2xx, the dialog for 2xx)."""
        if self.acked.done():
            return
        self.acked.set_result(True)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self.on_ack is not None:
            self.on_ack(request)
        t = self.layer.timers
        self._later(0 if self.source.reliable else t.t4, self.terminate)  # Timer I

    def terminate(self) -> None:
        self.done = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.layer.forget_server(self)


def server_key(request: Request) -> tuple[str, str, str]:
    """RFC 3261 §17.2.3 matching: branch, sent-by, and method (ACK matches its INVITE; CANCEL has its own)."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    return (via.branch or "", via.sent_by.lower(), method)


class TransactionLayer:
    """The open transactions of one user agent, matched to the messages that arrive."""

    def __init__(self, send: Send, timers: Timers | None = None) -> None:
        self.send = send
        self.timers = timers or Timers()
        self._clients: dict[tuple[str, str], ClientTransaction] = {}
        self._servers: dict[tuple[str, str, str], ServerTransaction] = {}

    def client(
        self, request: Request, target: Target, on_response: ResponseCallback | None = None
    ) -> ClientTransaction:
        tx = ClientTransaction(self, request, target, on_response)
        self._clients[tx.key] = tx
        tx.start()
        return tx

    def server(self, request: Request, source: Target) -> ServerTransaction:
        tx = ServerTransaction(self, request, source)
        self._servers[tx.key] = tx
        return tx

    def match_response(self, response: Response) -> ClientTransaction | None:
        """§17.1.3: the top Via's branch and the CSeq method."""
        try:
            branch = response.top_via.branch or ""
            method = response.cseq.method
        except Exception:
            return None
        return self._clients.get((branch, method))

    def match_request(self, request: Request) -> ServerTransaction | None:
        return self._servers.get(server_key(request))

    def invite_for_cancel(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL cancels (§9.2: same branch and sent-by)."""
        via = cancel.top_via
        return self._servers.get((via.branch or "", via.sent_by.lower(), "INVITE"))

    def forget_client(self, tx: ClientTransaction) -> None:
        if self._clients.get(tx.key) is tx:
            del self._clients[tx.key]

    def forget_server(self, tx: ServerTransaction) -> None:
        if self._servers.get(tx.key) is tx:
            del self._servers[tx.key]

    def close(self) -> None:
        for c in list(self._clients.values()):
            c.terminate()
        for s in list(self._servers.values()):
            s.terminate()

    @property
    def open_count(self) -> int:
        return len(self._clients) + len(self._servers)
