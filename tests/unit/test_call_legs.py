"""Each call type's leg (worker/call/leg.py) alone, against fake peers and a fake call: no processes, no
sockets, no sleeps."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from common import wire
from common.config import Settings
from common.protocol import CallOption, Invite, Message, Ringing
from tests.unit.callfakes import FakeCall, FakeHost, fake_services
from worker.call.leg import MAX_EARLY_AUDIO, LegHooks, WebSocketLeg
from worker.call.session import CallSession, make_leg
from worker.media.player import SILENT_FRAME
from worker.rtc.call_leg import RtcLeg
from worker.sip.call_leg import SipCall, extension_headers
from worker.sip.leg import LegError
from worker.sip.message import Headers


class Peer:
    """What a leg reported to its call besides the call's hooks."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.audio: list[np.ndarray] = []
        self.digits: list[str] = []
        self.notified: list[tuple[int, str]] = []
        self.socket: list[bytes] = []

    def hooks(self, call: FakeCall) -> LegHooks:
        async def answered(sdp: str) -> None:
            self.answers.append(sdp)

        return LegHooks(
            call=call.hooks(),
            answered=answered,
            caller_audio=self.audio.append,
            digit=self.digits.append,
            notified=lambda status, reason: self.notified.append((status, reason)),
            send_audio=self.socket.append,
        )


def tone(n: int = 320, value: int = 1000) -> np.ndarray:
    return np.full(n, value, dtype=np.int16)


# --- choosing -----------------------------------------------------------------------------------------------


def test_the_session_picks_one_leg_per_call_type() -> None:
    hooks = Peer().hooks(FakeCall())
    services = fake_services()
    assert isinstance(make_leg("websocket", hooks, services), WebSocketLeg)
    assert isinstance(make_leg("webrtc", hooks, services), RtcLeg)
    assert isinstance(make_leg("sip", hooks, services), SipCall)


async def test_only_a_websocket_invite_runs_in_line() -> None:
    invite = Invite(option=CallOption())
    for call_type, in_line in (("websocket", True), ("webrtc", False), ("sip", False)):
        session = CallSession(fake_services(), FakeHost(), "c1", call_type, "web-1", False, 0)
        assert session._is_setup(invite) is not in_line


# --- WebSocket ----------------------------------------------------------------------------------------------


async def test_websocket_audio_before_the_answer_is_heard_after_it() -> None:
    call, peer = FakeCall(), Peer()
    leg = WebSocketLeg(peer.hooks(call))
    leg.audio(tone(320, 5).tobytes())
    leg.audio(tone(160, 7).tobytes())
    assert peer.audio == []
    await leg.invite(CallOption())
    assert peer.answers == [""]
    leg.answered()
    assert [(len(a), int(a[0])) for a in peer.audio] == [(320, 5), (160, 7)]
    leg.audio(tone(320, 9).tobytes())
    assert int(peer.audio[-1][0]) == 9


def test_websocket_early_audio_past_the_buffer_is_dropped_with_one_error() -> None:
    call, peer = FakeCall(), Peer()
    leg = WebSocketLeg(peer.hooks(call))
    chunk = bytes(64 * 1024)
    for _ in range(6):
        leg.audio(chunk)
    assert [(sender, code) for sender, _, code in call.errors] == [("audio", 413)]
    assert f"{MAX_EARLY_AUDIO}-byte buffer" in call.errors[0][1]
    leg.answered()
    assert len(peer.audio) == 3  # 3 × (4 + 64 KiB) fit in 256 KiB; the rest was dropped


def test_websocket_audio_the_codec_cannot_decode_is_reported_once() -> None:
    call, peer = FakeCall(), Peer()
    leg = WebSocketLeg(peer.hooks(call))
    leg.answered()

    def decode(data: bytes) -> np.ndarray:
        raise ValueError("corrupt packet")

    leg.codec = SimpleNamespace(name="opus", decode=decode)  # type: ignore[assignment]
    leg.audio(b"\x01\x02\x03")
    leg.audio(b"\x01\x02\x03")
    assert [(sender, code) for sender, _, code in call.errors] == [("audio", 400)]
    assert peer.audio == []


