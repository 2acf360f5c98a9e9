"""SipLeg (worker/sip/leg.py): a UAC leg calling a UAS leg through two SipAgents on loopback, with RTP.

Some tests put a bare UDP socket in place of one side, to send exactly what a misbehaving or unlucky peer
would (a retransmitted 200 OK, no ACK at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from tests.audio_util import peak_freq, rms, tone
from worker.sip import sdp
from worker.sip.agent import SipAgent
from worker.sip.dialog import new_tag
from worker.sip.digest import make_challenge, parse_credentials, verify
from worker.sip.leg import LegError, SipLeg
from worker.sip.message import Request, Response, parse, response_to
from worker.sip.rtp import PortPool
from worker.sip.transaction import ServerTransaction, Timers

T1 = 0.02
TIMERS = Timers(t1=T1, t2=0.16, t4=0.1)
WAIT = 3.0


class FreePortPool(PortPool):
    """RTP on a port the kernel picks (port 0) and RTCP on the one after it, on 127.0.0.1 only."""

    def __init__(self) -> None:
        super().__init__(0, 0)

    def bind(self, host: str) -> tuple[socket.socket, socket.socket]:
        assert host == "127.0.0.1"
        for _ in range(100):
            rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtp.bind((host, 0))
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp.bind((host, rtp.getsockname()[1] + 1))
            except OSError:
                rtp.close()
                rtcp.close()
                continue
            rtp.setblocking(False)
            rtcp.setblocking(False)
            return rtp, rtcp
        raise OSError("no free RTP port pair")

    def release(self, port: int) -> None:
        pass


class Recorder:
    """A LegEvents that keeps every event, and the audio frames that are not silence."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.frames: list[np.ndarray] = []
        self.changed = asyncio.Event()

    def _note(self, *event: Any) -> None:
        self.events.append(event)
        self.changed.set()

    def leg_ringing(self, leg: SipLeg, early_media: bool) -> None:
        self._note("ringing", early_media)

    def leg_answered(self, leg: SipLeg, remote_sdp: str) -> None:
        self._note("answered", remote_sdp)

    def leg_failed(self, leg: SipLeg, code: int, reason: str) -> None:
        self._note("failed", code, reason)

    def leg_ended(self, leg: SipLeg, initiator: str, reason: str) -> None:
        self._note("ended", initiator, reason)

    def leg_audio(self, leg: SipLeg, pcm: np.ndarray) -> None:
        self.frames.append(pcm)
        self.changed.set()

    def leg_digit(self, leg: SipLeg, digit: str) -> None:
        self._note("digit", digit)

    def leg_refer(self, leg: SipLeg, target: str, referred_by: str | None) -> None:
        self._note("refer", target, referred_by)

    def leg_notify(self, leg: SipLeg, status: int, reason: str) -> None:
        self._note("notify", status, reason)

    def leg_message(self, leg: SipLeg, body: str, content_type: str | None) -> None:
        self._note("message", body, content_type)

    def leg_hold(self, leg: SipLeg, on_hold: bool) -> None:
        self._note("hold", on_hold)

    @property
    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def loud(self) -> list[np.ndarray]:
        return [f for f in self.frames if rms(f) > 1000]

    async def until(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def wait(self, name: str, timeout: float = WAIT) -> tuple[Any, ...]:
        await self.until(lambda: name in self.names, timeout)
        return next(e for e in self.events if e[0] == name)


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


Behaviour = Callable[[SipLeg], Awaitable[None]]


async def ring_and_answer(leg: SipLeg) -> None:
    await leg.ringing(False)
    await leg.accept()


class Bench:
    """Agent `a` places calls (UAC legs), agent `b` takes them (UAS legs, run by `behave`)."""

    def __init__(self, a: SipAgent, b: SipAgent) -> None:
        self.a, self.b = a, b
        self.pool = FreePortPool()
        self.behave: Behaviour | None = ring_and_answer
        self.incoming: list[tuple[SipLeg, Recorder]] = []
        self.outgoing: list[tuple[SipLeg, Recorder, asyncio.Task[None]]] = []
        self.invites: list[Request] = []
        self._tasks: set[asyncio.Task[None]] = set()
        b.on_invite = self.take

    @property
    def uri(self) -> str:
        return f"sip:bob@127.0.0.1:{self.b.port}"

    def take(self, request: Request, tx: ServerTransaction) -> None:
        self.invites.append(request)
        rec = Recorder()
        leg = SipLeg.incoming(self.b, self.pool, rec, request, tx)
        self.incoming.append((leg, rec))
        if self.behave is not None:
            self.spawn(self.behave(leg))

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def dial(self, uri: str | None = None, **kw: Any) -> tuple[SipLeg, Recorder, asyncio.Task[None]]:
        rec = Recorder()
        leg = SipLeg(self.a, self.pool, rec, "uac")
        kw.setdefault("timeout", WAIT)
        task = asyncio.create_task(leg.dial("sip:alice@127.0.0.1", uri or self.uri, **kw))
        self.outgoing.append((leg, rec, task))
        return leg, rec, task

    async def uas(self, index: int = 0) -> tuple[SipLeg, Recorder]:
        await until(lambda: len(self.incoming) > index)
        return self.incoming[index]

    async def connected(self) -> tuple[SipLeg, Recorder, SipLeg, Recorder]:
        uac, uac_rec, task = self.dial()
        await asyncio.wait_for(task, WAIT)
        assert uac_rec.names == ["ringing", "answered"], uac_rec.events
        uas, uas_rec = await self.uas()
        assert uas.tx is not None and await asyncio.wait_for(uas.tx.acked, WAIT) is True
        return uac, uac_rec, uas, uas_rec

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        legs = [leg for leg, _ in self.incoming] + [leg for leg, _, _ in self.outgoing]
        for leg in legs:
            leg.hangup()
        for _, _, task in self.outgoing:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, WAIT)
        for leg in legs:
            await asyncio.gather(*leg._tasks, return_exceptions=True)  # the RTP sockets close


