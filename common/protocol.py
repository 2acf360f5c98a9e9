"""The WebSocket commands of the RustPBX call API, as typed, validated dataclasses.

`parse_command` is the single entry point for untrusted client text; everything after it works on these
types. Field names on the wire are camelCase (see common.schema), as in RustPBX.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from common.choices import (
    ASR_PROVIDERS,
    BARGE_IN_ACTS,
    CODECS,
    EOU_TYPES,
    MEDIA_PASS_DIALECTS,
    TTS_PROVIDERS,
    VAD_TYPES,
)
from common.errors import BadCommand
from common.events import SERVER_SIDE_TRACK
from common.redact import redact_url
from common.schema import parse_object, to_wire

MAX_TEXT_FRAME = 1 << 20
# A call id (the `id` of a call socket, of a call token): this many characters at most.
MAX_CALL_ID = 128
# Arrays and objects inside one another, at most (serde_json's limit in RustPBX is 128; a real command has
# 4). Deeper values would overflow the recursion of msgpack (512) or Python before they reached the owner.
MAX_DEPTH = 32
# What msgpack can carry between processes: a larger integer would fail there, not here.
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Call types whose audio never crosses the client's socket (SDP negotiates it with the peer): `option.codec`
# describes socket audio, so there it means nothing and is not checked, as RustPBX ignores it.
SDP_CALL_TYPES = frozenset({"webrtc", "sip"})
DEFAULT_HANDSHAKE_TIMEOUT = 15.0
DEFAULT_RING_TIMEOUT = 60.0
# The longest a call may wait for its app to reconnect (option.resume.timeout, s).
MAX_RESUME_TIMEOUT = 3600.0


def valid_call_id(value: str) -> bool:
    """Whether `value` can name a call: 1 to MAX_CALL_ID printable characters without spaces."""
    return 0 < len(value) <= MAX_CALL_ID and value.isprintable() and not any(c.isspace() for c in value)


def server_track(params: dict[str, Any]) -> str:
    """The trackId of a call's server-side track from its dispatch params (or an `attach`): the socket's
    `serverSideTrack` as its frontend checked it, else `server-side-track`."""
    value = params.get("serverSideTrack")
    return value if isinstance(value, str) and valid_call_id(value) else SERVER_SIDE_TRACK


def _secret() -> Any:
    """A credential: optional on the wire and never shown by repr()."""
    return field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderOption:
    recorder_file: str | None = None
    samplerate: int | None = None
    ptime: int | str | None = None
    format: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BargeInOption:
    """Ours (`vad.bargeIn`): is caller speech over the server-side track an interruption?
    (worker/call/bargein.py)"""

    min_speech_ms: int | None = None
    ignore_words: list[str] | None = None
    resume_after_ms: int | None = None
    act: str | None = None  # event (default) | interrupt


@dataclass(frozen=True, slots=True, kw_only=True)
class VadOption:
    type: str | None = None
    aggressiveness: int | None = None
    samplerate: int | None = None
    speech_padding: int | None = None
    silence_padding: int | None = None
    silence_timeout: int | None = None
    voice_threshold: float | None = None
    max_buffer_duration_secs: int | None = None
    barge_in: BargeInOption | None = None
    endpoint: str | None = None
    secret_key: str | None = _secret()
    secret_id: str | None = _secret()


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptionOption:
    provider: str | None = None
    model: str | None = None
    language: str | None = None
    app_id: str | None = None
    secret_id: str | None = _secret()
    secret_key: str | None = _secret()
    model_type: str | None = None
    buffer_size: int | None = None
    samplerate: int | None = None
    endpoint: str | None = None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthesisOption:
    samplerate: int | None = None
    provider: str | None = None
    speed: float | None = None
    app_id: str | None = None
    secret_id: str | None = _secret()
    secret_key: str | None = _secret()
    volume: int | None = None
    speaker: str | None = None
    codec: str | None = None
    subtitle: bool | None = None
    emotion: str | None = None
    endpoint: str | None = None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SipOption:
    WIRE_CASE = "snake"
    username: str | None = None
    password: str | None = _secret()
    realm: str | None = None
    contact: str | None = None
    headers: dict[str, str] | None = None
    hangup_headers: dict[str, str] | None = None
    enable_srtp: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EouOption:
    type: str | None = None
    endpoint: str | None = None
    secret_key: str | None = field(default=None, repr=False, metadata={"aliases": ("apiKey",)})
    secret_id: str | None = _secret()
    timeout: int | None = None
    extra: dict[str, Any] | None = None
    # smart_turn: the probability from which the model's verdict is "complete" (0-1, default 0.5).
    threshold: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaPassOption:
    """RustPBX's `mediaPass`: the call's audio to and from a bot's WebSocket (worker/bot)."""

    url: str = field(repr=False)  # may carry the bot's token
    input_sample_rate: int | None = None
    output_sample_rate: int | None = None
    packet_size: int | None = None
    ptime: int | None = None
    dialect: str | None = None  # ours: "raw" (RustPBX's, the default) or "twilio" (Media Streams)
    hangup_on_close: bool | None = None  # ours: false keeps the call up when the bot goes away


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeOption:
    """Ours: the call outlives its app socket for `timeout` s (worker/call/resume.py); `moh` plays to the
    caller meanwhile, once nothing else does."""

    timeout: float
    moh: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOption:
    denoise: bool | None = None
    offer: str | None = None
    callee: str | None = None
    caller: str | None = None
    recorder: RecorderOption | None = None
    vad: VadOption | None = None
    asr: TranscriptionOption | None = None
    tts: SynthesisOption | None = None
    handshake_timeout: str | int | float | None = None
    ring_timeout: str | int | float | None = None  # ours: how long an outbound SIP call may ring
    enable_ipv6: bool | None = None
    sip: SipOption | None = None
    extra: dict[str, Any] | None = None
    codec: str | None = None
    eou: EouOption | None = None
    media_pass: MediaPassOption | None = None
    resume: ResumeOption | None = None
    # active-call's: seconds without caller audio after which the call ends (0 or absent: never).
    inactivity_timeout: int | float | None = None
    subscribe: bool | None = None  # active-call's: the call's audio mirrored to the socket (SIP, WebRTC)

    def handshake_seconds(self) -> float:
        return parse_duration(self.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT)

    def ring_seconds(self) -> float:
        """How long an outbound SIP INVITE waits for its answer: `ringTimeout`; else `handshakeTimeout`,
        which this server read as the ring timeout before `ringTimeout` existed (kept for its clients);
        else 60 s. `ringTimeout` wins when both are given."""
        if self.ring_timeout is not None:
            return parse_duration(self.ring_timeout, DEFAULT_RING_TIMEOUT)
        return parse_duration(self.handshake_timeout, DEFAULT_RING_TIMEOUT)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferOption:
    denoise: bool | None = None
    timeout: int | None = None
    moh: str | None = None
    auto_hangup: bool | None = None
    bypass: bool | None = None
    asr: TranscriptionOption | None = None
    sip: SipOption | None = None