def test_websocket_sends_only_what_plays_in_its_codec() -> None:
    call, peer = FakeCall(), Peer()
    leg = WebSocketLeg(peer.hooks(call))
    leg.configure(CallOption(codec="pcmu"))
    leg.send(None)
    assert peer.socket == []
    leg.send(tone())
    assert len(peer.socket) == 1 and len(peer.socket[0]) == 160  # µ-law at 8 kHz: a byte per sample


async def test_a_websocket_call_has_no_inbound_call_to_answer() -> None:
    call = FakeCall()
    leg = WebSocketLeg(Peer().hooks(call))
    assert not leg.bound and leg.sip_dialog() is None
    assert await leg.accept() is None
    assert not await leg.ringing(Ringing())
    assert not leg.reject(603, "Decline")
    await leg.candidate("candidate:1 1 udp 1 127.0.0.1 9 typ host", None, None)
    assert [sender for sender, _, _ in call.errors] == ["accept", "ringing", "reject"]


# --- WebRTC -------------------------------------------------------------------------------------------------


class FakeRtcPeer:
    def __init__(self, bad: bool = False) -> None:
        self.candidates: list[tuple[str, str | None, int | None]] = []
        self.pushed: list[np.ndarray] = []
        self.bad = bad
        self.closed = False

    async def add_candidate(self, line: str, sdp_mid: str | None = None, index: int | None = None) -> None:
        if self.bad:
            raise ValueError("not a candidate")
        self.candidates.append((line, sdp_mid, index))

    def push(self, frame: np.ndarray) -> None:
        self.pushed.append(frame)

    async def close(self) -> None:
        self.closed = True


async def test_webrtc_invite_without_an_offer_fails_the_call() -> None:
    call = FakeCall()
    leg = RtcLeg(Peer().hooks(call), Settings())
    assert not await leg.check_invite(CallOption())
    assert call.errors[0][0] == "invite" and call.errors[0][2] == 400 and "option.offer" in call.errors[0][1]
    assert call.hangups == [("failed", "system")]
    assert await leg.check_invite(CallOption(offer="v=0"))


async def test_webrtc_candidates_wait_for_the_peer_and_bad_ones_are_reported() -> None:
    call = FakeCall()
    leg = RtcLeg(Peer().hooks(call), Settings())
    await leg.candidate("early", "0", 0)
    assert leg._candidates == [("early", "0", 0)]
    peer = FakeRtcPeer()
    leg.peer = peer  # type: ignore[assignment]
    await leg.candidate("later", None, None)
    assert peer.candidates == [("later", None, None)]
    leg.peer = FakeRtcPeer(bad=True)  # type: ignore[assignment]
    await leg.candidate("junk", None, None)
    assert call.errors == [("candidate", "not a candidate", 400)]


async def test_webrtc_sends_a_frame_every_tick_once_answered_and_closes_its_peer() -> None:
    leg = RtcLeg(Peer().hooks(FakeCall()), Settings())
    peer = FakeRtcPeer()
    leg.peer = peer  # type: ignore[assignment]
    leg.send(tone())
    assert peer.pushed == []  # not answered yet
    leg.answered()
    leg.send(None)
    leg.send(tone(value=3))
    assert peer.pushed[0] is SILENT_FRAME and int(peer.pushed[1][0]) == 3
    leg.audio(b"\x00\x00")  # socket audio is not this leg's
    await leg.close()
    assert peer.closed


@pytest.mark.parametrize("call_type", ["webrtc", "sip"])
def test_the_peers_first_audio_is_media_ready_once(call_type: str) -> None:
    call, peer = FakeCall(), Peer()
    leg: Any = make_leg(call_type, peer.hooks(call), fake_services())
    assert call.events == []
    for value in (1, 2, 3):
        if call_type == "webrtc":
            leg._audio(tone(value=value))  # what the peer connection decoded
        else:
            leg.leg_audio(FakeDialog(), tone(value=value))  # what the RTP session decoded
    assert call.events == [{"event": "mediaReady", "trackId": "c1", "timestamp": call.events[0]["timestamp"]}]
    assert [int(a[0]) for a in peer.audio] == [1, 2, 3], "every frame goes on to the call"