async def start_agent() -> SipAgent:
    for _ in range(10):
        ua = SipAgent("127.0.0.1", 0, timers=TIMERS)
        try:
            await ua.start()
            return ua
        except OSError:  # the TCP port of the UDP port's number was taken (see test_agent.py)
            await ua.close()
    raise OSError("cannot start a SIP agent")


@contextlib.asynccontextmanager
async def agent() -> AsyncIterator[SipAgent]:
    ua = await start_agent()
    try:
        yield ua
    finally:
        await ua.close()


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    async with agent() as a, agent() as b:
        bench = Bench(a, b)
        try:
            yield bench
        finally:
            await bench.close()


async def play(leg: SipLeg, freq: float, stop: asyncio.Event) -> None:
    """A tone on `leg`, one 20 ms frame per tick, until told to stop."""
    samples = tone(freq, 2.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    i = 0
    while not stop.is_set():
        leg.push(samples[(i * 320) % (len(samples) - 320) :][:320])
        i += 1
        await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))


# --- the basic call ---------------------------------------------------------------------------------------


async def test_call_rings_answers_and_carries_audio_both_ways(bench: Bench) -> None:
    uac, uac_rec, uas, uas_rec = await bench.connected()
    assert uac_rec.events[0] == ("ringing", False)
    assert "m=audio" in uac_rec.events[1][1] and uac_rec.events[1][1] == uas.local_sdp
    assert uac.state == uas.state == "confirmed" and uac.sending and uas.sending
    assert uac.dialog is not None and uas.dialog is not None
    assert uac.dialog.call_id == uas.dialog.call_id == uac.call_id == uas.call_id
    assert (uac.dialog.local_tag, uac.dialog.remote_tag) == (uas.dialog.remote_tag, uas.dialog.local_tag)
    assert uas.dialog_id == f"{uac.call_id}-{uac.local_tag}-{uas.local_tag}"
    assert uac.negotiated is not None and uas.negotiated is not None
    assert uac.negotiated.codec == uas.negotiated.codec == "PCMU"
    assert bench.a.dialog_count == bench.b.dialog_count == 1
    invite = bench.invites[0]
    assert invite.headers.get("Content-Type") == "application/sdp" and invite.from_.tag == uac.local_tag

    stop = asyncio.Event()
    players = [asyncio.create_task(play(uac, 440, stop)), asyncio.create_task(play(uas, 660, stop))]
    try:
        await uas_rec.until(lambda: len(uas_rec.loud()) >= 20)
        await uac_rec.until(lambda: len(uac_rec.loud()) >= 20)
    finally:
        stop.set()
        await asyncio.gather(*players)
    for rec, freq in ((uas_rec, 440), (uac_rec, 660)):
        assert all(f.shape == (320,) and f.dtype == np.int16 for f in rec.frames)
        heard = np.concatenate(rec.loud()[5:20])
        assert abs(peak_freq(heard) - freq) < 20, (freq, peak_freq(heard))

    uac.hangup()
    assert await uas_rec.wait("ended") == ("ended", "caller", "bye")
    assert uac.state == uas.state == "ended"
    assert "ended" not in uac_rec.names, "the side that hangs up hears nothing back"


