"""Tencent Cloud speech synthesis over WebSocket (provider `tencent`).

Two APIs share one signed-URL scheme (Tencent Cloud TTS, "real-time speech synthesis" and "streaming text
speech synthesis", WebSocket):

- one-shot: `wss://tts.cloud.tencent.com/stream_ws?Action=TextToStreamAudioWS&Text=...`: the whole text
  goes in the query, the service answers with binary audio frames and JSON messages (subtitles, then one
  with `final: 1`);
- streaming: `wss://tts.cloud.tencent.com/stream_wsv2?Action=TextToStreamAudioWSv2`: after the service
  says `ready: 1`, the client sends `ACTION_SYNTHESIS` messages as text arrives and `ACTION_COMPLETE` at
  the end; audio and subtitles come back meanwhile, `heartbeat: 1` messages keep the session open, and
  `final: 1` closes it.

The signature is base64(HMAC-SHA1(secretKey, "GET" + host + path + "?" + the query sorted by key, values
as they are)); the URL carries every value URL-encoded plus `Signature`. Every JSON answer has `code`
(0 = fine) and `message`; subtitle times are ms from the start of the connection's audio.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import numpy as np

from common.errors import ProviderError, ProviderRefused
from worker.speech.endpoints import TENCENT_TTS_HOST, custom_endpoint_refusal, is_default_host, split_endpoint
from worker.speech.tts import Subtitle, TtsAudio, TtsOutput, TtsProvider, TtsSubtitles
from worker.urlguard import WS, UrlRefused

log = logging.getLogger("pbx.worker.tts.tencent")

DEFAULT_HOST = TENCENT_TTS_HOST
DEFAULT_VOICE = "101001"
ONE_SHOT_PATH, ONE_SHOT_ACTION = "/stream_ws", "TextToStreamAudioWS"
STREAMING_PATH, STREAMING_ACTION = "/stream_wsv2", "TextToStreamAudioWSv2"
RATES = (8000, 16000, 24000)
CODECS = ("pcm", "mp3")
# The EmotionCategory values of the API document (only multi-emotion voices honour them).
EMOTIONS = frozenset(
    {
        "neutral",
        "sad",
        "happy",
        "angry",
        "fear",
        "news",
        "story",
        "radio",
        "poetry",
        "call",
        "sajiao",
        "disgusted",
        "amaze",
        "peaceful",
        "exciting",
        "aojiao",
        "jieshuo",
    }
)
# Query keys the client owns: overriding them through `extra` would break the signature, the protocol or
# the decoding of the audio, so such an `extra` is refused rather than half-honoured.
RESERVED = frozenset(
    {"Action", "AppId", "SecretId", "Timestamp", "Expired", "Signature", "Text", "Codec", "SampleRate"}
)

CONNECT_TIMEOUT = 5.0
READY_TIMEOUT = 10.0
# Longest silence from the service while it owes us audio (not while a stream waits for more text).
IDLE_TIMEOUT = 15.0
# An interrupt must free the connection at once: do not wait long for the service's close reply.
CLOSE_TIMEOUT = 1.0

CLOSED_EARLY = "tencent tts: the service closed the connection before the end"


def string_to_sign(host: str, path: str, params: Mapping[str, str]) -> str:
    """What the signature covers: method, host, path and the query sorted by key, values not encoded."""
    return f"GET{host}{path}?" + "&".join(f"{k}={params[k]}" for k in sorted(params))


def sign(secret_key: str, host: str, path: str, params: Mapping[str, str]) -> str:
    """The `Signature` value before URL encoding: base64 of HMAC-SHA1 over `string_to_sign`."""
    plain = string_to_sign(host, path, params)
    return base64.b64encode(hmac.new(secret_key.encode(), plain.encode(), hashlib.sha1).digest()).decode()


def _number(value: float) -> str:
    # `:g` so that 1.0 goes out as "1" and 1.5 as "1.5", the forms Tencent's own SDKs send.
    return f"{float(value):g}"


def _extra_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return value
    raise ProviderRefused(f"option.tts.extra.{key}: expected a string, a number or a boolean", 400)


class _Decoder(Protocol):
    def feed(self, data: bytes) -> np.ndarray: ...

    def flush(self) -> np.ndarray: ...


_EMPTY = np.zeros(0, dtype=np.int16)


class _PcmDecoder:
    """s16le bytes to samples. Frames need not end on a sample boundary, so an odd byte waits for the next."""

    def __init__(self) -> None:
        self._odd = b""

    def feed(self, data: bytes) -> np.ndarray:
        if self._odd:
            data = self._odd + data
        whole = len(data) & ~1
        self._odd = data[whole:]
        return np.frombuffer(data, dtype="<i2", count=whole // 2).astype(np.int16)

    def flush(self) -> np.ndarray:
        # A byte left at the very end is half a sample: nothing to play.
        self._odd = b""
        return _EMPTY


class _Mp3Decoder:
    """MP3 bytes to samples as they arrive: FFmpeg's parser finds the frames across WebSocket messages."""

    def __init__(self, rate: int) -> None:
        import av  # only MP3 sessions need FFmpeg

        self._av = av
        self._codec = av.CodecContext.create("mp3", "r")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)

    def _decode(self, packets: list[Any]) -> np.ndarray:
        chunks: list[np.ndarray] = []
        try:
            for packet in packets:
                for frame in self._codec.decode(packet):
                    for out in self._resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))
        except self._av.FFmpegError:
            raise ProviderError("tencent tts: the service sent mp3 audio that does not decode") from None
        return np.concatenate(chunks).astype(np.int16, copy=False) if chunks else _EMPTY

    def feed(self, data: bytes) -> np.ndarray:
        try:
            packets = list(self._codec.parse(data))
        except self._av.FFmpegError:
            raise ProviderError("tencent tts: the service sent mp3 audio that does not parse") from None
        return self._decode(packets)

    def flush(self) -> np.ndarray:
        try:
            packets = [*self._codec.parse(None), None]
        except self._av.FFmpegError:
            packets = [None]
        audio = self._decode(packets)
        tail = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(None)]
        return np.concatenate([audio, *tail]).astype(np.int16, copy=False) if tail else audio