def test_no_media_ready_on_a_websocket_call_or_an_ending_one() -> None:
    call, peer = FakeCall(), Peer()
    leg = WebSocketLeg(peer.hooks(call))
    leg.answered()
    leg.audio(tone().tobytes())
    assert len(peer.audio) == 1 and call.events == []
    ending = FakeCall(is_ending=True)
    rtc = RtcLeg(Peer().hooks(ending), Settings())
    rtc._audio(tone())
    assert ending.events == [] and rtc.first_media.seen


async def test_webrtc_peer_ending_hangs_the_call_up() -> None:
    call = FakeCall()
    leg = RtcLeg(Peer().hooks(call), Settings())
    leg._ended("media_timeout", "system")
    await asyncio.gather(*call.tasks)
    assert call.hangups == [("media_timeout", "system")]


# --- SIP ----------------------------------------------------------------------------------------------------


class FakeDialog:
    """A SIP dialog (`SipLeg`) as the SIP call leg uses it."""

    def __init__(self, role: str = "uas", state: str = "early") -> None:
        self.role = role
        self.state = state
        self.pushed: list[np.ndarray] = []
        self.rejected: list[tuple[int, str]] = []
        self.hung_up = False
        self.rang: list[bool] = []
        self.bye_headers: list[tuple[str, str]] = []
        self.messages: list[tuple[str, str, list[tuple[str, str]]]] = []
        self.answer: tuple[int, str] | LegError = (200, "OK")

    async def ringing(self, early_media: bool) -> None:
        self.rang.append(early_media)

    def push(self, frame: np.ndarray) -> None:
        self.pushed.append(frame)

    def reject(self, code: int, reason: str) -> None:
        self.rejected.append((code, reason))

    def hangup(self, headers: list[tuple[str, str]] | tuple[()] = ()) -> None:
        self.hung_up = True
        self.bye_headers = list(headers)

    def message(self, body: str, content_type: str, headers: list[tuple[str, str]]) -> asyncio.Future[Any]:
        if self.state != "confirmed":
            raise LegError("the call is not connected (no confirmed SIP dialog)", 409)
        self.messages.append((body, content_type, headers))
        if isinstance(self.answer, LegError):
            raise self.answer
        final = asyncio.get_running_loop().create_future()
        final.set_result(SimpleNamespace(status=self.answer[0], reason=self.answer[1]))
        return final


class FakeTelephony:
    def __init__(self) -> None:
        self.answered_calls: list[str] = []
        self.dropped: list[str] = []

    def answered(self, call_id: str) -> None:
        self.answered_calls.append(call_id)

    def drop(self, call_id: str) -> None:
        self.dropped.append(call_id)


async def test_sip_invite_without_telephony_fails_and_binds_nothing() -> None:
    call = FakeCall()
    leg = SipCall(Peer().hooks(call), fake_services())
    assert await leg.check_invite(CallOption(callee="sip:bob@example.com"))
    await leg.invite(CallOption(callee="sip:bob@example.com"))
    assert call.errors == [("invite", "SIP is not available in this media process", 503)]
    assert call.hangups == [("failed", "system")] and not leg.bound


async def test_sip_invite_without_a_callee_fails() -> None:
    call = FakeCall()
    leg = SipCall(Peer().hooks(call), fake_services(telephony=FakeTelephony()))
    await leg.invite(CallOption())
    assert call.errors[0][0] == "invite" and "option.callee" in call.errors[0][1]
    assert call.hangups == [("failed", "system")]
    assert leg.bound  # a second invite is refused as before
    assert not await leg.check_invite(CallOption())
    assert call.errors[-1][2] == 409


