"""SipAgent (worker/sip/agent.py) on loopback: two agents talking, and a raw UDP socket poking one of them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from worker.sip import transport as transport_module
from worker.sip.agent import ALLOW, SipAgent, extra_headers
from worker.sip.message import Headers, Request, Response, parse
from worker.sip.transaction import ServerTransaction, Target, Timers
from worker.sip.transport import Source
from worker.sip.uri import parse_uri

TIMERS = Timers(t1=0.02, t2=0.16, t4=0.1)
WAIT = 2.0


async def start_agent(**kw: object) -> SipAgent:
    for _ in range(10):
        agent = SipAgent("127.0.0.1", 0, timers=TIMERS, **kw)  # type: ignore[arg-type]
        try:
            await agent.start()
            return agent
        except OSError:  # see test_start_survives_a_taken_tcp_port
            await agent.close()
    raise OSError("cannot start a SIP agent")


@contextlib.asynccontextmanager
async def running(**kw: object) -> AsyncIterator[SipAgent]:
    agent = await start_agent(**kw)
    try:
        yield agent
    finally:
        await agent.close()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[SipAgent, SipAgent]]:
    async with running() as a, running() as b:
        yield a, b


def out_of_dialog(method: str, to: SipAgent, to_tag: str | None = None, cseq: int = 1) -> Request:
    h = Headers()
    h.add("From", "<sip:alice@127.0.0.1>;tag=fromtag")
    h.add("To", f"<sip:bob@127.0.0.1:{to.port}>" + (f";tag={to_tag}" if to_tag else ""))
    h.add("Call-ID", f"{method.lower()}-test@127.0.0.1")
    h.add("CSeq", f"{cseq} {method}")
    return Request(method, parse_uri(f"sip:bob@127.0.0.1:{to.port}"), h)


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


def target(agent: SipAgent) -> Target:
    return Target("127.0.0.1", agent.port)


async def ask(a: SipAgent, req: Request, b: SipAgent) -> Response:
    return await asyncio.wait_for(a.send_request(req, target(b)).final, WAIT)


class RawUdp(asyncio.DatagramProtocol):
    """A bare UDP socket on 127.0.0.1 that queues whatever comes back."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, agent: SipAgent) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", agent.port))

    async def next_raw(self) -> bytes:
        return await asyncio.wait_for(self.queue.get(), WAIT)

    async def next(self) -> Response:
        message = parse(await self.next_raw())
        assert isinstance(message, Response)
        return message


@pytest.fixture
async def raw() -> AsyncIterator[RawUdp]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(RawUdp, local_addr=("127.0.0.1", 0))
    try:
        yield proto
    finally:
        transport.close()