def _subtitles(result: Any) -> tuple[Subtitle, ...]:
    items = result.get("subtitles") if isinstance(result, dict) else None
    if not isinstance(items, list):
        return ()
    out: list[Subtitle] = []
    try:
        for item in items:
            out.append(
                Subtitle(
                    text=str(item.get("Text") or ""),
                    begin_ms=int(item.get("BeginTime") or 0),
                    end_ms=int(item.get("EndTime") or 0),
                    begin_index=int(item.get("BeginIndex") or 0),
                    end_index=int(item.get("EndIndex") or 0),
                )
            )
    except (AttributeError, TypeError, ValueError):
        raise ProviderError("tencent tts: the service sent subtitles that do not parse") from None
    return tuple(out)


class _Reception:
    """What the messages of one connection mean: audio and subtitles to yield, readiness, the end."""

    def __init__(self, decoder: _Decoder, rate: int, scrub: Callable[[str], str]) -> None:
        self.decoder = decoder
        self.rate = rate
        self.scrub = scrub
        self.ready = False
        self.final = False
        self.samples = 0

    def _audio(self, samples: np.ndarray) -> list[TtsOutput]:
        if not len(samples):
            return []
        self.samples += len(samples)
        return [TtsAudio(samples=samples, rate=self.rate)]

    def take(self, msg: aiohttp.WSMessage) -> list[TtsOutput]:
        if msg.type == aiohttp.WSMsgType.BINARY:
            return self._audio(self.decoder.feed(msg.data))
        if msg.type == aiohttp.WSMsgType.TEXT:
            return self._text(msg.data)
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise ProviderError(self.scrub(f"tencent tts: connection error: {msg.data}"))
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            raise ProviderError(CLOSED_EARLY)
        return []

    def _text(self, text: str) -> list[TtsOutput]:
        try:
            data = json.loads(text)
        except ValueError:
            raise ProviderError("tencent tts: the service sent text that is not JSON") from None
        if not isinstance(data, dict):
            raise ProviderError("tencent tts: the service sent JSON that is not an object")
        code = data.get("code", 0)
        if code != 0:
            message = self.scrub(str(data.get("message") or "error"))
            status = code if isinstance(code, int) and code > 0 else 502
            raise ProviderRefused(f"tencent tts: the service answered {code}: {message}", status)
        if data.get("heartbeat") == 1:
            return []
        out: list[TtsOutput] = []
        subtitles = _subtitles(data.get("result"))
        if subtitles:
            out.append(TtsSubtitles(items=subtitles))
        if data.get("ready") == 1:
            self.ready = True
        if data.get("final") == 1:
            self.final = True
            out += self._audio(self.decoder.flush())
        return out


