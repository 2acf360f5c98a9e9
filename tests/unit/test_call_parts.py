"""A call's parts and the process's narrow interfaces, each built alone from fakes (worker/call/services.py):
the listener with fake media services, the figures and the load with a fake process, the SIP side with a fake
host. No processes, no sockets, no sleeps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from common.config import Settings
from common.headroom import LoadSample
from common.keys import Keys
from common.protocol import CallOption, VadOption
from tests.unit.callfakes import FakeCall, fake_services
from worker import metrics
from worker.call.inactivity import InactivityWatch
from worker.call.listening import CallerListener
from worker.load import MediaLoad
from worker.sip.telephony import Telephony
from worker.speech.endpoints import DEFAULT_HOSTS
from worker.urlguard import UrlGuard

# --- listening ---------------------------------------------------------------------------------------------


class Bank:
    """The process's DTMF bank: it hears a digit in any frame of loud enough audio."""

    def __init__(self) -> None:
        self.fed = 0

    def feed(self, det: Any, samples: np.ndarray, on_digit: Any) -> None:
        self.fed += 1
        if int(np.abs(samples).max()) > 10_000:
            on_digit("7")


def listener(call: FakeCall, **services: Any) -> tuple[CallerListener, list[str], list[bool]]:
    bot: list[str] = []
    inputs: list[bool] = []
    part = CallerListener(
        call.hooks(), fake_services(dtmf=Bank(), **services), lambda: inputs.append(True), bot.append
    )
    return part, bot, inputs


def test_a_key_press_is_an_event_an_input_and_goes_to_the_bot() -> None:
    call = FakeCall()
    part, bot, inputs = listener(call)
    part.feed(np.full(320, 20_000, dtype=np.int16))
    assert [(e["event"], e["digit"]) for e in call.events] == [("dtmf", "7")]
    assert bot == ["7"] and inputs == [True]


def test_a_listener_of_an_ending_call_says_nothing() -> None:
    call = FakeCall(is_ending=True)
    part, bot, inputs = listener(call)
    part.digit("1")
    assert call.events == [] and bot == [] and inputs == []


def test_quiet_audio_is_framed_for_the_bank_without_events() -> None:
    call = FakeCall()
    part, _, _ = listener(call)
    part.feed(np.zeros(480, dtype=np.int16))
    part.feed(np.zeros(160, dtype=np.int16))
    assert part.services.dtmf.fed == 2  # type: ignore[attr-defined]
    assert call.events == []


def test_an_unknown_vad_type_is_refused_naming_the_field() -> None:
    call = FakeCall()
    part, _, _ = listener(call)
    part.configure(CallOption(vad=VadOption(type="magic")))
    assert part.vad is None and not part.vad_events
    assert call.errors[0][0] == "vad" and call.errors[0][2] == 400
    assert "option.vad.type" in call.errors[0][1]


def test_a_vad_uses_the_services_batchers() -> None:
    call = FakeCall()
    silero, ten = object(), object()
    part, _, _ = listener(call, silero=silero, ten=ten)
    part.configure(CallOption(vad=VadOption(type="webrtc")))
    assert part.vad is not None and part.vad_events


# --- inactivity --------------------------------------------------------------------------------------------