async def test_sip_leg_events_become_the_calls_events() -> None:
    call, peer = FakeCall(), Peer()
    leg = SipCall(peer.hooks(call), fake_services())
    dialog: Any = FakeDialog()
    leg.leg_ringing(dialog, True)
    leg.leg_digit(dialog, "5")
    leg.leg_audio(dialog, tone())
    leg.leg_refer(dialog, "<sip:carol@example.com>", '"Bob" <sip:bob@example.com>')
    leg.leg_refer(dialog, "sip:dave@example.com", None)
    leg.leg_message(dialog, "hello", "text/plain")
    leg.leg_message(dialog, "", None)
    leg.leg_hold(dialog, True)
    leg.leg_notify(dialog, 200, "OK")
    leg.leg_answered(dialog, "v=0 answer")
    leg.leg_failed(dialog, 408, "Request Timeout")
    await asyncio.gather(*call.tasks)
    names = [e["event"] for e in call.events]
    assert names == [
        "ringing",
        "mediaReady",
        "transferRequest",
        "transferRequest",
        "message",
        "message",
        "hold",
        "reject",
    ]
    assert call.events[0]["earlyMedia"] is True
    fields = [{k: v for k, v in e.items() if k not in ("event", "timestamp")} for e in call.events[2:7]]
    assert fields == [
        {
            "trackId": "c1",
            "target": "<sip:carol@example.com>",
            "referTo": "<sip:carol@example.com>",
            "referredBy": '"Bob" <sip:bob@example.com>',
        },
        {"trackId": "c1", "target": "sip:dave@example.com", "referTo": "sip:dave@example.com"},
        {"trackId": "c1", "body": "hello", "contentType": "text/plain"},
        {"trackId": "c1", "body": ""},
        {"trackId": "c1", "onHold": True},
    ]
    assert all(isinstance(e["timestamp"], int) for e in call.events)
    assert call.events[-1]["code"] == 408
    assert peer.digits == ["5"] and len(peer.audio) == 1 and peer.notified == [(200, "OK")]
    assert peer.answers == ["v=0 answer"] and call.hangups == [("no_answer", "callee")]


async def test_sip_inbound_call_is_answered_rejected_and_closed_through_telephony() -> None:
    call = FakeCall()
    telephony = FakeTelephony()
    leg = SipCall(Peer().hooks(call), fake_services(telephony=telephony))
    assert not leg.reject(603, "Decline")  # nothing bound yet
    dialog = FakeDialog()
    leg.leg = dialog  # type: ignore[assignment]
    leg.pending = SimpleNamespace(call_id="c1")  # type: ignore[assignment]
    assert leg.reject(486, "Busy Here")
    assert dialog.rejected == [(486, "Busy Here")] and telephony.answered_calls == ["c1"]
    leg.send(None)
    assert dialog.pushed[0] is SILENT_FRAME
    assert leg.sip_dialog() is dialog
    leg.close()
    assert dialog.hung_up and telephony.dropped == ["c1"]


async def test_the_sip_leg_keeps_when_the_call_first_rang() -> None:
    out = SipCall(Peer().hooks(FakeCall()), fake_services())
    assert out.ring_ms is None
    dialog: Any = FakeDialog(role="uac")
    out.leg_ringing(dialog, False)
    first = out.ring_ms
    out.leg_ringing(dialog, True)  # a 183 after the 180
    assert first is not None and out.ring_ms == first
    inbound = SipCall(Peer().hooks(FakeCall()), fake_services())
    inbound.leg = FakeDialog()  # type: ignore[assignment]
    assert await inbound.ringing(Ringing(early_media=True))
    assert inbound.ring_ms is not None and inbound.leg.rang == [True]  # type: ignore[attr-defined]
    for call_type in ("websocket", "webrtc"):
        assert make_leg(call_type, Peer().hooks(FakeCall()), fake_services()).ring_ms is None