def raw_request(
    raw: RawUdp,
    agent: SipAgent,
    method: str = "OPTIONS",
    cseq: str = "1 OPTIONS",
    branch: str = "z9hG4bKraw1",
) -> bytes:
    return (
        f"{method} sip:bob@127.0.0.1:{agent.port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{raw.port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:raw@127.0.0.1>;tag=rawtag\r\n"
        f"To: <sip:bob@127.0.0.1:{agent.port}>\r\n"
        "Call-ID: raw-1@127.0.0.1\r\n"
        f"CSeq: {cseq}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


# --- out of dialog ----------------------------------------------------------------------------------------


def test_shared_port_zero_means_none() -> None:
    agent = SipAgent("127.0.0.1", 0)
    assert agent.transport.shared_port == 0 and agent.address == "127.0.0.1"
    assert agent.via().startswith("SIP/2.0/UDP 127.0.0.1:0;rport;branch=z9hG4bK")
    assert agent.contact("bot", "tcp") == "<sip:bot@127.0.0.1:0;transport=tcp>"


async def test_options_out_of_dialog_gets_200_with_allow(pair: tuple[SipAgent, SipAgent]) -> None:
    a, b = pair
    assert a.port and b.port and a.port != b.port
    assert list(a.transport._udp) == [a.port], "shared port 0: only the own port is bound"
    req = out_of_dialog("OPTIONS", b)
    resp = await ask(a, req, b)
    assert resp.status == 200
    assert ", ".join(resp.headers.get_all("Allow")) == ALLOW and "INVITE" in ALLOW and "MESSAGE" in ALLOW
    assert resp.headers.get("Accept") == "application/sdp"
    assert resp.headers.get("Server") == "pbx-voice"
    # what the agent added to the request on its way out
    assert req.top_via.branch and req.top_via.branch.startswith("z9hG4bK")
    assert req.headers.get("Max-Forwards") == "70" and req.headers.get("User-Agent") == "pbx-voice"


async def test_unknown_method_gets_405_with_allow(pair: tuple[SipAgent, SipAgent]) -> None:
    a, b = pair
    resp = await ask(a, out_of_dialog("PUBLISH", b), b)
    assert resp.status == 405 and ", ".join(resp.headers.get_all("Allow")) == ALLOW


@pytest.mark.parametrize("method", ["BYE", "INFO", "REFER", "NOTIFY", "UPDATE", "MESSAGE"])
async def test_in_dialog_request_for_an_unknown_dialog_gets_481(
    pair: tuple[SipAgent, SipAgent], method: str
) -> None:
    a, b = pair
    assert (await ask(a, out_of_dialog(method, b, to_tag="nosuchdialog"), b)).status == 481
    # without a To tag it is no dialog either
    assert (await ask(a, out_of_dialog(method, b, cseq=2), b)).status == 481


async def test_invite_without_a_handler_gets_503_with_reason_and_the_ack_is_absorbed(
    pair: tuple[SipAgent, SipAgent],
) -> None:
    a, b = pair
    req = out_of_dialog("INVITE", b)
    req.headers.add("Contact", a.contact())
    resp = await ask(a, req, b)
    assert resp.status == 503
    reason = resp.headers.get("Reason") or ""
    assert reason.startswith("SIP;cause=503") and "No invite handler" in reason


async def test_non_2xx_to_an_invite_is_acked_through_the_transactions(
    pair: tuple[SipAgent, SipAgent],
) -> None:
    a, b = pair
    seen: list[ServerTransaction] = []

    def on_invite(request: Request, tx: ServerTransaction) -> None:
        seen.append(tx)
        b.reply(tx, 486, to_tag="busytag")

    b.on_invite = on_invite
    req = out_of_dialog("INVITE", b)
    resp = await ask(a, req, b)
    assert resp.status == 486 and resp.to.tag == "busytag"
    # a's client transaction ACKs the 486; b's server transaction matches that ACK and stops Timer G
    assert await asyncio.wait_for(seen[0].acked, WAIT) is True
    assert len(seen) == 1


async def test_cancel_for_an_unknown_transaction_gets_481(pair: tuple[SipAgent, SipAgent]) -> None:
    a, b = pair
    assert (await ask(a, out_of_dialog("CANCEL", b), b)).status == 481


async def test_cancel_of_a_pending_invite_without_a_leg_gets_200_and_487(
    pair: tuple[SipAgent, SipAgent],
) -> None:
    a, b = pair
    pending: list[ServerTransaction] = []

    def on_invite(request: Request, tx: ServerTransaction) -> None:
        pending.append(tx)
        b.reply(tx, 180, to_tag="ringtag")

    b.on_invite = on_invite
    invite = out_of_dialog("INVITE", b)
    statuses: list[int] = []
    got_180 = asyncio.Event()

    def on_response(r: Response) -> None:
        statuses.append(r.status)
        if r.status == 180:
            got_180.set()

    itx = a.send_request(invite, target(b), on_response)
    await asyncio.wait_for(got_180.wait(), WAIT)
    h = Headers()
    h.add("Via", invite.headers.get_all("Via")[0])
    for name in ("From", "To", "Call-ID"):
        h.add(name, invite.headers.get(name) or "")
    h.add("CSeq", "1 CANCEL")
    cancel = await asyncio.wait_for(a.send_request(Request("CANCEL", invite.uri, h), target(b)).final, WAIT)
    assert cancel.status == 200
    assert (await asyncio.wait_for(itx.final, WAIT)).status == 487
    assert statuses == [180, 487]
    assert await asyncio.wait_for(pending[0].acked, WAIT) is True


async def test_a_retransmitted_request_gets_the_cached_response(
    pair: tuple[SipAgent, SipAgent], raw: RawUdp
) -> None:
    a, b = pair
    data = raw_request(raw, b)
    raw.send(data, b)
    first = await raw.next()
    raw.send(data, b)
    again = await raw.next()
    assert first.status == 200 and again.serialize() == first.serialize()
    assert first.top_via.branch == "z9hG4bKraw1"


# --- what does not parse ----------------------------------------------------------------------------------


async def test_a_request_with_a_broken_cseq_gets_400_with_its_via(
    pair: tuple[SipAgent, SipAgent], raw: RawUdp
) -> None:
    a, b = pair
    data = raw_request(raw, b, cseq="one OPTIONS")
    raw.send(data, b)
    # the broken CSeq is echoed as it came, so the answer is read line by line rather than parsed
    lines = (await raw.next_raw()).decode().split("\r\n")
    assert lines[0] == "SIP/2.0 400 Bad Request"
    sent = data.decode().split("\r\n")
    assert [x for x in lines if x.startswith("Via:")] == [x for x in sent if x.startswith("Via:")]
    for name in ("From:", "To:", "Call-ID:", "CSeq:"):
        assert [x for x in lines if x.startswith(name)] == [x for x in sent if x.startswith(name)]
    warning = next(x for x in lines if x.startswith("Warning:"))
    assert warning.startswith('Warning: 399 127.0.0.1 "') and "CSeq" in warning
    assert b.parse_errors == 1


async def test_a_request_whose_cseq_method_differs_gets_400(
    pair: tuple[SipAgent, SipAgent], raw: RawUdp
) -> None:
    a, b = pair
    raw.send(raw_request(raw, b, cseq="1 INVITE"), b)
    assert (await raw.next()).status == 400


async def test_an_unparsable_ack_gets_no_reply(pair: tuple[SipAgent, SipAgent], raw: RawUdp) -> None:
    a, b = pair
    raw.send(raw_request(raw, b, "ACK", cseq="x ACK", branch="z9hG4bKbadack"), b)
    raw.send(raw_request(raw, b), b)
    resp = await raw.next()
    assert resp.status == 200 and resp.cseq.method == "OPTIONS", "nothing came back for the broken ACK"


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02\xff garbage",
        b"hello world\r\n\r\n",
        b"SIP/2.0 999 Nope\r\n\r\n",
        b"INVITE\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKx\r\n\r\n",
        b"\xff" * 3000,
    ],
)
async def test_garbage_gets_no_reply_and_the_agent_keeps_answering(
    pair: tuple[SipAgent, SipAgent], raw: RawUdp, garbage: bytes
) -> None:
    a, b = pair
    raw.send(garbage, b)
    raw.send(raw_request(raw, b), b)
    # UDP on loopback keeps the order from one socket: had the garbage been answered, that answer came first
    resp = await raw.next()
    assert resp.status == 200 and resp.cseq.method == "OPTIONS"
    assert b.received == 2 and b.parse_errors == 1
    assert (await ask(a, out_of_dialog("OPTIONS", b), b)).status == 200


