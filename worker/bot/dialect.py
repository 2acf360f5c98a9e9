"""The two languages a mediaPass bot speaks: what the owner sends it, and what it makes of the bot's messages.

`RawDialect` is RustPBX's mediaPass: binary s16le PCM both ways, the caller's audio in packets of exactly
`packetSize` bytes at `outputSampleRate`, the bot's at `inputSampleRate` in messages of any length.
`TwilioDialect` is Twilio's Media Streams protocol (JSON text messages, base64 μ-law at 8 kHz in 20 ms
chunks), so a bot written for Twilio serves these calls unchanged.

Both are pure: audio and messages in, messages and `BotAudio`/`BotMark`/`BotClear` out; the link does the I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from common.protocol import MediaPassOption
from worker.media import g711
from worker.media.resample import Downsampler2x, RateConverter, Upsampler2x

DEFAULT_RATE = 16000
# Twilio's account id is not ours to know; bots read it only to call Twilio's REST API.
ACCOUNT_SID = "AC" + "0" * 32
ULAW_CHUNK = 160  # 20 ms of 8 kHz μ-law: what Twilio sends per media message
# A caller audio clock this far (ms) behind the wall clock (the caller sent nothing for a while) is moved up.
MAX_CLOCK_LAG_MS = 200

Message = str | bytes


@dataclass(frozen=True, slots=True)
class BotAudio:
    pcm: np.ndarray  # 16 kHz int16


@dataclass(frozen=True, slots=True)
class BotMark:
    name: str


@dataclass(frozen=True, slots=True)
class BotClear:
    pass


BotAction = BotAudio | BotMark | BotClear


class BadBotMessage(ValueError):
    """A message from the bot that means nothing in its dialect (reported once, then ignored)."""


class Dialect(Protocol):
    name: str

    def url(self, base: str) -> str: ...
    def opened(self) -> list[Message]: ...
    def started(self, now_ms: int) -> list[Message]: ...
    def caller_audio(self, pcm: np.ndarray, now_ms: int) -> list[Message]: ...
    def digit(self, digit: str) -> list[Message]: ...
    def mark(self, name: str) -> list[Message]: ...
    def stopped(self) -> list[Message]: ...
    def decode(self, data: str | bytes) -> list[BotAction]: ...


class _Resampler(Protocol):
    def process(self, x: np.ndarray) -> np.ndarray: ...


class _Same:
    def process(self, x: np.ndarray) -> np.ndarray:
        return x


def resampler(src: int, dst: int) -> _Resampler:
    """Streaming rate conversion: the 31-tap 2× filters between 8 and 16 kHz, libswresample otherwise."""
    if src == dst:
        return _Same()
    if (src, dst) == (16000, 8000):
        return Downsampler2x()
    if (src, dst) == (8000, 16000):
        return Upsampler2x()
    return RateConverter(src, dst)


def make_dialect(option: MediaPassOption, call_id: str, extra: dict[str, Any] | None) -> Dialect:
    if (option.dialect or "raw").lower() == "twilio":
        return TwilioDialect(call_id, extra)
    return RawDialect(option)


class RawDialect:
    name = "raw"

    def __init__(self, option: MediaPassOption) -> None:
        self.in_rate = option.input_sample_rate or DEFAULT_RATE
        self.out_rate = option.output_sample_rate or DEFAULT_RATE
        # 20 ms at the bot's rate unless the option says otherwise (RustPBX's code defaults to 3200 bytes).
        self.packet_size = option.packet_size or self.out_rate // 50 * 2
        self._to_bot = resampler(DEFAULT_RATE, self.out_rate)
        self._from_bot = resampler(self.in_rate, DEFAULT_RATE)
        self._out = bytearray()
        self._odd = b""  # a byte of a sample split between two bot messages

    def url(self, base: str) -> str:
        joiner = "&" if "?" in base else "?"
        return f"{base}{joiner}sample_rate={self.out_rate}&packet_size={self.packet_size}"

    def opened(self) -> list[Message]:
        return []

    def started(self, now_ms: int) -> list[Message]:
        return []

    def caller_audio(self, pcm: np.ndarray, now_ms: int) -> list[Message]:
        self._out += self._to_bot.process(pcm).astype("<i2", copy=False).tobytes()
        size = self.packet_size
        if len(self._out) < size:
            return []
        n = len(self._out) // size * size
        packets: list[Message] = [bytes(self._out[i : i + size]) for i in range(0, n, size)]
        del self._out[:n]
        return packets

    def digit(self, digit: str) -> list[Message]:
        return []  # raw PCM has no way to say it; the call's client still gets its `dtmf` event

    def mark(self, name: str) -> list[Message]:
        return []

    def stopped(self) -> list[Message]:
        return []

    def decode(self, data: str | bytes) -> list[BotAction]:
        if isinstance(data, str):
            raise BadBotMessage("a raw mediaPass bot sends binary PCM; a text message was ignored")
        raw = self._odd + data
        usable = len(raw) - len(raw) % 2
        self._odd = raw[usable:]
        if not usable:
            return []
        pcm = np.frombuffer(raw[:usable], dtype="<i2").astype(np.int16)
        out = self._from_bot.process(pcm)
        return [BotAudio(out)] if len(out) else []


class TwilioDialect:
    name = "twilio"

    def __init__(self, call_id: str, extra: dict[str, Any] | None) -> None:
        self.call_id = call_id
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.custom = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()}
        self._seq = 0
        self._chunk = 0
        self._start_ms: int | None = None
        self._clock_ms = 0  # stream time of the next chunk's first sample
        self._down = Downsampler2x()
        self._up = Upsampler2x()
        self._ulaw = bytearray()

    def _message(self, event: str, **body: Any) -> str:
        self._seq += 1
        return json.dumps(
            {"event": event, "sequenceNumber": str(self._seq), **body, "streamSid": self.stream_sid},
            separators=(",", ":"),
        )

    def url(self, base: str) -> str:
        return base

    def opened(self) -> list[Message]:
        return [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})]

    def started(self, now_ms: int) -> list[Message]:
        self._start_ms = now_ms
        start = {
            "accountSid": ACCOUNT_SID,
            "streamSid": self.stream_sid,
            "callSid": self.call_id,
            "tracks": ["inbound"],
            "customParameters": self.custom,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        return [self._message("start", start=start)]

    def caller_audio(self, pcm: np.ndarray, now_ms: int) -> list[Message]:
        if self._start_ms is None:
            return []
        if not self._ulaw:
            # Chunks are stamped on the caller's audio clock, kept within reach of the wall clock.
            behind = now_ms - self._start_ms - len(pcm) // 16 - self._clock_ms
            if behind > MAX_CLOCK_LAG_MS:
                self._clock_ms += behind
        self._ulaw += g711.ulaw_encode(self._down.process(pcm))
        out: list[Message] = []
        while len(self._ulaw) >= ULAW_CHUNK:
            payload = base64.b64encode(bytes(self._ulaw[:ULAW_CHUNK])).decode("ascii")
            del self._ulaw[:ULAW_CHUNK]
            self._chunk += 1
            media = {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(self._clock_ms),
                "payload": payload,
            }
            self._clock_ms += 20
            out.append(self._message("media", media=media))
        return out

    def digit(self, digit: str) -> list[Message]:
        return [self._message("dtmf", dtmf={"track": "inbound_track", "digit": digit})]

    def mark(self, name: str) -> list[Message]:
        return [self._message("mark", mark={"name": name})]

    def stopped(self) -> list[Message]:
        return [self._message("stop", stop={"accountSid": ACCOUNT_SID, "callSid": self.call_id})]

    def decode(self, data: str | bytes) -> list[BotAction]:
        if isinstance(data, bytes):
            raise BadBotMessage("a Twilio Media Streams bot sends JSON text; a binary message was ignored")
        try:
            message = json.loads(data)
        except ValueError:
            raise BadBotMessage("the bot sent text that is not JSON; it was ignored") from None
        if not isinstance(message, dict):
            raise BadBotMessage("the bot sent JSON that is not an object; it was ignored")
        event = message.get("event")
        if event == "media":
            media = message.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            if not isinstance(payload, str):
                raise BadBotMessage("a media message without media.payload was ignored")
            try:
                ulaw = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise BadBotMessage("a media message whose payload is not base64 was ignored") from None
            if not ulaw:
                return []
            return [BotAudio(self._up.process(g711.ulaw_decode(ulaw)))]
        if event == "mark":
            mark = message.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                raise BadBotMessage("a mark message without mark.name was ignored")
            return [BotMark(name)]
        if event == "clear":
            return [BotClear()]
        return []  # Twilio ignores what it does not know; so does this
