"""Every command of the call API as a dataclass; `command_to_dict` gives its JSON object.

`Call` has a method per command with the same keyword arguments; these classes are for
`Client.send_command` (`POST /command/{id}`), for `Call.send`, and for code that builds commands ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pbxclient.options import CallOption, RecorderOption, ReferOption, SynthesisOption
from pbxclient.wire import to_wire


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """The base of every command; `NAME` is its `command` on the wire."""

    NAME: ClassVar[str] = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Invite(Command):
    """Place the call (`/call`: answered at once; `/call/webrtc`: `option.offer` is the SDP offer;
    `/call/sip`: dial `option.callee`)."""

    NAME: ClassVar[str] = "invite"
    option: CallOption = field(default_factory=CallOption)


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept(Command):
    """Answer an inbound SIP call."""

    NAME: ClassVar[str] = "accept"
    option: CallOption = field(default_factory=CallOption)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject(Command):
    """Refuse an inbound SIP call with a SIP status `code` (default 603)."""

    NAME: ClassVar[str] = "reject"
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ringing(Command):
    """Ring an inbound SIP call (180, or 183 with early media / a ringtone)."""

    NAME: ClassVar[str] = "ringing"
    recorder: RecorderOption | None = None
    early_media: bool | None = None
    ringtone: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate(Command):
    """Trickle ICE candidates (RustPBX's form; active-call only reads `addIceCandidate`)."""

    NAME: ClassVar[str] = "candidate"
    candidates: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddIceCandidate(Command):
    """Trickle one ICE candidate, as a browser's `icecandidate` event gives it."""

    NAME: ClassVar[str] = "addIceCandidate"
    candidate: str
    sdp_mid: str | None = None
    sdp_m_line_index: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Tts(Command):
    """Speak `text`. Same `play_id` as the live track: appended to it; `streaming`: the track stays open
    until `end_of_stream`; `base64`: `text` is base64 s16le PCM; `cache_key` names it in the cache."""

    NAME: ClassVar[str] = "tts"
    text: str
    speaker: str | None = None
    play_id: str | None = None
    auto_hangup: bool | None = None
    streaming: bool | None = None
    end_of_stream: bool | None = None
    wait_input_timeout: int | None = None
    option: SynthesisOption | None = None
    base64: bool | None = None
    cache_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Play(Command):
    """Play an audio file (URL or path). `offset_ms` (active-call's) starts that far into it."""

    NAME: ClassVar[str] = "play"
    url: str
    play_id: str | None = None
    auto_hangup: bool | None = None
    wait_input_timeout: int | None = None
    offset_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Interrupt(Command):
    """Stop what plays; `graceful` lets the TTS segment being spoken finish."""

    NAME: ClassVar[str] = "interrupt"
    graceful: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause(Command):
    NAME: ClassVar[str] = "pause"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume(Command):
    """Resume paused playback (not the socket: that is `Call.reconnect`)."""

    NAME: ClassVar[str] = "resume"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hangup(Command):
    """End the call. `headers` (active-call's) go on a SIP BYE; `refer: True` (active-call's) ends only
    the transfer leg."""

    NAME: ClassVar[str] = "hangup"
    reason: str | None = None
    initiator: str | None = None
    headers: dict[str, str] | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Refer(Command):
    """Transfer the call to `target` (RustPBX) or `callee` (active-call's spelling)."""

    NAME: ClassVar[str] = "refer"
    target: str | None = None
    caller: str | None = None
    callee: str | None = None
    options: ReferOption | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mute(Command):
    """Mute a track: the call id (the caller), the server-side track, or both when `track_id` is None."""

    NAME: ClassVar[str] = "mute"
    track_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unmute(Command):
    NAME: ClassVar[str] = "unmute"
    track_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class History(Command):
    """Add a line to the conversation history (echoed as `addHistory`)."""

    NAME: ClassVar[str] = "history"
    speaker: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Bridge(Command):
    """(active-call) Patch the audio of this call and `target_session_id` together."""

    NAME: ClassVar[str] = "bridge"
    target_session_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Unbridge(Command):
    NAME: ClassVar[str] = "unbridge"
    target_session_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Custom(Command):
    """(active-call) Echoed back as a `custom` event; `data` is any JSON value, `None` included (sent as
    `null`)."""

    NAME: ClassVar[str] = "custom"
    data: Any = field(metadata={"keep_none": True})
    sender: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Message(Command):
    """(active-call) A SIP MESSAGE in the call's dialog."""

    NAME: ClassVar[str] = "message"
    body: str
    content_type: str | None = None
    headers: dict[str, str] | None = None


COMMANDS: dict[str, type[Command]] = {
    cls.NAME: cls
    for cls in (
        Invite,
        Accept,
        Reject,
        Ringing,
        Candidate,
        AddIceCandidate,
        Tts,
        Play,
        Interrupt,
        Pause,
        Resume,
        Hangup,
        Refer,
        Mute,
        Unmute,
        History,
        Bridge,
        Unbridge,
        Custom,
        Message,
    )
}


def command_to_dict(cmd: Command) -> dict[str, Any]:
    """`{"command": <name>, ...fields in camelCase, None left out}`."""
    out: dict[str, Any] = {"command": cmd.NAME}
    out.update(to_wire(cmd))
    return out