async def test_callee_hangup_ends_the_caller_leg(bench: Bench) -> None:
    uac, uac_rec, uas, uas_rec = await bench.connected()
    uas.hangup()
    assert await uac_rec.wait("ended") == ("ended", "callee", "bye")
    assert uac.state == "ended" and uac.rtp is None
    assert "ended" not in uas_rec.names
    # the dialog stays routable a little while (the BYE's retransmissions), then goes
    await until(lambda: bench.a.dialog_count == 0 and bench.b.dialog_count == 0)


async def test_early_media_183_then_answer(bench: Bench) -> None:
    async def early(leg: SipLeg) -> None:
        await leg.ringing(True)

    bench.behave = early
    uac, uac_rec, task = bench.dial()
    assert await uac_rec.wait("ringing") == ("ringing", True)
    assert uac.state == "early" and uac.negotiated is not None and "m=audio" in uac.remote_sdp
    uas, uas_rec = await bench.uas()
    assert uas.sending, "early media flows before the answer"
    await uas.accept()
    await asyncio.wait_for(task, WAIT)
    assert uac_rec.names == ["ringing", "answered"] and uac.state == "confirmed"


async def test_reject_486_reaches_the_caller(bench: Bench) -> None:
    async def busy(leg: SipLeg) -> None:
        leg.reject(486, "Busy Here")

    bench.behave = busy
    uac, uac_rec, task = bench.dial()
    await asyncio.wait_for(task, WAIT)
    assert uac_rec.events == [("failed", 486, "Busy Here")]
    assert uac.state == "ended"
    uas, uas_rec = await bench.uas()
    assert uas.state == "ended" and uas.tx is not None
    assert await asyncio.wait_for(uas.tx.acked, WAIT) is True, "the 486 is ACKed by the caller's transaction"
    assert uas_rec.events == []


async def test_callee_hangup_while_ringing_declines(bench: Bench) -> None:
    async def ring_then_hang_up(leg: SipLeg) -> None:
        await leg.ringing(False)
        leg.hangup()

    bench.behave = ring_then_hang_up
    uac, uac_rec, task = bench.dial()
    await asyncio.wait_for(task, WAIT)
    assert uac_rec.events == [("ringing", False), ("failed", 603, "Decline")]


async def test_caller_hangup_while_ringing_sends_cancel(bench: Bench) -> None:
    async def ring(leg: SipLeg) -> None:
        await leg.ringing(False)

    bench.behave = ring
    uac, uac_rec, task = bench.dial()
    await uac_rec.wait("ringing")
    uac.hangup()
    await asyncio.wait_for(task, WAIT)
    uas, uas_rec = await bench.uas()
    assert await uas_rec.wait("ended") == ("ended", "caller", "canceled")
    assert uas.tx is not None and await asyncio.wait_for(uas.tx.acked, WAIT) is True, "487 ACKed"
    assert uas.tx.status == 487
    assert uac_rec.names == ["ringing"], "no answered, and no failed for a call we hung up"
    assert uac.state == uas.state == "ended"


async def test_dial_timeout_while_ringing_cancels_and_fails_408(bench: Bench) -> None:
    async def ring(leg: SipLeg) -> None:
        await leg.ringing(False)

    bench.behave = ring
    uac, uac_rec, task = bench.dial(timeout=0.2)
    await asyncio.wait_for(task, WAIT)
    assert uac_rec.events == [("ringing", False), ("failed", 408, "Request Timeout")]
    uas, uas_rec = await bench.uas()
    assert await uas_rec.wait("ended") == ("ended", "caller", "canceled")


async def test_caller_hangup_after_100_trying_sends_cancel(bench: Bench) -> None:
    bench.behave = None  # SipLeg.incoming answers 100 Trying; nobody rings or answers
    uac, uac_rec, task = bench.dial()
    await until(lambda: bench.a.received >= 1)  # the 100 Trying is the first thing back
    uac.hangup()
    await asyncio.wait_for(task, WAIT)
    uas, uas_rec = await bench.uas()
    assert await uas_rec.wait("ended", timeout=1.0) == ("ended", "caller", "canceled")


# --- digest -----------------------------------------------------------------------------------------------


