"""Every event of the call API as a typed object, read from the server's JSON by `parse_event`.

Each event is an `Event`: `name` is its `event` on the wire, `timestamp` its epoch milliseconds, `fields`
the JSON object as it came (every key, known or not). A known name gives its subclass (`Answer`,
`TrackEnd`, ...) with the fields as snake_case attributes; unknown keys are ignored. An unknown name, or a
known one whose fields do not have the expected types (a server of another version), gives a plain
`Event(name=..., fields=...)`: never an exception.

Fields every server sends are typed without `None` (a missing one reads as `""` or `0`); fields some
servers or some calls leave out are `| None`. Which server sends what:

- RustPBX's API document: `incoming`, `answer`, `ringing`, `hangup`, `asrFinal`, `asrDelta`, `speaking`,
  `silence`, `dtmf`, `error`; RustPBX's code adds `reject`, `trackStart`, `trackEnd`, `interruption`,
  `metrics`, `addHistory`, `eou`, `answerMachineDetection`, `other`.
- active-call adds `custom`, `inactivity`, `mediaReady`, `hold`, `transferRequest`, `message`, `binary` and
  `ping` (on `/events` only), and for agents `functionCall`, `interrupt`, `ringbackState`; and fields
  (`refer`, `isFiller`, `confidence`, `taskId`, `hangup.from`/`to`).
- This server sends all but the agent events, `answerMachineDetection`, `other`, `binary` and `ping`, and
  a `hangup` at the end of every call (RustPBX and active-call send none on `/call`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgspec

from pbxclient.wire import from_wire


@dataclass(frozen=True, kw_only=True)
class Event:
    """An event. Unknown names arrive as this class itself, known ones as a subclass."""

    LOCAL_FIELDS: ClassVar[tuple[str, ...]] = ("name", "fields")
    name: str
    timestamp: int = 0
    fields: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def get(self, key: str, default: Any = None) -> Any:
        """A field by its wire (camelCase) name."""
        return self.fields.get(key, default)


EVENTS: dict[str, type[Event]] = {}
E = TypeVar("E", bound=type[Event])


def _event(cls: E) -> E:
    EVENTS[str(cls.__dataclass_fields__["name"].default)] = cls
    return cls


@_event
@dataclass(frozen=True, kw_only=True)
class Incoming(Event):
    """An inbound SIP call waiting for `accept`/`reject` (first event on `/call/sip?id=`). `headers`
    (active-call's) are the INVITE's extension headers."""

    name: str = "incoming"
    track_id: str = ""
    caller: str = ""
    callee: str = ""
    sdp: str = ""
    headers: dict[str, str] | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Answer(Event):
    """The call is answered; `sdp` is the peer's (SIP) or the server's answer (WebRTC), empty on `/call`."""

    name: str = "answer"
    track_id: str = ""
    sdp: str = ""
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Reject(Event):
    """The call (or, with `refer`, the transfer leg) was refused."""

    name: str = "reject"
    track_id: str = ""
    reason: str = ""
    code: int | None = None
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Ringing(Event):
    name: str = "ringing"
    track_id: str = ""
    early_media: bool = False
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Hangup(Event):
    """The call ended (with `refer: True`, only its transfer leg). Times are RFC 3339 strings. `from_` and
    `to` (active-call's) are `{username, realm, source}`."""

    name: str = "hangup"
    track_id: str | None = None
    reason: str | None = None
    initiator: str | None = None
    start_time: str | None = None
    hangup_time: str | None = None
    answer_time: str | None = None
    ringing_time: str | None = None
    from_: dict[str, Any] | None = field(default=None, metadata={"wire": "from"})
    to: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class AnswerMachineDetection(Event):
    """(RustPBX)"""

    name: str = "answerMachineDetection"
    track_id: str = ""
    start_time: int = 0
    end_time: int = 0
    text: str = ""


@dataclass(frozen=True, kw_only=True)
class _Asr(Event):
    track_id: str = ""
    index: int = 0
    start_time: int | None = None
    end_time: int | None = None
    text: str = ""
    is_filler: bool | None = None
    confidence: float | None = None
    task_id: str | None = None
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class AsrFinal(_Asr):
    """A final transcript of one utterance (`index` counts them)."""

    name: str = "asrFinal"


@_event
@dataclass(frozen=True, kw_only=True)
class AsrDelta(_Asr):
    """An interim transcript."""

    name: str = "asrDelta"


@_event
@dataclass(frozen=True, kw_only=True)
class Speaking(Event):
    """The caller started speaking (VAD) at `start_time` (epoch ms)."""

    name: str = "speaking"
    track_id: str = ""
    start_time: int = 0
    is_filler: bool | None = None
    confidence: float | None = None
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Silence(Event):
    """After speech: the speech segment (`start_time`, `duration` ms); or a `waitInputTimeout` /
    `silenceTimeout` running out."""

    name: str = "silence"
    track_id: str = ""
    start_time: int = 0
    duration: int = 0
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Eou(Event):
    """End of the caller's turn."""

    name: str = "eou"
    track_id: str = ""
    completed: bool = False
    text: str | None = None
    probability: float | None = None  # smart_turn: the model's
    interrupt_point: str | None = None
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Inactivity(Event):
    """(active-call) No caller audio for `option.inactivity_timeout`: the call ends next."""

    name: str = "inactivity"
    track_id: str = ""


@_event
@dataclass(frozen=True, kw_only=True)
class MediaReady(Event):
    """(active-call) The peer's first audio arrived (WebRTC and SIP calls)."""

    name: str = "mediaReady"
    track_id: str = ""


@_event
@dataclass(frozen=True, kw_only=True)
class Dtmf(Event):
    name: str = "dtmf"
    track_id: str = ""
    digit: str = ""
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Hold(Event):
    """(active-call) The SIP peer put the call on hold (`on_hold`) or took it off."""

    name: str = "hold"
    track_id: str = ""
    on_hold: bool = False
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class TransferRequest(Event):
    """(active-call) The SIP peer sent a REFER. `target` is this server's name for `refer_to`."""

    name: str = "transferRequest"
    track_id: str = ""
    refer_to: str = ""
    referred_by: str | None = None
    target: str | None = None
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class TrackStart(Event):
    """A track started: the caller's at the answer (`track_id` = the call id), or the server-side track
    (`play`, `tts`) with its `play_id`."""

    name: str = "trackStart"
    track_id: str = ""
    play_id: str | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class TrackEnd(Event):
    """A track ended; `duration` in ms."""

    name: str = "trackEnd"
    track_id: str = ""
    duration: int = 0
    ssrc: int = 0
    play_id: str | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class BargeIn(Event):
    """This server's `vad.bargeIn` decision on caller speech over the server-side track: `decision`
    `interrupt`, `ignore` or `resume`; `reason`; `start_time` of the caller's utterance; `text` heard."""

    name: str = "bargeIn"
    track_id: str = ""
    decision: str = ""
    reason: str = ""
    start_time: int | None = None
    text: str | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Interruption(Event):
    """A TTS track was interrupted: `subtitle` the text being spoken, `current` the ms of it played,
    `total_duration` the ms synthesized."""

    name: str = "interruption"
    track_id: str = ""
    play_id: str | None = None
    subtitle: str | None = None
    position: int | None = None
    total_duration: int = 0
    current: int = 0


@_event
@dataclass(frozen=True, kw_only=True)
class Metrics(Event):
    """A measurement: `key` (`completed.tts.local`, `ttfb.asr.tencent`, ...), `duration` ms, `data`."""

    name: str = "metrics"
    key: str = ""
    duration: int = 0
    data: Any = None


@_event
@dataclass(frozen=True, kw_only=True)
class Error(Event):
    """Something failed; the call goes on unless a `hangup` follows. `sender` says what (`command`,
    `tts`, `filetrack: <url>`, ...), `code` is HTTP-like (400 a bad command, 404 no such file, 429 over a
    rate limit, ...)."""

    name: str = "error"
    track_id: str | None = None
    sender: str = ""
    error: str = ""
    code: int | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class AddHistory(Event):
    """The echo of a `history` command."""

    name: str = "addHistory"
    sender: str | None = None
    speaker: str = ""
    text: str = ""


@_event
@dataclass(frozen=True, kw_only=True)
class Custom(Event):
    """(active-call) The echo of a `custom` command."""

    name: str = "custom"
    sender: str | None = None
    data: Any = None


@_event
@dataclass(frozen=True, kw_only=True)
class Message(Event):
    """(active-call) A SIP MESSAGE received in the dialog."""

    name: str = "message"
    track_id: str = ""
    body: str = ""
    content_type: str | None = None
    refer: bool | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Other(Event):
    """(RustPBX)"""

    name: str = "other"
    track_id: str = ""
    sender: str = ""
    extra: dict[str, Any] | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Binary(Event):
    """(active-call, `/events` only) An outgoing audio frame as a list of byte values."""

    name: str = "binary"
    track_id: str = ""
    data: list[int] = field(default_factory=list, repr=False)


@_event
@dataclass(frozen=True, kw_only=True)
class Ping(Event):
    """(active-call, `/events` only)"""

    name: str = "ping"
    payload: str | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class FunctionCall(Event):
    """(active-call agents) A tool call; the function's name is `function_name` (the wire's `name`)."""

    name: str = "functionCall"
    track_id: str = ""
    call_id: str = ""
    function_name: str = field(default="", metadata={"wire": "name"})
    arguments: str = ""


@_event
@dataclass(frozen=True, kw_only=True)
class Interrupt(Event):
    """(active-call agents) A barge-in from the server's realtime agent."""

    name: str = "interrupt"
    receiver: str | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class RingbackState(Event):
    """(active-call) The line-state classifier's verdict."""

    name: str = "ringbackState"
    track_id: str = ""
    state: str = ""
    state_index: int = 0
    confidence: float = 0.0
    prev_state: str | None = None
    prev_confidence: float | None = None
    is_final: bool = False
    refer: bool | None = None


def parse_event(data: dict[str, Any]) -> Event:
    """The event in a server's JSON object (its `event` key names it)."""
    name = data.get("event")
    name = name if isinstance(name, str) else ""
    ts = data.get("timestamp")
    timestamp = ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
    cls = EVENTS.get(name)
    if cls is not None:
        try:
            event: Event = from_wire(cls, data, fields=data)
            return event
        except msgspec.ValidationError:
            pass
    return Event(name=name, timestamp=timestamp, fields=data)