async def test_stray_responses_and_acks_are_dropped(pair: tuple[SipAgent, SipAgent], raw: RawUdp) -> None:
    a, b = pair
    stray = (
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{b.port};branch=z9hG4bKnotours\r\n"
        "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>;tag=2\r\nCall-ID: stray@x\r\n"
        "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    raw.send(stray, b)
    raw.send(raw_request(raw, b, "ACK", cseq="1 ACK", branch="z9hG4bKnoinvite"), b)
    raw.send(raw_request(raw, b), b)
    resp = await raw.next()
    assert resp.status == 200 and resp.cseq.method == "OPTIONS"
    assert b.parse_errors == 0


# --- forwarding to the owner of a dialog, and dialog claims -----------------------------------------------


async def test_unknown_dialog_goes_to_the_forwarder_and_481_only_if_nobody_owns_it() -> None:
    forwarded: list[tuple[str, bytes, Source]] = []
    owned = {"owned@127.0.0.1"}

    async def forwarder(call_id: str, data: bytes, source: Source) -> bool:
        forwarded.append((call_id, data, source))
        return call_id in owned

    async with running() as a, running(forwarder=forwarder) as b:
        bye = out_of_dialog("BYE", b, to_tag="elsewhere")
        bye.headers.set("Call-ID", "nobody@127.0.0.1")
        assert (await ask(a, bye, b)).status == 481
        assert forwarded[-1][0] == "nobody@127.0.0.1" and forwarded[-1][2].port == a.port

        bye = out_of_dialog("BYE", b, to_tag="elsewhere")
        bye.headers.set("Call-ID", "owned@127.0.0.1")
        tx = a.send_request(bye, target(b))
        await until(lambda: len(forwarded) == 2)  # the forwarder said it delivered: b does not answer
        assert forwarded[1][0] == "owned@127.0.0.1" and forwarded[1][1].startswith(b"BYE ")
        assert not tx.final.done()
        # a message handed over by another process is never forwarded again: answered 481 here
        b.handle(forwarded[1][1], forwarded[1][2], forwarded=True)
        assert (await asyncio.wait_for(tx.final, WAIT)).status == 481
        assert len(forwarded) == 2


async def test_dialog_claims_follow_the_call_id_count() -> None:
    claims: list[tuple[str, bool]] = []
    async with running(claim=lambda call_id, owned: claims.append((call_id, owned))) as agent:

        class User:
            def on_request(self, request: Request, tx: ServerTransaction) -> None: ...
            def on_ack(self, request: Request) -> None: ...
            def on_stray_2xx(self, response: Response) -> None: ...
            def on_cancel(self, cancel: Request) -> None: ...

        user = User()
        agent.add_dialog(("c1", "t1"), user)
        agent.add_dialog(("c1", "t1"), user)
        agent.add_dialog(("c1", "t2"), user)  # a fork: a second dialog, same Call-ID
        assert claims == [("c1", True)] and agent.dialog_count == 2
        agent.remove_dialog(("c1", "t1"))
        assert claims == [("c1", True)]
        agent.remove_dialog(("c1", "t2"))
        agent.remove_dialog(("c1", "t2"))
        assert claims == [("c1", True), ("c1", False)] and agent.dialog_count == 0


class _SteeringSocketModule:
    """`socket` for worker.sip.transport whose first UDP bind to port 0 lands on a chosen port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.steered = False
        real = socket.socket
        outer = self

        class Steered(real):  # type: ignore[misc,valid-type]
            def bind(self, address: object) -> None:
                if self.type == socket.SOCK_DGRAM and address == ("127.0.0.1", 0) and not outer.steered:
                    outer.steered = True
                    address = ("127.0.0.1", outer.port)
                super().bind(address)

        self.socket = Steered

    def __getattr__(self, name: str) -> object:
        return getattr(socket, name)


def _tcp_listener_on_a_free_udp_port() -> socket.socket:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            tcp.close()
            continue
        tcp.listen()
        return tcp
    raise OSError("no port found")


async def test_start_survives_a_taken_tcp_port(monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = _tcp_listener_on_a_free_udp_port()
    taken = blocker.getsockname()[1]
    steering = _SteeringSocketModule(taken)
    monkeypatch.setattr(transport_module, "socket", steering)
    agent = SipAgent("127.0.0.1", 0, timers=TIMERS)
    try:
        try:
            await agent.start()
        except OSError as exc:
            pytest.fail(f"the agent did not start: {exc}")
        assert steering.steered and agent.port != taken
    finally:
        await agent.close()
        blocker.close()


def test_extra_headers_refuse_injection() -> None:
    assert list(extra_headers({"X-Call": "1"})) == [("X-Call", "1")]
    for bad in ({"X-A\r\nVia": "x"}, {"X-A": "1\r\nVia: evil"}, {"": "x"}, {"X A": "1"}):
        with pytest.raises(ValueError):
            extra_headers(bad)