def test_incoming_headers_are_the_invites_beyond_the_base_protocol() -> None:
    headers = Headers([
        ("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1"), ("From", "<sip:a@x>;tag=1"), ("To", "<sip:b@y>"),
        ("Call-ID", "c"), ("CSeq", "1 INVITE"), ("Contact", "<sip:a@10.0.0.1>"), ("Max-Forwards", "70"),
        ("Authorization", 'Digest username="a", response="secret1"'),
        ("Proxy-Authorization", 'Digest username="a", response="secret2"'),
        ("User-Agent", "phone"), ("Subject", "s"), ("Content-Type", "application/sdp"),
        ("X-Tenant", "t1"), ("x-lower", "kept as written"),
        ("P-Asserted-Identity", '"Alice" <sip:+1555@carrier>, <tel:+1555>'),
        ("Diversion", "<sip:100@pbx>"), ("Diversion", "<sip:200@pbx>"), ("x", "1800"),
    ])  # fmt: skip
    assert extension_headers(headers) == {
        "X-Tenant": "t1",
        "x-lower": "kept as written",
        "P-Asserted-Identity": '"Alice" <sip:+1555@carrier>, <tel:+1555>',
        "Diversion": "<sip:100@pbx>, <sip:200@pbx>",
        "Session-Expires": "1800",  # a compact form, by its full name
    }
    assert extension_headers(Headers([("Via", "SIP/2.0/UDP h"), ("Authorization", "Digest x")])) is None


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ((200, "OK"), None),
        ((202, "Accepted"), None),
        ((404, "Not Found"), ("command", "message: the peer refused it (404 Not Found)", 404)),
        (
            (408, "Request Timeout"),
            ("command", "message: no answer from the peer (408 Request Timeout)", 408),
        ),
        (LegError("the call is not connected", 409), ("command", "message: the call is not connected", 409)),
    ],
)
async def test_sip_message_goes_to_the_dialog_and_only_a_failure_is_reported(
    answer: tuple[int, str] | LegError, error: tuple[str, str, int] | None
) -> None:
    call = FakeCall()
    leg = SipCall(Peer().hooks(call), fake_services())
    dialog = FakeDialog(role="uac", state="confirmed")
    dialog.answer = answer
    leg.leg = dialog  # type: ignore[assignment]
    leg.message(Message(body="hi", headers={"X-Order": "42"}))
    leg.message(Message(body="{}", content_type="application/json"))
    assert len(dialog.messages) == 2, "sent at once, before the answers are awaited"
    await asyncio.gather(*call.tasks)
    assert dialog.messages == [
        ("hi", "text/plain;charset=utf-8", [("X-Order", "42")]),
        ("{}", "application/json", []),
    ]
    assert call.errors == ([] if error is None else [error, error]) and call.events == []


@pytest.mark.parametrize("state", ["calling", "early", "ended"])
async def test_sip_message_needs_a_connected_call(state: str) -> None:
    call = FakeCall()
    leg = SipCall(Peer().hooks(call), fake_services())
    leg.message(Message(body="hi"))  # no dialog at all
    leg.leg = dialog = FakeDialog(state=state)  # type: ignore[assignment]
    leg.message(Message(body="hi"))
    error = ("command", "message: the call is not connected (no confirmed SIP dialog)", 409)
    assert call.errors == [error] * 2 and call.tasks == [] and dialog.messages == []


def test_message_on_other_call_types_is_active_calls_error() -> None:
    for call_type in ("websocket", "webrtc"):
        call = FakeCall()
        leg = make_leg(call_type, Peer().hooks(call), fake_services())
        leg.message(Message(body="hi"))
        leg.bye_headers({"X-Reason": "done"})  # nothing to put them on: ignored
        assert call.errors == [("command", "message command is only supported for SIP calls", 400)]


async def test_sip_hangup_headers_go_on_the_bye() -> None:
    call = FakeCall()
    leg = SipCall(Peer().hooks(call), fake_services())
    leg.leg = dialog = FakeDialog(role="uac", state="confirmed")  # type: ignore[assignment]
    leg.bye_headers({"X-Reason": "done", "Reason": "Q.850;cause=16"})
    leg.close()
    assert dialog.hung_up and dialog.bye_headers == [("X-Reason", "done"), ("Reason", "Q.850;cause=16")]