def challenge_first(bench: Bench, password: str = "secret") -> list[Request]:
    """Agent b answers INVITEs without valid Proxy-Authorization with 407, and takes the others."""
    seen: list[Request] = []

    def lookup(user: str, realm: str) -> str | None:
        return password if (user, realm) == ("alice", "pbx.test") else None

    def on_invite(request: Request, tx: ServerTransaction) -> None:
        seen.append(request)
        creds = request.headers.get("Proxy-Authorization")
        if creds and verify(creds, "INVITE", lookup, request.body):
            bench.take(request, tx)
            return
        challenge = make_challenge("pbx.test", opaque="op1")
        bench.b.reply(tx, 407, to_tag=new_tag(), headers=[("Proxy-Authenticate", challenge)])

    bench.b.on_invite = on_invite
    return seen


async def test_digest_challenge_is_answered_and_the_call_connects(bench: Bench) -> None:
    seen = challenge_first(bench)
    uac, uac_rec, task = bench.dial(credentials=("alice", "secret"))
    await asyncio.wait_for(task, WAIT)
    assert uac_rec.names == ["ringing", "answered"], uac_rec.events
    assert len(seen) == 2
    first, second = seen
    assert first.headers.get("Proxy-Authorization") is None
    assert second.call_id == first.call_id and second.from_.tag == first.from_.tag
    assert (first.cseq.number, second.cseq.number) == (1, 2)
    assert second.top_via.branch != first.top_via.branch, "the retry is a new transaction"
    creds = parse_credentials(second.headers.get("Proxy-Authorization") or "")
    assert creds.username == "alice" and creds.realm == "pbx.test" and creds.uri == str(second.uri)
    uas, _ = await bench.uas()
    assert uas.tx is not None and await asyncio.wait_for(uas.tx.acked, WAIT) is True


async def test_digest_wrong_password_fails_with_407(bench: Bench) -> None:
    seen = challenge_first(bench)
    uac, uac_rec, task = bench.dial(credentials=("alice", "wrong"))
    await asyncio.wait_for(task, WAIT)
    assert uac_rec.events == [("failed", 407, "Proxy Authentication Required")]
    assert len(seen) == 2, "one retry with the credentials, not a loop (RFC 3261 §22.2)"


async def test_digest_challenge_without_credentials_fails(bench: Bench) -> None:
    seen = challenge_first(bench)
    uac, uac_rec, task = bench.dial()
    await asyncio.wait_for(task, WAIT)
    assert uac_rec.events == [("failed", 407, "Proxy Authentication Required")] and len(seen) == 1


# --- in-dialog requests -----------------------------------------------------------------------------------


async def test_info_dtmf_relay_gives_digits(bench: Bench) -> None:
    uac, uac_rec, uas, uas_rec = await bench.connected()
    bodies = [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=160\r\n"),
        ("application/dtmf", b"*"),
        ("text/plain", b"Signal=1\r\n"),
        ("application/dtmf-relay", b"Signal=X\r\n"),
    ]
    for ctype, body in bodies:
        final = uac._send_in_dialog("INFO", body, ctype)
        assert final is not None and (await asyncio.wait_for(final, WAIT)).status == 200
    assert [e for e in uas_rec.events if e[0] == "digit"] == [("digit", "5"), ("digit", "#"), ("digit", "*")]
    # the other way: the callee's INFO reaches the caller (routed by the caller's Contact)
    final = uas._send_in_dialog("INFO", b"Signal=9\r\nDuration=100\r\n", "application/dtmf-relay")
    assert final is not None and (await asyncio.wait_for(final, WAIT)).status == 200
    assert ("digit", "9") in uac_rec.events


async def test_in_dialog_options_and_out_of_order_cseq(bench: Bench) -> None:
    uac, uac_rec, uas, uas_rec = await bench.connected()
    final = uac._send_in_dialog("OPTIONS")
    assert final is not None and (await asyncio.wait_for(final, WAIT)).status == 200
    assert uac.dialog is not None
    uac.dialog.local_seq = 0  # the next request goes out with CSeq 1, below the last one (2)
    final = uac._send_in_dialog("OPTIONS")
    assert final is not None
    resp = await asyncio.wait_for(final, WAIT)
    assert resp.status == 500 and resp.headers.get("Retry-After") == "1"


def reoffer(leg: SipLeg, direction: sdp.Direction, version: int) -> bytes:
    assert leg.rtp is not None
    text = sdp.offer("127.0.0.1", leg.rtp.local_port, ("PCMU", "PCMA"), session_id="42", version=version,
                     direction=direction)  # fmt: skip
    return text.encode()