# --- commands -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Invite:
    option: CallOption = field(default_factory=CallOption)


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    option: CallOption = field(default_factory=CallOption)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject:
    reason: str
    code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ringing:
    recorder: RecorderOption | None = None
    early_media: bool | None = None
    ringtone: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    candidates: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddIceCandidate:
    """RustPBX's trickle ICE command (AC-M): one candidate, as the browser's `icecandidate` event gives it."""

    candidate: str
    sdp_mid: str | None = None
    sdp_m_line_index: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Tts:
    text: str
    speaker: str | None = None
    play_id: str | None = None
    auto_hangup: bool | None = None
    streaming: bool | None = None
    end_of_stream: bool | None = field(default=None, metadata={"aliases": ("end_of_stream",)})
    wait_input_timeout: int | None = None
    option: SynthesisOption | None = None
    base64: bool | None = None
    cache_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Play:
    url: str
    play_id: str | None = None
    auto_hangup: bool | None = None
    wait_input_timeout: int | None = None
    offset_ms: int | None = None  # active-call's: start this far into the file


@dataclass(frozen=True, slots=True, kw_only=True)
class Interrupt:
    graceful: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Hangup:
    reason: str | None = None
    initiator: str | None = None
    headers: dict[str, str] | None = None  # active-call's: extra headers on a SIP call's BYE
    refer: bool | None = None  # active-call's: hang up only the transfer leg (`refer`); the call goes on


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """active-call's `message`: a SIP MESSAGE (RFC 3428) in the call's dialog."""

    body: str
    content_type: str | None = None
    headers: dict[str, str] | None = None
    refer: bool | None = None  # active-call's MESSAGE on the transfer leg: refused (not served here)