async def test_sip_ringing_needs_an_inbound_call() -> None:
    call = FakeCall()
    leg = SipCall(Peer().hooks(call), fake_services())
    leg.leg = FakeDialog(role="uac")  # type: ignore[assignment]
    assert not await leg.ringing(Ringing())
    assert call.errors[0][0] == "ringing" and call.errors[0][2] == 400


# --- through the session ------------------------------------------------------------------------------------


async def test_a_websocket_session_answers_replays_early_audio_and_sends_frames() -> None:
    host = FakeHost()
    session = CallSession(fake_services(), host, "c1", "websocket", "web-1", False, 0)
    session.deliver(wire.PCM, tone(320, 4).tobytes())
    heard: list[np.ndarray] = []
    session.listener.feed = heard.append  # type: ignore[method-assign]
    await session._dispatch(Invite(option=CallOption()))
    events = [m["b"]["event"] for m in host.sent if m["k"] == wire.EVT]
    assert events == ["trackStart", "answer"]
    assert len(heard) == 1 and int(heard[0][0]) == 4
    session.tick()  # nothing plays: a WebSocket call sends nothing
    assert not [m for m in host.sent if m["k"] == wire.PCM]


async def test_accept_on_a_call_that_is_not_inbound_sip_is_refused() -> None:
    from common.protocol import Accept

    host = FakeHost()
    session = CallSession(fake_services(), host, "c1", "webrtc", "web-1", False, 0)
    await session._dispatch(Accept(option=CallOption()))
    errors = [m["b"] for m in host.sent if m["k"] == wire.EVT and m["b"]["event"] == "error"]
    assert [e["error"] for e in errors] == ["no pending call to accept"]


async def test_a_session_sends_message_and_hangup_headers_to_its_leg() -> None:
    from common.protocol import Hangup

    host = FakeHost()
    session = CallSession(fake_services(), host, "c1", "sip", "web-1", False, 0)
    dialog = FakeDialog(role="uac", state="confirmed")
    session.leg.leg = dialog  # type: ignore[attr-defined]
    await session._dispatch(Message(body="hi"))
    # Sent by the time the command is done (its answer is awaited beside the queue): a hangup right
    # after it cannot overtake it.
    assert dialog.messages == [("hi", "text/plain;charset=utf-8", [])]
    await session._dispatch(Hangup(headers={"X-Reason": "done"}))
    assert dialog.hung_up and dialog.bye_headers == [("X-Reason", "done")]
    events = [m["b"]["event"] for m in host.sent if m["k"] == wire.EVT]
    assert events == ["hangup"]


async def test_message_on_a_websocket_session_is_an_error_and_hangup_headers_are_ignored() -> None:
    from common.protocol import Hangup

    host = FakeHost()
    session = CallSession(fake_services(), host, "c1", "websocket", "web-1", False, 0)
    await session._dispatch(Invite(option=CallOption()))
    await session._dispatch(Message(body="hi"))
    await session._dispatch(Hangup(headers={"X-Reason": "done"}))
    sent = [m["b"] for m in host.sent if m["k"] == wire.EVT]
    assert [e["event"] for e in sent] == ["trackStart", "answer", "error", "trackEnd", "hangup"]
    assert (sent[2]["sender"], sent[2]["error"], sent[2]["code"]) == (
        "command",
        "message command is only supported for SIP calls",
        400,
    )


@pytest.mark.parametrize("call_type", ["websocket", "webrtc", "sip"])
async def test_every_leg_satisfies_the_protocol(call_type: str) -> None:
    leg = make_leg(call_type, Peer().hooks(FakeCall()), fake_services())
    members = "name answers_at_once bound check_invite configure invite accept ringing reject candidate audio"
    for member in [
        *members.split(),
        "ring_ms",
        "answered",
        "send",
        "sip_dialog",
        "message",
        "bye_headers",
        "close",
    ]:
        assert hasattr(leg, member), member