def ack_2xx(leg: SipLeg) -> None:
    """The caller's ACK of a 2xx to its re-INVITE (what the test plays the part of)."""
    assert leg.dialog is not None
    ack = leg.dialog.request("ACK", leg.contact)
    ack.headers.remove("Contact")
    leg.agent.send_stateless(ack, leg._dialog_target())


async def test_reinvite_sendonly_is_answered_recvonly_and_puts_the_leg_on_hold(bench: Bench) -> None:
    uac, uac_rec, uas, uas_rec = await bench.connected()
    assert not uas.on_hold
    final = uac._send_in_dialog("INVITE", reoffer(uac, "sendonly", 2), "application/sdp")
    assert final is not None
    ok = await asyncio.wait_for(final, WAIT)
    ack_2xx(uac)
    assert ok.status == 200 and ok.headers.get("Content-Type") == "application/sdp" and ok.contacts
    answer = sdp.parse(ok.body.decode())
    assert answer.audio is not None and answer.audio.direction == "recvonly"
    assert answer.audio.codecs[0].name == "PCMU", "the codec in use is kept"
    assert uas.on_hold and uas.negotiated is not None and uas.negotiated.direction == "recvonly"
    assert uas.rtp is not None
    sent = uas.rtp.sent
    uas.push(tone(440, 0.02))
    assert uas.rtp.sent == sent, "nothing is sent to a peer that holds us"

    final = uac._send_in_dialog("INVITE", reoffer(uac, "sendrecv", 3), "application/sdp")
    assert final is not None
    ok = await asyncio.wait_for(final, WAIT)
    ack_2xx(uac)
    answer = sdp.parse(ok.body.decode())
    assert answer.audio is not None and answer.audio.direction == "sendrecv" and not uas.on_hold
    assert uas.state == "confirmed" and "ended" not in uas_rec.names


async def test_reinvite_ack_stops_the_2xx_retransmissions(bench: Bench) -> None:
    uac, uac_rec, uas, uas_rec = await bench.connected()
    txs: list[ServerTransaction] = []
    on_request = uas.on_request

    def spy(request: Request, tx: ServerTransaction) -> None:
        txs.append(tx)
        on_request(request, tx)

    uas.on_request = spy  # type: ignore[method-assign]
    final = uac._send_in_dialog("INVITE", reoffer(uac, "sendonly", 2), "application/sdp")
    assert final is not None and (await asyncio.wait_for(final, WAIT)).status == 200
    received = bench.b.received
    ack_2xx(uac)
    await until(lambda: bench.b.received > received)
    assert txs[0].request.method == "INVITE" and txs[0].acked.done() and txs[0].acked.result() is True


async def test_reinvite_without_sdp_offers_in_the_200_and_takes_the_answer_from_the_ack(bench: Bench) -> None:
    uac, uac_rec, uas, uas_rec = await bench.connected()
    final = uac._send_in_dialog("INVITE")
    assert final is not None
    ok = await asyncio.wait_for(final, WAIT)
    offer = sdp.parse(ok.body.decode())
    assert ok.status == 200 and offer.audio is not None and offer.audio.direction == "sendrecv"
    assert uac.dialog is not None and uac.rtp is not None
    text, _ = sdp.answer(offer, "127.0.0.1", uac.rtp.local_port, ("PCMA",), direction="sendonly",
                         session_id="42", version=2)  # fmt: skip
    ack = uac.dialog.request("ACK", uac.contact, text.encode(), "application/sdp")
    received = bench.b.received
    bench.a.send_stateless(ack, uac._dialog_target())
    await until(lambda: bench.b.received > received)
    assert uas.negotiated is not None and uas.negotiated.codec == "PCMA" and uas.on_hold


async def test_hold_is_reported_when_it_changes(bench: Bench) -> None:
    """A re-offer that is sendonly, inactive or sends to 0.0.0.0 holds the call (RFC 3264 §8.4); sendrecv
    and recvonly take it off hold. `leg_hold` comes once per change, after the 200."""
    uac, uac_rec, uas, uas_rec = await bench.connected()
    assert uac.rtp is not None
    legacy = sdp.offer("0.0.0.0", uac.rtp.local_port, ("PCMU",), session_id="42", version=9).encode()
    steps: list[tuple[bytes, bool]] = [
        (reoffer(uac, "sendrecv", 2), False),
        (reoffer(uac, "sendonly", 3), True),
        (reoffer(uac, "inactive", 4), True),
        (reoffer(uac, "recvonly", 5), False),
        (legacy, True),
        (reoffer(uac, "sendrecv", 10), False),
    ]
    for body, held in steps:
        final = uac._send_in_dialog("INVITE", body, "application/sdp")
        assert final is not None and (await asyncio.wait_for(final, WAIT)).status == 200
        ack_2xx(uac)
        assert uas.held is held
    assert [e for e in uas_rec.events if e[0] == "hold"] == [
        ("hold", True),
        ("hold", False),
        ("hold", True),
        ("hold", False),
    ]
    final = uac._send_in_dialog("UPDATE", reoffer(uac, "sendonly", 11), "application/sdp")
    assert final is not None and (await asyncio.wait_for(final, WAIT)).status == 200
    assert uas_rec.events[-1] == ("hold", True), "an UPDATE holds as a re-INVITE does"