class TencentTts(TtsProvider):
    """Tencent Cloud TTS: `synthesize` over TextToStreamAudioWS, `stream` over TextToStreamAudioWSv2."""

    name = "tencent"
    native_streaming = True

    # --- the option ----------------------------------------------------------------------------------------

    def _server_credentials(self) -> bool:
        """Whether the environment's credentials may fill in the option's: only towards Tencent itself."""
        return self.context.trust_clients or is_default_host(self.option.endpoint, DEFAULT_HOST)

    def _credentials(self) -> tuple[str, str, str]:
        o, c = self.option, self.context
        if not self._server_credentials():
            return str(o.app_id or ""), o.secret_id or "", o.secret_key or ""
        return (
            str(o.app_id or c.tencent_appid or ""),
            o.secret_id or c.tencent_secret_id,
            o.secret_key or c.tencent_secret_key,
        )

    def _scrub(self, text: str) -> str:
        """Text without the credentials (library errors may quote the URL, which carries SecretId)."""
        for secret in self._credentials()[1:]:
            if secret:
                text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
        return text

    @property
    def codec(self) -> str:
        return (self.option.codec or "pcm").lower()

    def check(self) -> None:
        names = ("appId", "secretId", "secretKey")
        missing = [n for n, v in zip(names, self._credentials(), strict=True) if not v]
        if missing and not self._server_credentials():
            raise custom_endpoint_refusal("option.tts.endpoint", missing, DEFAULT_HOST)
        if missing:
            raise ProviderRefused(
                f"tencent tts: missing {', '.join(missing)} (set them in option.tts or TENCENT_APPID, "
                "TENCENT_SECRET_ID, TENCENT_SECRET_KEY)",
                400,
            )
        if not self._credentials()[0].isdigit():
            raise ProviderRefused("tencent tts: appId must be Tencent's numeric AppId", 400)
        split_endpoint(self.option.endpoint, DEFAULT_HOST, "option.tts.endpoint")
        if self.codec not in CODECS:
            raise ProviderRefused(
                f"option.tts.codec: tencent speaks {' or '.join(CODECS)}, not {self.option.codec!r}", 400
            )
        if self.rate not in RATES:
            raise ProviderRefused(
                f"option.tts.samplerate: tencent synthesizes at {', '.join(map(str, RATES))} Hz, "
                f"not {self.rate}",
                400,
            )
        emotion = self.option.emotion
        if emotion and emotion not in EMOTIONS:
            raise ProviderRefused(
                f"option.tts.emotion: tencent knows {', '.join(sorted(EMOTIONS))}, not {emotion!r}", 400
            )
        for key, value in (self.option.extra or {}).items():
            if key in RESERVED:
                raise ProviderRefused(f"option.tts.extra.{key}: set by the client, not through extra", 400)
            _extra_value(str(key), value)

    def query(self, action: str, text: str | None = None) -> dict[str, str]:
        """The query of a new connection, without the signature."""
        appid, secret_id, _key = self._credentials()
        o = self.option
        now = int(time.time())
        params = {
            "Action": action,
            "AppId": appid,
            "SecretId": secret_id,
            "Timestamp": str(now),
            "Expired": str(now + 86400),
            "SessionId": str(uuid.uuid4()),
            "ModelType": "1",  # Tencent's SDKs always send it
            "VoiceType": o.speaker or DEFAULT_VOICE,
            "Codec": self.codec,
            "SampleRate": str(self.rate),
            "Speed": _number(o.speed or 0),
            "Volume": _number(o.volume or 0),
            # Always on: the subtitles tell where an interrupted utterance stopped.
            "EnableSubtitle": "true",
        }
        if o.emotion:
            params["EmotionCategory"] = o.emotion
            params["EmotionIntensity"] = "100"
        for key, value in (o.extra or {}).items():
            params[str(key)] = _extra_value(str(key), value)
        if text is not None:
            params["Text"] = text
        return params

    def url(self, path: str, params: Mapping[str, str]) -> str:
        """The signed WebSocket address of `path` (`/stream_ws` or `/stream_wsv2`) with `params`."""
        scheme, host, prefix = split_endpoint(self.option.endpoint, DEFAULT_HOST, "option.tts.endpoint")
        full = prefix + path
        signature = sign(self._credentials()[2], host, full, params)
        query = "&".join(f"{k}={quote(params[k], safe='')}" for k in sorted(params))
        return f"{scheme}://{host}{full}?{query}&Signature={quote(signature, safe='')}"

    def _decoder(self) -> _Decoder:
        return _Mp3Decoder(self.rate) if self.codec == "mp3" else _PcmDecoder()

    # --- the connection ------------------------------------------------------------------------------------

    async def _connect(
        self, http: aiohttp.ClientSession, path: str, params: Mapping[str, str]
    ) -> aiohttp.ClientWebSocketResponse:
        try:
            return await asyncio.wait_for(
                http.ws_connect(
                    self.url(path, params), timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT)
                ),
                CONNECT_TIMEOUT,
            )
        except aiohttp.WSServerHandshakeError as exc:
            # The exception's text names the URL, and with it SecretId: only the status goes out.
            raise ProviderError(
                f"tencent tts: the service refused the connection (HTTP {exc.status})"
            ) from None
        except TimeoutError:
            raise ProviderError(f"tencent tts: no connection within {CONNECT_TIMEOUT:.0f} s") from None
        except UrlRefused as exc:
            endpoint = self.option.endpoint or f"wss://{DEFAULT_HOST}"
            raise ProviderRefused(self._scrub(exc.for_field("option.tts.endpoint", endpoint)), 403) from None
        except (aiohttp.ClientError, OSError) as exc:
            # Whatever the library says, a query string in it (SecretId, Signature) does not go further.
            reason = re.sub(r"\?[^\s'\"]*", "?…", str(exc))
            raise ProviderError(self._scrub(f"tencent tts: cannot connect: {reason}")) from None

    @staticmethod
    async def _receive(
        ws: aiohttp.ClientWebSocketResponse, timeout: float, silence: str
    ) -> aiohttp.WSMessage:
        try:
            return await ws.receive(timeout=timeout)
        except TimeoutError:
            raise ProviderError(f"tencent tts: {silence}") from None

    def _done(self, kind: str, params: Mapping[str, str], rx: _Reception, started: float) -> None:
        log.info(
            "tencent tts %s: session %s, %d ms of audio in %.2f s",
            kind,
            params["SessionId"],
            rx.samples * 1000 // self.rate,
            time.monotonic() - started,
        )

    async def synthesize(self, text: str) -> AsyncIterator[TtsOutput]:
        self.check()
        if not text.strip():
            return
        started = time.monotonic()
        params = self.query(ONE_SHOT_ACTION, text)
        rx = _Reception(self._decoder(), self.rate, self._scrub)
        async with self.context.guard.session(WS, timeout=aiohttp.ClientTimeout(total=None)) as http:
            async with await self._connect(http, ONE_SHOT_PATH, params) as ws:
                silence = f"nothing from the service for {IDLE_TIMEOUT:g} s"
                while not rx.final:
                    for out in rx.take(await self._receive(ws, IDLE_TIMEOUT, silence)):
                        yield out
        self._done("one-shot", params, rx, started)

    async def stream(self, texts: AsyncIterator[str]) -> AsyncIterator[TtsOutput]:
        self.check()
        started = time.monotonic()
        params = self.query(STREAMING_ACTION)
        rx = _Reception(self._decoder(), self.rate, self._scrub)
        loop = asyncio.get_running_loop()
        async with self.context.guard.session(WS, timeout=aiohttp.ClientTimeout(total=None)) as http:
            async with await self._connect(http, STREAMING_PATH, params) as ws:
                # Text sent before `ready: 1` is not taken; Tencent's SDKs wait for it the same way.
                deadline = loop.time() + READY_TIMEOUT
                not_ready = f"the service was not ready within {READY_TIMEOUT:g} s"
                while not rx.ready and not rx.final:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise ProviderError(f"tencent tts: {not_ready}")
                    for out in rx.take(await self._receive(ws, left, not_ready)):
                        yield out
                sender = asyncio.create_task(
                    self._send(ws, texts, params["SessionId"]), name=f"call:{self.context.call_id}:tts-send"
                )
                receiving: asyncio.Task[aiohttp.WSMessage] | None = None
                all_sent = False
                try:
                    while not rx.final:
                        if not all_sent and sender.done():
                            sender.result()  # a failure of the text source reaches the consumer as it is
                            all_sent = True
                        if receiving is None:
                            receiving = asyncio.create_task(
                                ws.receive(), name=f"call:{self.context.call_id}:tts-receive"
                            )
                        # While text may still come the service may be quiet (it sends heartbeats meanwhile);
                        # after ACTION_COMPLETE it owes us audio.
                        done, _ = await asyncio.wait(
                            {receiving} if all_sent else {receiving, sender},
                            timeout=IDLE_TIMEOUT if all_sent else None,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        if not done:
                            raise ProviderError(
                                f"tencent tts: nothing from the service for {IDLE_TIMEOUT:.0f} s"
                            )
                        if receiving in done:
                            msg, receiving = receiving.result(), None
                            for out in rx.take(msg):
                                yield out
                finally:
                    # Interrupt, failure or the end: stop both halves before the socket closes (gathering the
                    # finished ones too, so that no task's exception goes unretrieved).
                    tasks = [t for t in (receiving, sender) if t is not None]
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        self._done("stream", params, rx, started)

    async def _send(
        self, ws: aiohttp.ClientWebSocketResponse, texts: AsyncIterator[str], session_id: str
    ) -> None:
        def message(action: str, data: str) -> str:
            body = {"session_id": session_id, "message_id": str(uuid.uuid4()), "action": action, "data": data}
            return json.dumps(body, ensure_ascii=False)

        try:
            async for piece in texts:
                if piece:
                    await ws.send_str(message("ACTION_SYNTHESIS", piece))
            await ws.send_str(message("ACTION_COMPLETE", ""))
        except (ConnectionError, aiohttp.ClientError):
            # The connection went away under us: the reader reports it, with the service's reason if any.
            return