@dataclass(frozen=True, slots=True, kw_only=True)
class Refer:
    target: str | None = None
    caller: str | None = None
    callee: str | None = None
    options: ReferOption | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mute:
    track_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unmute:
    track_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    speaker: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Bridge:
    """active-call's media-only patch: each caller hears the other (worker/call/bridge.py)."""

    target_session_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Unbridge:
    target_session_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Custom:
    """active-call's `custom`: `data` (any JSON, null included, but present) is echoed as a `custom` event."""

    data: Any
    sender: str | None = None


Command = (
    Invite
    | Accept
    | Reject
    | Ringing
    | Candidate
    | AddIceCandidate
    | Tts
    | Play
    | Interrupt
    | Pause
    | Resume
    | Hangup
    | Refer
    | Mute
    | Unmute
    | History
    | Bridge
    | Unbridge
    | Custom
    | Message
)

COMMANDS: dict[str, type] = {
    "invite": Invite,
    "accept": Accept,
    "reject": Reject,
    "ringing": Ringing,
    "candidate": Candidate,
    "addIceCandidate": AddIceCandidate,
    "tts": Tts,
    "play": Play,
    "interrupt": Interrupt,
    "pause": Pause,
    "resume": Resume,
    "hangup": Hangup,
    "refer": Refer,
    "mute": Mute,
    "unmute": Unmute,
    "history": History,
    "bridge": Bridge,
    "unbridge": Unbridge,
    "custom": Custom,
    "message": Message,
}
NAMES: dict[type, str] = {cls: name for name, cls in COMMANDS.items()}


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _not_json(name: str) -> Any:
    # RFC 8259 has no NaN or Infinity; json.loads would take them and every JSON writer after it refuse them.
    raise ValueError(f"{name} is not a JSON value")