async def test_a_refused_reoffer_changes_no_hold(bench: Bench) -> None:
    uac, uac_rec, uas, uas_rec = await bench.connected()
    assert uac.rtp is not None
    g729 = reoffer(uac, "sendonly", 2).replace(b"RTP/AVP 0 8 101", b"RTP/AVP 18").replace(b"PCMU", b"G729")
    assert b"m=audio" in g729 and b"RTP/AVP 18" in g729
    final = uac._send_in_dialog("INVITE", g729, "application/sdp")
    assert final is not None and (await asyncio.wait_for(final, WAIT)).status == 488
    assert not uas.held and "hold" not in uas_rec.names


async def test_refer_is_accepted_notified_and_reported(bench: Bench) -> None:
    uac, uac_rec, uas, uas_rec = await bench.connected()
    resp = await asyncio.wait_for(uac.refer("sip:carol@127.0.0.1"), WAIT)
    assert resp.status == 202
    assert await uas_rec.wait("refer") == ("refer", "<sip:carol@127.0.0.1>", "<sip:alice@127.0.0.1>")
    assert await uac_rec.wait("notify") == ("notify", 100, "Trying")


async def test_message_in_the_dialog_is_answered_200_and_reported(bench: Bench) -> None:
    uac, uac_rec, uas, uas_rec = await bench.connected()
    resp = await asyncio.wait_for(uac.message("héllo", "text/plain;charset=utf-8", [("X-Order", "42")]), WAIT)
    assert resp.status == 200 and resp.cseq.method == "MESSAGE"
    assert await uas_rec.wait("message") == ("message", "héllo", "text/plain;charset=utf-8")
    # And the other way, from the leg that answered the call.
    resp = await asyncio.wait_for(uas.message("{}", "application/json"), WAIT)
    assert resp.status == 200
    assert await uac_rec.wait("message") == ("message", "{}", "application/json")


async def test_message_needs_a_connected_call(bench: Bench) -> None:
    bench.behave = None  # the callee never answers
    uac, uac_rec, task = bench.dial()
    uas, _ = await bench.uas()
    with pytest.raises(LegError) as info:
        await uac.message("early", "text/plain")
    assert info.value.code == 409
    with pytest.raises(LegError):
        await uas.message("early", "text/plain")
    uac.hangup()
    await asyncio.wait_for(task, WAIT)


# --- a bare UDP peer --------------------------------------------------------------------------------------


