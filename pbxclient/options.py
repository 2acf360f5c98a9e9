"""The options of `invite`, `accept`, `tts` and `refer` (RustPBX's `CallOption` and its parts).

Every field is optional: `None` is left off the wire and the server's default applies. Fields are
snake_case here and camelCase on the wire, except `SipOption`'s, which RustPBX keeps in snake_case.
Credentials are kept out of `repr()`. Fields marked (active-call) or (this server) are ignored by servers
that do not know them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _secret() -> Any:
    return field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderOption:
    """Record the call. This server writes under its `RECORDER_PATH`; an empty `recorder_file` names the
    file after the call."""

    recorder_file: str | None = None
    samplerate: int | None = None
    ptime: int | str | None = None
    format: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BargeInOption:
    """This server's `vad.bargeIn`: is caller speech over the bot an interruption (`bargeIn` events);
    `act` `interrupt` lets the server pause, resume or interrupt its own track."""

    min_speech_ms: int | None = None
    ignore_words: list[str] | None = None
    resume_after_ms: int | None = None
    act: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VadOption:
    """Voice activity detection: `type` `webrtc`, `silero` or `ten`."""

    type: str | None = None
    aggressiveness: int | None = None
    samplerate: int | None = None
    speech_padding: int | None = None
    silence_padding: int | None = None
    silence_timeout: int | None = None
    voice_threshold: float | None = None
    max_buffer_duration_secs: int | None = None
    endpoint: str | None = None
    secret_key: str | None = _secret()
    secret_id: str | None = _secret()
    barge_in: BargeInOption | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptionOption:
    """Speech recognition (`option.asr`): `provider` `local` (this server), `tencent`, `voiceapi`."""

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
    """Speech synthesis (`option.tts`, a `tts` command's `option`): `provider` `local` (this server),
    `tencent`, `voiceapi`."""

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
    """SIP credentials and headers; snake_case on the wire, as RustPBX has it. `contact`, `hangup_headers`
    and `enable_srtp` are active-call's."""

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
    """End-of-utterance detection: `type` `local` (this server's silence rule), `smart_turn` (the Smart Turn
    model, with `threshold`) or `tencent`."""

    type: str | None = None
    endpoint: str | None = None
    secret_key: str | None = _secret()
    secret_id: str | None = _secret()
    timeout: int | None = None
    extra: dict[str, Any] | None = None
    threshold: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaPassOption:
    """Hand the call's audio to a bot's WebSocket (RustPBX's `mediaPass`). `dialect` (`raw` or `twilio`)
    and `hangup_on_close` are this server's."""

    url: str = field(repr=False)  # may carry the bot's token
    input_sample_rate: int | None = None
    output_sample_rate: int | None = None
    packet_size: int | None = None
    ptime: int | None = None
    dialect: str | None = None
    hangup_on_close: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeOption:
    """(this server) The call outlives its socket for `timeout` seconds; `moh` plays to the caller meanwhile.
    A socket opened with the same id and path picks it up (`Call.reconnect`)."""

    timeout: float
    moh: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOption:
    """The option of `invite` and `accept`.

    `handshake_timeout` and `ring_timeout` are durations: RustPBX and this server read `30`, `"30s"`,
    `"500ms"`; active-call only a whole number of seconds. `ring_timeout`, `media_pass` dialects and
    `resume` are this server's; `inactivity_timeout` and `subscribe` are active-call's (served here)."""

    denoise: bool | None = None
    offer: str | None = None
    callee: str | None = None
    caller: str | None = None
    recorder: RecorderOption | None = None
    vad: VadOption | None = None
    asr: TranscriptionOption | None = None
    tts: SynthesisOption | None = None
    handshake_timeout: str | int | float | None = None
    ring_timeout: str | int | float | None = None
    enable_ipv6: bool | None = None
    sip: SipOption | None = None
    extra: dict[str, Any] | None = None
    codec: str | None = None
    eou: EouOption | None = None
    media_pass: MediaPassOption | None = None
    resume: ResumeOption | None = None
    inactivity_timeout: int | float | None = None
    subscribe: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferOption:
    """The options of a `refer` (transfer). `bypass` is RustPBX's (a SIP REFER instead of a bridged leg)."""

    denoise: bool | None = None
    timeout: int | None = None
    moh: str | None = None
    auto_hangup: bool | None = None
    bypass: bool | None = None
    asr: TranscriptionOption | None = None
    sip: SipOption | None = None
