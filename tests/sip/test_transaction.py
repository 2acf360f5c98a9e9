"""SIP transactions (worker/sip/transaction.py) against a fake `send`, on an event loop whose clock jumps.

The loop below runs on virtual time: whenever nothing is ready it moves its clock straight to the next timer
instead of sleeping, so the RFC 3261 timers fire at exactly their deadlines and every schedule here is
checked to the millisecond without any real waiting.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from worker.sip.message import Request, Response, parse, response_to
from worker.sip.transaction import ClientTransaction, ServerTransaction, Target, Timers, TransactionLayer

T1, T2, T4 = 0.02, 0.16, 0.1
UDP = Target("192.0.2.10", 5060)
TCP = Target("192.0.2.10", 5060, "tcp")


# --- a loop on virtual time -------------------------------------------------------------------------------


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("deadlock: nothing is ready and no timer is pending")
        self.loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run(test: Callable[[], Awaitable[None]]) -> None:
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(test())
    finally:
        loop.close()


def now() -> float:
    return asyncio.get_running_loop().time()


class Wire:
    """The fake `send`: what the layer sent, where, and when (virtual seconds)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Target, float]] = []

    def __call__(self, data: bytes, target: Target) -> None:
        self.sent.append((data, target, now()))

    @property
    def times(self) -> list[float]:
        return [round(t, 6) for _, _, t in self.sent]

    def messages(self) -> list[Request | Response]:
        return [parse(d) for d, _, _ in self.sent]

    def statuses(self) -> list[int]:
        return [m.status for m in self.messages() if isinstance(m, Response)]

    def methods(self) -> list[str]:
        return [m.method for m in self.messages() if isinstance(m, Request)]