class Watched:
    """An InactivityWatch on a virtual clock (ms): the events and hangups it gives, in one list."""

    def __init__(self, timeout_ms: float) -> None:
        self.clock = 0
        self.log: list[tuple[str, int]] = []
        self.watch = InactivityWatch(
            "c1", timeout_ms, self._emit, lambda r, i: self.log.append((f"HANGUP {r} {i}", self.clock)),
            now=lambda: self.clock,
        )  # fmt: skip
        self.emitted: list[dict[str, Any]] = []

    def _emit(self, event: dict[str, Any]) -> None:
        self.emitted.append(event)
        self.log.append((event["event"], self.clock))

    def run(self, ms: int, frame_every: int | None = None) -> None:
        """`ms` of 20 ms ticks; a caller frame just before each tick whose time is a multiple of
        `frame_every`."""
        for _ in range(ms // 20):
            self.clock += 20
            if frame_every is not None and self.clock % frame_every == 0:
                self.watch.heard = True
            self.watch.tick()


def test_no_caller_audio_for_the_timeout_is_inactivity_then_the_hangup() -> None:
    w = Watched(1000)
    w.run(980)
    assert w.log == [], "not a tick early"
    w.run(20)
    assert w.log == [("inactivity", 1000), ("HANGUP inactivity_timeout system", 1000)]
    assert w.emitted == [{"event": "inactivity", "trackId": "c1", "timestamp": 1000}]
    w.run(5000)
    assert len(w.log) == 2, "once"


def test_each_caller_frame_restarts_the_wait() -> None:
    w = Watched(1000)
    w.run(3000, frame_every=20)
    assert w.log == []
    w.run(5000, frame_every=900)  # a frame each 900 ms: never 1000 ms without one
    assert w.log == []
    w.run(2000)  # the last of those frames came at 7200: 1000 ms later the call ends
    assert w.log[0] == ("inactivity", 8200)


def test_a_fractional_timeout_is_kept_to_the_tick() -> None:
    w = Watched(1500.5)  # seconds on the wire: 1.5005
    w.run(1500)
    assert w.log == []
    w.run(20)
    assert w.log[0] == ("inactivity", 1520)


# --- figures -----------------------------------------------------------------------------------------------


@dataclass
class Figures:
    ticks: int = 0
    clock_restarts: int = 0
    types: list[str] = field(default_factory=list)
    cap: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    turns: dict[str, int] = field(default_factory=dict)

    def capacity(self) -> int:
        return self.cap

    def call_types(self) -> Iterable[str]:
        return self.types

    def work_dropped(self) -> Mapping[str, int]:
        return self.dropped

    def turn_decisions(self) -> Mapping[str, int]:
        return self.turns


def test_the_figures_are_read_from_the_source() -> None:
    source = Figures(
        ticks=1234,
        clock_restarts=2,
        types=["sip", "sip", "webrtc"],
        cap=40,
        dropped={"denoise": 3, "ten_vad": 0, "silero_vad": 5},
        turns={"whole": 40, "short": 7},
    )
    metrics.collect(source)
    assert metrics.CALLS_ACTIVE.labels("sip").value == 2
    assert metrics.CALLS_ACTIVE.labels("webrtc").value == 1
    assert metrics.CALLS_ACTIVE.labels("websocket").value == 0  # every type shows, at zero
    assert metrics.CALLS_CAPACITY.labels().value == 40
    assert metrics.TICKS.labels().value == 1234 and metrics.CLOCK_RESTARTS.labels().value == 2
    assert metrics.WORK_DROPPED.labels("silero_vad").value == 5
    assert metrics.TURN_DECISIONS.labels("short").value == 7
    metrics.collect(Figures())
    assert metrics.CALLS_ACTIVE.labels("sip").value == 0


# --- load --------------------------------------------------------------------------------------------------


class LoadHost:
    def __init__(self, calls: int = 0) -> None:
        self.settings = Settings(max_calls=10)
        self.proc_id = "media-test"
        self.redis: Any = None
        self.keys = Keys("t")
        self.registry: Any = None
        self.calls = calls
        self.load: MediaLoad | None = None
        self.sent: list[Any] = []

    def send(self, proc: str, message: dict[str, Any]) -> None:
        self.sent.append((proc, message))

    def call_count(self) -> int:
        return self.calls

    def capacity(self) -> int:
        assert self.load is not None
        return self.load.admission.capacity(self.calls)


def test_the_load_announces_a_change_in_admission() -> None:
    host = LoadHost(calls=3)
    changes: list[bool] = []
    load = MediaLoad(host, lambda: None, lambda: changes.append(True))
    host.load = load
    assert load.meter is not None and host.capacity() == 10
    load._sample(LoadSample(loop_busy=0.0, calls=3))
    assert changes == []  # still admitting, the same capacity
    for _ in range(3):
        load._sample(LoadSample(loop_busy=5.0, tick_ms=100.0, calls=3))
    assert changes and not load.admission.admitting
    assert host.capacity() == 3  # its calls now, while overloaded
    figures = load.figures()
    assert figures["admitting"] is False and figures["pressure"] > 1


# --- telephony ---------------------------------------------------------------------------------------------


class TelephonyHost:
    def __init__(self, calls: set[str]) -> None:
        self.settings = Settings(sip_port=0, max_calls=10)
        self.proc_id = "media-test"
        self.url_guard = UrlGuard.from_settings(self.settings, DEFAULT_HOSTS)
        self.redis: Any = None
        self.keys = Keys("t")
        self.registry: Any = SimpleNamespace()
        self.calls = calls
        self.ended: list[tuple[str, str, str]] = []

    def send(self, proc: str, message: dict[str, Any]) -> None: ...

    def call_count(self) -> int:
        return len(self.calls)

    def has_call(self, call_id: str) -> bool:
        return call_id in self.calls

    def end_call(self, call_id: str, reason: str, initiator: str) -> None:
        self.ended.append((call_id, reason, initiator))


class Pending:
    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.timer = None
        self.leg = SimpleNamespace(state="calling", rejected=[])
        self.leg.reject = lambda code, reason: self.leg.rejected.append(code)


def test_an_unanswered_inbound_call_is_refused_and_its_session_ended() -> None:
    host = TelephonyHost({"in-1"})
    telephony = Telephony(host)
    pending = Pending("in-1")
    telephony.pending["in-1"] = pending  # type: ignore[assignment]
    telephony._unanswered("in-1")
    assert pending.leg.rejected == [480]
    assert host.ended == [("in-1", "no_answer", "system")]
    assert "in-1" not in telephony.pending


def test_an_inbound_invite_past_max_calls_gets_503() -> None:
    host = TelephonyHost({f"c{i}" for i in range(10)})
    telephony = Telephony(host)
    replies: list[int] = []
    telephony.agent.reply = lambda tx, status, **kw: replies.append(status)  # type: ignore[method-assign]
    telephony._on_invite(None, None)  # type: ignore[arg-type]
    assert replies == [503]