class RawPeer(asyncio.DatagramProtocol):
    """A UDP socket playing a peer by hand."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.inbox: asyncio.Queue[Request | Response] = asyncio.Queue()
        self.responses: list[Response] = []
        self.requests: list[Request] = []
        self.source: tuple[str, int] = ("", 0)
        self.tag = "rawpeer"
        self.bench: Bench

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse(data)
        self.source = addr
        (self.responses if isinstance(message, Response) else self.requests).append(message)  # type: ignore[arg-type]
        self.inbox.put_nowait(message)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def send(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to or self.source)

    async def next(self, status: int) -> Response:
        while True:
            m = await asyncio.wait_for(self.inbox.get(), WAIT)
            if isinstance(m, Response) and m.status == status:
                return m

    async def next_request(self, method: str, timeout: float = WAIT) -> Request:
        while True:
            m = await asyncio.wait_for(self.inbox.get(), timeout)
            if isinstance(m, Request) and m.method == method:
                return m

    def answer(self, request: Request, status: int, body: bytes = b"") -> None:
        response = response_to(request, status, to_tag=None if status == 100 else "uastag")
        if request.method == "INVITE" and status < 300:
            response.headers.add("Contact", f"<sip:bob@127.0.0.1:{self.port}>")
        if body:
            response.headers.add("Content-Type", "application/sdp")
            response.body = body
        self.send(response.serialize())

    def invite(self, port: int) -> bytes:
        self.source = ("127.0.0.1", port)
        body = sdp.offer("127.0.0.1", 9, ("PCMU",)).encode()
        return (
            f"INVITE sip:bob@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bKrawinvite;rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:raw@127.0.0.1>;tag={self.tag}\r\n"
            f"To: <sip:bob@127.0.0.1:{port}>\r\n"
            "Call-ID: raw-invite@127.0.0.1\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:raw@127.0.0.1:{self.port}>\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body


@pytest.fixture
async def raw_peer(bench: Bench) -> AsyncIterator[RawPeer]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(RawPeer, local_addr=("127.0.0.1", 0))
    peer.bench = bench
    try:
        yield peer
    finally:
        transport.close()


async def test_retransmitted_200_is_acked_again_but_answered_once(raw_peer: RawPeer) -> None:
    bench, peer = raw_peer.bench, raw_peer
    uac, uac_rec, task = bench.dial(f"sip:bob@127.0.0.1:{peer.port}")
    invite = await peer.next_request("INVITE")
    text, _ = sdp.answer(sdp.parse(invite.body.decode()), "127.0.0.1", 30000, ("PCMU",))
    peer.answer(invite, 200, text.encode())
    peer.answer(invite, 200, text.encode())  # our ACK was "lost": the UAS retransmits its 200
    acks = [await peer.next_request("ACK"), await peer.next_request("ACK")]
    await asyncio.wait_for(task, WAIT)
    assert acks[0].serialize() == acks[1].serialize(), "the same ACK again"
    assert acks[0].cseq.number == 1 and acks[0].top_via.branch != invite.top_via.branch
    assert uac_rec.names.count("answered") == 1, uac_rec.events


async def test_no_ack_for_the_200_ends_the_call(raw_peer: RawPeer) -> None:
    """A caller that never ACKs: after 64*T1 the callee leg gives up with a BYE (RFC 3261 §13.3.1.4)."""
    bench, peer = raw_peer.bench, raw_peer
    peer.send(peer.invite(bench.b.port))
    uas, uas_rec = await bench.uas()
    ok = await peer.next(200)
    assert ok.to.tag == uas.local_tag
    assert await uas_rec.wait("ended", timeout=64 * T1 + WAIT) == ("ended", "system", "ack_timeout")
    bye = await peer.next_request("BYE")
    assert bye.to.tag == peer.tag and bye.from_.tag == uas.local_tag
    assert len([r for r in peer.responses if r.status == 200]) > 3, "the 200 was retransmitted meanwhile"


async def test_an_answer_crossing_our_cancel_is_acked_and_hung_up(raw_peer: RawPeer) -> None:
    bench, peer = raw_peer.bench, raw_peer
    uac, uac_rec, task = bench.dial(f"sip:bob@127.0.0.1:{peer.port}")
    invite = await peer.next_request("INVITE")
    peer.answer(invite, 100)
    peer.answer(invite, 180)
    await uac_rec.wait("ringing")
    uac.hangup()
    cancel = await peer.next_request("CANCEL")
    assert cancel.top_via.branch == invite.top_via.branch and cancel.cseq.number == invite.cseq.number
    assert cancel.headers.get("To") == invite.headers.get("To"), "the CANCEL's To is the INVITE's (no tag)"
    peer.answer(cancel, 200)
    text, _ = sdp.answer(sdp.parse(invite.body.decode()), "127.0.0.1", 30000, ("PCMU",))
    peer.answer(invite, 200, text.encode())  # the callee answered before it saw the CANCEL
    ack = await peer.next_request("ACK")
    assert ack.to.tag == "uastag" and ack.cseq.number == invite.cseq.number
    bye = await peer.next_request("BYE")
    assert bye.to.tag == "uastag" and bye.call_id == invite.call_id and bye.cseq.number > invite.cseq.number
    peer.answer(bye, 200)
    await asyncio.wait_for(task, WAIT)
    assert uac_rec.names == ["ringing"] and uac.state == "ended"


@pytest.mark.parametrize("steps", [0, 1])  # 0: before the DNS step, 1: while the RTP port opens
async def test_hangup_before_the_invite_leaves_sends_nothing(raw_peer: RawPeer, steps: int) -> None:
    """`hangup` while dial still resolves the callee or opens its RTP port: no INVITE ever leaves (an
    INVITE sent after the hangup would ring a phone nobody is on), and dial returns at once."""
    bench, peer = raw_peer.bench, raw_peer
    uac, uac_rec, task = bench.dial(f"sip:bob@127.0.0.1:{peer.port}", timeout=30)
    for _ in range(steps):  # let dial run up to its next wait
        await asyncio.sleep(0)
    assert uac._invite is None, "the INVITE left before the hangup: this case is another test's"
    uac.hangup()
    await asyncio.wait_for(task, WAIT)
    assert uac.state == "ended" and uac.rtp is None and uac_rec.events == []
    with pytest.raises(TimeoutError):
        await peer.next_request("INVITE", timeout=10 * T1)


async def test_hangup_before_any_provisional_cancels_when_one_comes(raw_peer: RawPeer) -> None:
    """RFC 3261 §9.1: no CANCEL before a provisional response; it goes as soon as one arrives."""
    bench, peer = raw_peer.bench, raw_peer
    uac, uac_rec, task = bench.dial(f"sip:bob@127.0.0.1:{peer.port}", timeout=30)
    invite = await peer.next_request("INVITE")
    uac.hangup()
    await asyncio.wait_for(task, WAIT)  # over for the caller at once
    await peer.next_request("INVITE")  # retransmitted after T1, then 2*T1: time for a wrong CANCEL to show
    await peer.next_request("INVITE")
    assert [r.method for r in peer.requests] == ["INVITE"] * 3
    peer.answer(invite, 180)
    cancel = await peer.next_request("CANCEL", timeout=1.0)
    assert cancel.top_via.branch == invite.top_via.branch and cancel.cseq.number == invite.cseq.number
    peer.answer(cancel, 200)
    peer.answer(invite, 487)
    ack = await peer.next_request("ACK")
    assert ack.top_via.branch == invite.top_via.branch, "the 487 is ACKed by the INVITE's transaction"
    assert uac_rec.events == [], "no ringing and no failure for a call the app hung up"


async def connected_to(peer: RawPeer) -> tuple[SipLeg, Recorder, Request]:
    """A call from the bench's caller to the raw peer, answered and ACKed; the INVITE."""
    uac, uac_rec, task = peer.bench.dial(f"sip:bob@127.0.0.1:{peer.port}")
    invite = await peer.next_request("INVITE")
    text, _ = sdp.answer(sdp.parse(invite.body.decode()), "127.0.0.1", 30000, ("PCMU",))
    peer.answer(invite, 200, text.encode())
    await peer.next_request("ACK")
    await asyncio.wait_for(task, WAIT)
    return uac, uac_rec, invite