def request(method: str = "INVITE", branch: str = "z9hG4bKclient1", transport: str = "UDP") -> Request:
    body = b"v=0\r\n" if method == "INVITE" else b""
    data = (
        f"{method} sip:bob@192.0.2.10 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 192.0.2.1:5062;rport;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "Route: <sip:proxy.example.com;lr>\r\n"
        "From: <sip:alice@192.0.2.1>;tag=ftag\r\n"
        "To: <sip:bob@192.0.2.10>\r\n"
        "Call-ID: call-1@192.0.2.1\r\n"
        f"CSeq: 1 {method}\r\n"
        "Contact: <sip:alice@192.0.2.1:5062>\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    parsed = parse(data)
    assert isinstance(parsed, Request)
    return parsed


class Seen:
    def __init__(self) -> None:
        self.responses: list[Response] = []

    def __call__(self, response: Response) -> None:
        self.responses.append(response)

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def setup(
    method: str = "INVITE", target: Target = UDP
) -> tuple[TransactionLayer, Wire, Seen, ClientTransaction]:
    wire = Wire()
    layer = TransactionLayer(wire, Timers(t1=T1, t2=T2, t4=T4))
    seen = Seen()
    tx = layer.client(request(method), target, seen)
    return layer, wire, seen, tx


def resp(req: Request, status: int, tag: str | None = "ttag") -> Response:
    return response_to(req, status, to_tag=None if status == 100 else tag)


def approx(values: list[float]) -> Any:
    return pytest.approx(values, abs=1e-6)


# --- INVITE client ----------------------------------------------------------------------------------------


def test_invite_client_retransmits_doubling_until_timer_b() -> None:
    async def body() -> None:
        layer, wire, seen, tx = setup()
        final = await tx.final
        assert now() == pytest.approx(64 * T1)
        # Timer A: T1, 2T1, 4T1, ... with no T2 cap for INVITE (RFC 3261 §17.1.1.2)
        assert wire.times == approx([0, 0.02, 0.06, 0.14, 0.30, 0.62, 1.26])
        assert all(d == wire.sent[0][0] and t == UDP for d, t, _ in wire.sent)
        assert final.status == 408 and seen.statuses == [408]
        assert final.headers.get("Call-ID") == "call-1@192.0.2.1"
        assert layer.open_count == 0

    run(body)


def test_invite_client_stops_retransmitting_after_a_provisional() -> None:
    async def body() -> None:
        layer, wire, seen, tx = setup()
        await asyncio.sleep(0.1)
        assert len(wire.sent) == 3  # 0, T1, 3T1
        tx.receive(resp(tx.request, 180))
        assert seen.statuses == [180] and tx.provisional
        await asyncio.sleep(1.0)
        assert len(wire.sent) == 3, "Proceeding: no more INVITE retransmissions"
        tx.receive(resp(tx.request, 183))
        assert seen.statuses == [180, 183]

    run(body)


def test_invite_client_timer_b_does_not_fire_in_proceeding() -> None:
    async def body() -> None:
        layer, wire, seen, tx = setup()
        await asyncio.sleep(0.05)
        tx.receive(resp(tx.request, 180))
        await asyncio.sleep(3 * 64 * T1)  # RFC 3261 §17.1.1.2: Timer B only matters in Calling
        assert not tx.final.done(), f"a ringing INVITE timed out: {seen.statuses}"
        tx.receive(resp(tx.request, 200))
        assert (await tx.final).status == 200

    run(body)


def test_invite_client_acks_a_non_2xx_final_and_absorbs_its_retransmissions() -> None:
    async def body() -> None:
        layer, wire, seen, tx = setup()
        tx.receive(resp(tx.request, 100))
        tx.receive(resp(tx.request, 180))
        busy = resp(tx.request, 486)
        tx.receive(busy)
        assert (await tx.final).status == 486
        assert seen.statuses == [100, 180, 486]
        ack_data = wire.sent[-1][0]
        ack = parse(ack_data)
        assert isinstance(ack, Request) and ack.method == "ACK" and len(wire.sent) == 2
        invite = tx.request
        # §17.1.1.3: same Request-URI, top Via (so the same branch), From, Call-ID and Route; the
        # response's To (with the tag); CSeq number of the INVITE with method ACK
        assert str(ack.uri) == str(invite.uri)
        assert ack.headers.get_all("Via") == [invite.headers.get_all("Via")[0]]
        assert ack.top_via.branch == "z9hG4bKclient1"
        assert ack.headers.get("To") == busy.headers.get("To") and ack.to.tag == "ttag"
        assert ack.headers.get("From") == invite.headers.get("From")
        assert ack.call_id == invite.call_id
        assert (ack.cseq.number, ack.cseq.method) == (1, "ACK")
        assert ack.headers.get_all("Route") == invite.headers.get_all("Route")
        assert wire.sent[-1][1] == UDP
        # a retransmitted final is ACKed again, not passed up again
        tx.receive(resp(tx.request, 486))
        tx.receive(resp(tx.request, 486))
        assert [d for d, _, _ in wire.sent[1:]] == [ack_data] * 3
        assert seen.statuses == [100, 180, 486]
        await asyncio.sleep(0.5)
        assert len(wire.sent) == 4, "no INVITE retransmission after the final"
        # Timer D (32 s at the real T1, scaled with T1 here) ends it
        await asyncio.sleep(32 * T1 / 0.5 + 0.01)
        assert tx.done and layer.match_response(busy) is None and layer.open_count == 0

    run(body)


def test_invite_client_passes_every_2xx_up_for_the_dialog_to_ack() -> None:
    async def body() -> None:
        layer, wire, seen, tx = setup()
        ok = resp(tx.request, 200)
        tx.receive(ok)
        assert (await tx.final) is ok and seen.statuses == [200]
        assert len(wire.sent) == 1, "the transaction does not ACK a 2xx (§13.2.2.4)"
        tx.receive(resp(tx.request, 200))
        assert seen.statuses == [200, 200], "a retransmitted 2xx goes up again (RFC 6026 Accepted)"
        tx.receive(resp(tx.request, 180))
        assert seen.statuses == [200, 200], "a late provisional is dropped"
        assert layer.match_response(ok) is tx
        await asyncio.sleep(64 * T1 + 0.01)
        assert tx.done and layer.match_response(ok) is None
        assert len(wire.sent) == 1

    run(body)


def test_invite_client_over_tcp_never_retransmits() -> None:
    async def body() -> None:
        layer, wire, seen, tx = setup(target=TCP)
        final = await tx.final
        assert wire.times == [0] and wire.sent[0][1] == TCP
        assert final.status == 408, "Timer B still runs over TCP"
        layer, wire, seen, tx = setup(target=TCP)
        tx.receive(resp(tx.request, 603))
        assert (await tx.final).status == 603 and wire.methods()[1:] == ["ACK"]
        await asyncio.sleep(0.001)  # a zero delay timer, run on the next loop pass
        assert tx.done and layer.open_count == 0, "Timer D is zero over TCP"

    run(body)


# --- non-INVITE client ------------------------------------------------------------------------------------


def test_non_invite_client_retransmits_capped_at_t2_until_timer_f() -> None:
    async def body() -> None:
        layer, wire, seen, tx = setup("OPTIONS")
        final = await tx.final
        assert now() == pytest.approx(64 * T1)
        # Timer E: T1, 2T1, 4T1, then every T2 (§17.1.2.2)
        assert wire.times == approx([0, 0.02, 0.06, 0.14, 0.30, 0.46, 0.62, 0.78, 0.94, 1.10, 1.26])
        gaps = [b - a for a, b in zip(wire.times, wire.times[1:], strict=False)]
        assert max(gaps) == pytest.approx(T2)
        assert final.status == 408 and seen.statuses == [408] and layer.open_count == 0

    run(body)


def test_non_invite_client_proceeding_retransmits_every_t2_then_final() -> None:
    async def body() -> None:
        layer, wire, seen, tx = setup("BYE")
        await asyncio.sleep(0.03)
        tx.receive(resp(tx.request, 100))
        await asyncio.sleep(0.5)
        assert wire.times == approx([0, 0.02, 0.06, 0.22, 0.38])
        ok = resp(tx.request, 200)
        tx.receive(ok)
        assert (await tx.final) is ok and seen.statuses == [100, 200]
        tx.receive(resp(tx.request, 200))
        assert seen.statuses == [100, 200], "a retransmitted final is absorbed (Timer K)"
        sent = len(wire.sent)
        await asyncio.sleep(T4 + 0.01)
        assert tx.done and layer.open_count == 0 and len(wire.sent) == sent

    run(body)


def test_non_invite_client_over_tcp_never_retransmits() -> None:
    async def body() -> None:
        layer, wire, seen, tx = setup("OPTIONS", TCP)
        assert (await tx.final).status == 408 and wire.times == [0]

    run(body)


def test_client_fail_reports_a_synthetic_final_once() -> None:
    async def body() -> None:
        layer, wire, seen, tx = setup("OPTIONS")
        tx.fail(503, "Service Unavailable")
        tx.fail(408, "Request Timeout")
        assert (await tx.final).status == 503 and seen.statuses == [503] and layer.open_count == 0
        tx.receive(resp(tx.request, 200))
        assert seen.statuses == [503]

    run(body)


def test_layer_matches_responses_by_branch_and_method() -> None:
    async def body() -> None:
        wire = Wire()
        layer = TransactionLayer(wire, Timers(t1=T1, t2=T2, t4=T4))
        invite = layer.client(request("INVITE", "z9hG4bKsame"), UDP)
        cancel = layer.client(request("CANCEL", "z9hG4bKsame"), UDP)
        assert layer.match_response(resp(invite.request, 200)) is invite
        assert layer.match_response(resp(cancel.request, 200)) is cancel
        assert layer.match_response(resp(request("INVITE", "z9hG4bKother"), 200)) is None
        assert layer.open_count == 2
        layer.close()
        assert layer.open_count == 0 and invite.done and cancel.done
        await asyncio.sleep(2)
        assert not invite.final.done() and len(wire.sent) == 2, "closed transactions stay silent"

    run(body)


# --- INVITE server ----------------------------------------------------------------------------------------

SOURCE = Target("192.0.2.1", 5062, "udp", local_port=5060)


def server(
    method: str = "INVITE", source: Target = SOURCE
) -> tuple[TransactionLayer, Wire, ServerTransaction]:
    wire = Wire()
    layer = TransactionLayer(wire, Timers(t1=T1, t2=T2, t4=T4))
    return layer, wire, layer.server(request(method, "z9hG4bKserver1"), source)


def test_invite_server_answers_a_retransmitted_request_with_the_last_response() -> None:
    async def body() -> None:
        layer, wire, tx = server()
        req = request("INVITE", "z9hG4bKserver1")
        assert layer.match_request(req) is tx
        tx.retransmission()
        assert wire.sent == [], "nothing to repeat yet"
        tx.respond(resp(tx.request, 100))
        tx.retransmission()
        assert wire.statuses() == [100, 100]
        assert wire.sent[0][1] == SOURCE, "responses leave by the port the request came to"
        tx.respond(resp(tx.request, 180))
        tx.retransmission()
        assert wire.statuses() == [100, 100, 180, 180]
        await asyncio.sleep(1.0)
        assert len(wire.sent) == 4, "provisional responses are not retransmitted by the transaction"

    run(body)


def test_invite_server_retransmits_a_non_2xx_until_the_ack() -> None:
    async def body() -> None:
        layer, wire, tx = server()
        tx.respond(resp(tx.request, 486))
        tx.respond(resp(tx.request, 500))  # a second final is not sent
        await asyncio.sleep(0.5)
        # Timer G: T1 doubling up to T2
        assert wire.times == approx([0, 0.02, 0.06, 0.14, 0.30, 0.46])
        assert set(wire.statuses()) == {486}
        tx.retransmission()  # the INVITE again, before the ACK: the final again
        assert len(wire.sent) == 7
        ack = request("ACK", "z9hG4bKserver1")
        assert layer.match_request(ack) is tx, "the ACK of a non-2xx matches its INVITE transaction"
        acked: list[Request] = []
        tx.on_ack = acked.append
        tx.ack(ack)
        tx.ack(ack)
        assert (await tx.acked) is True and acked == [ack]
        await asyncio.sleep(T4 + 0.01)  # Timer I
        assert len(wire.sent) == 7 and tx.done and layer.match_request(ack) is None

    run(body)


def test_invite_server_gives_up_without_an_ack_after_64_t1() -> None:
    async def body() -> None:
        layer, wire, tx = server()
        tx.respond(resp(tx.request, 486))
        assert (await tx.acked) is False
        assert now() == pytest.approx(64 * T1)
        assert wire.times == approx([0, 0.02, 0.06, 0.14, 0.30, 0.46, 0.62, 0.78, 0.94, 1.10, 1.26])
        assert tx.done and layer.open_count == 0

    run(body)


def test_invite_server_retransmits_a_2xx_until_the_dialog_acks() -> None:
    async def body() -> None:
        layer, wire, tx = server()
        tx.respond(resp(tx.request, 100))
        tx.respond(resp(tx.request, 200))
        await asyncio.sleep(0.2)
        assert wire.statuses() == [100, 200, 200, 200, 200]
        assert wire.times == approx([0, 0, 0.02, 0.06, 0.14])
        tx.ack(request("ACK", "z9hG4bKdialog-ack"))
        assert (await tx.acked) is True
        await asyncio.sleep(1.5)
        assert len(wire.sent) == 5 and tx.done

    run(body)


def test_invite_server_2xx_without_an_ack_resolves_acked_false() -> None:
    async def body() -> None:
        layer, wire, tx = server()
        tx.respond(resp(tx.request, 200))
        assert (await tx.acked) is False and now() == pytest.approx(64 * T1)
        assert len(wire.sent) == 11 and layer.open_count == 0

    run(body)


def test_invite_server_over_tcp_does_not_retransmit() -> None:
    async def body() -> None:
        layer, wire, tx = server(source=Target("192.0.2.1", 40000, "tcp"))
        tx.respond(resp(tx.request, 486))
        assert (await tx.acked) is False
        assert wire.times == [0], "Timer G is not used over TCP, Timer H still is"

    run(body)


# --- non-INVITE server ------------------------------------------------------------------------------------


def test_non_invite_server_answers_retransmissions_from_its_cache() -> None:
    async def body() -> None:
        layer, wire, tx = server("OPTIONS")
        req = request("OPTIONS", "z9hG4bKserver1")
        tx.respond(resp(tx.request, 200))
        await asyncio.sleep(0.5)
        assert len(wire.sent) == 1, "a non-INVITE final is sent once (no Timer G)"
        assert layer.match_request(req) is tx
        tx.retransmission()
        tx.retransmission()
        assert [d for d, _, _ in wire.sent] == [wire.sent[0][0]] * 3
        tx.respond(resp(tx.request, 500))
        assert len(wire.sent) == 3, "one final only"
        await asyncio.sleep(64 * T1)  # Timer J
        assert tx.done and layer.match_request(req) is None
        tx.retransmission()
        assert len(wire.sent) == 3

    run(body)


def test_non_invite_server_over_tcp_ends_at_once() -> None:
    async def body() -> None:
        layer, wire, tx = server("BYE", Target("192.0.2.1", 40000, "tcp"))
        tx.respond(resp(tx.request, 200))
        await asyncio.sleep(0.001)  # a zero delay timer, run on the next loop pass
        assert tx.done and layer.open_count == 0 and len(wire.sent) == 1

    run(body)


def test_cancel_finds_its_invite_server_transaction() -> None:
    async def body() -> None:
        layer, wire, tx = server()
        cancel = request("CANCEL", "z9hG4bKserver1")
        assert layer.invite_for_cancel(cancel) is tx
        assert layer.match_request(cancel) is None, "a CANCEL is a transaction of its own"
        assert layer.invite_for_cancel(request("CANCEL", "z9hG4bKelse")) is None

    run(body)