def parse_command(text: str | bytes, call_type: str = "websocket") -> Command:
    """Parse one client text frame of a `call_type` call into a command, or raise BadCommand naming what is
    wrong."""
    if len(text) > MAX_TEXT_FRAME:
        raise BadCommand(f"text frame of {len(text)} bytes exceeds the {MAX_TEXT_FRAME}-byte limit")
    try:
        data = json.loads(text, parse_float=_finite, parse_constant=_not_json)
    except RecursionError:
        raise BadCommand(f"invalid JSON: nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCommand(f"invalid JSON: {exc}") from None
    return command_from_dict(data, call_type)


def _check_values(data: Any) -> None:
    """Refuse what JSON can say but the rest of the way cannot carry: nesting beyond MAX_DEPTH, lone UTF-16
    surrogates (`"\\ud800"`: no UTF-8 for them, so no event, dump line or msgpack message could hold them),
    integers beyond 64 bits and non-finite numbers. Iterative, so no depth overflows it."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                raise BadCommand(f"{path or 'command'}: a lone UTF-16 surrogate is not text")
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                raise BadCommand(f"{path or 'command'}: integer out of range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise BadCommand(f"{path or 'command'}: number out of range")
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise BadCommand(f"{path or 'command'}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, list):
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
                continue
            for k, v in value.items():
                if not isinstance(k, str):
                    raise BadCommand(f"{path or 'command'}: object keys must be strings")
                where = f"{path}.{k}" if path else k
                if not k.isascii() and _SURROGATE.search(k):
                    raise BadCommand(f"{path or 'command'}: a key holds a lone UTF-16 surrogate")
                stack.append((v, where, depth + 1))
        else:
            raise BadCommand(f"{path or 'command'}: {type(value).__name__} is not a JSON value")


def command_from_dict(data: Any, call_type: str = "websocket") -> Command:
    if not isinstance(data, dict):
        raise BadCommand("a command must be a JSON object")
    _check_values(data)
    name = data.get("command")
    if not isinstance(name, str):
        raise BadCommand(
            "command: required field is missing" if name is None else "command: expected a string"
        )
    cls = COMMANDS.get(name)
    if cls is None:
        raise BadCommand(f"unknown command {name!r}")
    cmd: Command = parse_object(cls, data)
    _check(cmd, call_type)
    return cmd


def _check(cmd: Any, call_type: str) -> None:
    """Rules that go beyond field types."""
    if isinstance(cmd, Invite | Accept):
        codec = cmd.option.codec
        if codec is not None and call_type not in SDP_CALL_TYPES and codec.lower() not in CODECS:
            raise BadCommand(
                f"option.codec: unsupported codec {codec!r} (expected one of {', '.join(CODECS)})"
            )
        try:
            cmd.option.handshake_seconds()
        except ValueError as exc:
            raise BadCommand(f"option.handshakeTimeout: {exc}") from None
        try:
            ring = cmd.option.ring_seconds()
        except ValueError as exc:
            raise BadCommand(f"option.ringTimeout: {exc}") from None
        if cmd.option.ring_timeout is not None and ring <= 0:
            raise BadCommand("option.ringTimeout: must be more than 0 s")
        inactivity = cmd.option.inactivity_timeout
        if inactivity is not None and inactivity < 0:
            raise BadCommand("option.inactivityTimeout: must not be negative (seconds; 0 turns it off)")
        if cmd.option.media_pass is not None:
            _check_media_pass(cmd.option.media_pass)
        if cmd.option.sip is not None:
            check_sip_headers(cmd.option.sip.hangup_headers, "option.sip.hangup_headers")
        resume = cmd.option.resume
        if resume is not None and not 0 < resume.timeout <= MAX_RESUME_TIMEOUT:
            raise BadCommand(f"option.resume.timeout: must be more than 0 and at most {MAX_RESUME_TIMEOUT} s")
        _check_choices(cmd.option)
    elif isinstance(cmd, Tts) and cmd.option is not None:
        _choice(cmd.option.provider, TTS_PROVIDERS, "option.provider", "provider")
    elif isinstance(cmd, Refer) and not (cmd.target or cmd.callee):
        raise BadCommand("refer: target (or callee) is required")
    elif isinstance(cmd, Refer) and cmd.options is not None and cmd.options.asr is not None:
        _choice(cmd.options.asr.provider, ASR_PROVIDERS, "options.asr.provider", "provider")
    elif isinstance(cmd, Play) and not cmd.url.strip():
        raise BadCommand("url: must not be empty")
    elif isinstance(cmd, Bridge | Unbridge) and cmd.target_session_id is not None:
        if not valid_call_id(cmd.target_session_id):
            raise BadCommand(
                f"targetSessionId: must be a call id (at most {MAX_CALL_ID} printable characters, no spaces)"
            )
    elif isinstance(cmd, Play) and cmd.offset_ms is not None and cmd.offset_ms < 0:
        raise BadCommand("offsetMs: must not be negative (ms into the file)")
    elif isinstance(cmd, Message):
        _check_message(cmd)
    elif isinstance(cmd, Hangup):
        check_sip_headers(cmd.headers, "headers")


MIN_RATE, MAX_RATE = 8000, 48000
MIN_PACKET, MAX_PACKET = 160, 65536


def _choice(value: str | None, choices: tuple[str, ...], where: str, what: str) -> None:
    if value is not None and value.lower() not in choices:
        raise BadCommand(f"{where}: unknown {what} {value!r} (expected {', '.join(choices)})")


def _check_choices(option: CallOption) -> None:
    """The names an invite's (or accept's) option picks an engine or provider by."""
    if option.vad is not None:
        _choice(option.vad.type, VAD_TYPES, "option.vad.type", "VAD type")
        barge = option.vad.barge_in
        if barge is not None:
            _choice(barge.act, BARGE_IN_ACTS, "option.vad.bargeIn.act", "act")
            for name, value in (
                ("minSpeechMs", barge.min_speech_ms),
                ("resumeAfterMs", barge.resume_after_ms),
            ):
                if value is not None and not 0 <= value <= 60_000:
                    raise BadCommand(f"option.vad.bargeIn.{name}: must be between 0 and 60000 (ms)")
    if option.asr is not None:
        _choice(option.asr.provider, ASR_PROVIDERS, "option.asr.provider", "provider")
    if option.tts is not None:
        _choice(option.tts.provider, TTS_PROVIDERS, "option.tts.provider", "provider")
    if option.eou is not None:
        _choice(option.eou.type, EOU_TYPES, "option.eou.type", "type")
        threshold = option.eou.threshold
        if threshold is not None and not 0 <= threshold <= 1:
            raise BadCommand("option.eou.threshold: must be between 0 and 1")


def _check_media_pass(mp: MediaPassOption) -> None:
    where = "option.mediaPass"
    if not re.match(r"^wss?://[^/?#\s]+", mp.url, re.IGNORECASE):
        raise BadCommand(f"{where}.url: expected a ws:// or wss:// URL")
    if mp.dialect is not None and mp.dialect.lower() not in MEDIA_PASS_DIALECTS:
        raise BadCommand(
            f"{where}.dialect: unknown dialect {mp.dialect!r} (expected {' or '.join(MEDIA_PASS_DIALECTS)})"
        )
    for name, rate in (
        ("inputSampleRate", mp.input_sample_rate),
        ("outputSampleRate", mp.output_sample_rate),
    ):
        if rate is not None and not MIN_RATE <= rate <= MAX_RATE:
            raise BadCommand(f"{where}.{name}: expected a rate from {MIN_RATE} to {MAX_RATE} Hz")
    size = mp.packet_size
    if size is not None and (not MIN_PACKET <= size <= MAX_PACKET or size % 2):
        raise BadCommand(
            f"{where}.packetSize: expected an even number of bytes from {MIN_PACKET} to {MAX_PACKET}"
        )
    if mp.ptime is not None and not 10 <= mp.ptime <= 200:
        raise BadCommand(f"{where}.ptime: expected 10 to 200 ms")


# Headers a client may not add to a SIP request the server sends in a dialog (`message.headers`,
# `hangup.headers`): the dialog, the transaction and the transport write them (RFC 3261 §8.1.1, §12.2.1.1,
# digest), and a second copy would make the request malformed or send it elsewhere. Compact forms count
# (RFC 3261 §7.3.3).
SIP_DIALOG_HEADERS = frozenset(
    {
        "via", "v", "from", "f", "to", "t", "call-id", "i", "cseq", "contact", "m", "max-forwards", "route",
        "record-route", "content-length", "l", "content-type", "c", "authorization", "proxy-authorization",
    }
)  # fmt: skip
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"  # RFC 3261 §25.1 `token`: a header name, a media type's parts
_SIP_TOKEN = re.compile(_TOKEN)
_MEDIA_TYPE = re.compile(
    rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\\\x00-\x1f]*"))*[ \t]*'
)
MAX_SIP_HEADERS = 32
MAX_SIP_HEADER = 1024  # characters of a name and its value
# A MESSAGE's body, in UTF-8 bytes. RFC 3428 §7 wants at most 1300 bytes over UDP (the stack does not move
# a large request to TCP); this only keeps a request well inside what one datagram and the stack's own
# TCP framing (64 KiB) carry.
MAX_MESSAGE_BODY = 16 * 1024
DEFAULT_MESSAGE_TYPE = "text/plain;charset=utf-8"


def _control(text: str) -> bool:
    """Whether `text` holds a control character other than a tab (CR and LF would start a new header)."""
    return any(c < " " and c != "\t" or c == "\x7f" for c in text)


def check_sip_headers(headers: dict[str, str] | None, where: str) -> None:
    """Refuse extra SIP headers a client gave that would break or redirect the request they go on:
    a name that is not a token, a header the dialog sets itself, a value with a line break or another
    control character (header injection), or too many or too long."""
    if not headers:
        return
    if len(headers) > MAX_SIP_HEADERS:
        raise BadCommand(f"{where}: at most {MAX_SIP_HEADERS} headers")
    for name, value in headers.items():
        if not _SIP_TOKEN.fullmatch(name):
            raise BadCommand(
                f"{where}: {name[:60]!r} is not a SIP header name (a token: letters, digits, -.!%*_+`'~)"
            )
        field = f"{where}.{name}"
        if name.lower() in SIP_DIALOG_HEADERS:
            raise BadCommand(f"{field}: the SIP dialog sets this header itself; it cannot be given")
        if _control(value):
            raise BadCommand(f"{field}: the value holds a line break or another control character")
        if len(name) + len(value) > MAX_SIP_HEADER:
            raise BadCommand(f"{field}: longer than {MAX_SIP_HEADER} characters")


def _check_message(cmd: Message) -> None:
    if cmd.refer:
        raise BadCommand("refer: a MESSAGE on the transfer leg is not supported (only the call's own dialog)")
    if len(cmd.body.encode("utf-8")) > MAX_MESSAGE_BODY:
        raise BadCommand(f"body: longer than {MAX_MESSAGE_BODY} bytes")
    if cmd.content_type is not None and not _MEDIA_TYPE.fullmatch(cmd.content_type):
        raise BadCommand(
            f"contentType: {cmd.content_type[:60]!r} is not a media type (type/subtype;param=value)"
        )
    check_sip_headers(cmd.headers, "headers")


def command_to_dict(cmd: Command) -> dict[str, Any]:
    """The canonical JSON form of a command (what the dump records and `/call/lists` shows)."""
    return {"command": NAMES[type(cmd)], **to_wire(cmd)}


def command_body(cmd: Command) -> dict[str, Any]:
    """A validated command as the body of a `cmd` message to the call's owner (common/wire.py): the
    dataclass itself, which msgspec packs by its fields."""
    return {"command": NAMES[type(cmd)], "args": cmd}


def decode_command(body: Any) -> Command:
    """The command in the body of a `cmd` message, by its type, without a second validation: the frontend
    validated it. Raises ValueError for a body no frontend of this version sends."""
    if not isinstance(body, dict):
        raise ValueError(f"a command body must be a map, got {type(body).__name__}")
    cls = COMMANDS.get(body.get("command"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown command {body.get('command')!r}")
    try:
        cmd: Command = msgspec.convert(body.get("args"), cls)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{body['command']}: {exc}") from None
    return cmd


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def parse_duration(value: str | int | float | None, default: float) -> float:
    """Seconds from `30`, `"30"`, `"30s"` or `"500ms"`."""
    if value is None:
        return default
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f'cannot read {value!r} as a duration (use 30, "30" or "30s")')
    number = float(m.group(1))
    if not math.isfinite(number):
        raise ValueError(f"{value[:40]!r} is out of range")
    return number / 1000 if m.group(2) == "ms" else number


SECRET_KEYS = frozenset(
    {
        "password",
        "secretKey",
        "secretId",
        "secret_key",
        "secret_id",
        "apiKey",
        "api_key",
        "token",
        "accessToken",
    }
)


def redact(value: Any) -> Any:
    """A copy of a JSON value with every secret replaced by `***`: the values of secret keys, and the
    credentials in any string (a bot's `url`, an EOU `endpoint`, a `sip:user:password@` callee; the rest of
    the string is kept)."""
    if isinstance(value, dict):
        return {k: "***" if k in SECRET_KEYS and v else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_url(value)
    return value