async def test_message_goes_in_the_dialog_with_its_headers_and_a_refusal_is_returned(
    raw_peer: RawPeer,
) -> None:
    uac, _, invite = await connected_to(raw_peer)
    sent = asyncio.ensure_future(uac.message("hi there", "text/plain;charset=utf-8", [("X-Order", "42")]))
    message = await raw_peer.next_request("MESSAGE")
    assert message.call_id == invite.call_id and message.to.tag == "uastag"
    assert message.from_.tag == uac.local_tag and message.cseq.number > invite.cseq.number
    assert str(message.uri) == f"sip:bob@127.0.0.1:{raw_peer.port}", "to the peer's Contact"
    assert message.headers.get("Content-Type") == "text/plain;charset=utf-8"
    assert message.headers.get("X-Order") == "42" and message.body == b"hi there"
    raw_peer.answer(message, 415)
    resp = await asyncio.wait_for(sent, WAIT)
    assert resp.status == 415


async def test_message_nobody_answers_ends_in_a_408(raw_peer: RawPeer) -> None:
    uac, _, _ = await connected_to(raw_peer)
    resp = await asyncio.wait_for(uac.message("anyone?", "text/plain"), 64 * T1 + WAIT)
    assert resp.status == 408
    assert len([r for r in raw_peer.requests if r.method == "MESSAGE"]) > 1, "retransmitted meanwhile"


async def test_bye_carries_the_headers_of_the_hangup(raw_peer: RawPeer) -> None:
    uac, _, _ = await connected_to(raw_peer)
    uac.hangup([("X-Hangup-Reason", "done"), ("Reason", 'Q.850;cause=16;text="Normal call clearing"')])
    bye = await raw_peer.next_request("BYE")
    assert bye.headers.get("X-Hangup-Reason") == "done"
    assert bye.headers.get("Reason") == 'Q.850;cause=16;text="Normal call clearing"'
    assert bye.headers.count("Via") == 1 and bye.headers.count("Call-ID") == 1
