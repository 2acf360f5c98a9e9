"""A Tencent Cloud TTS service for tests, speaking the documented WebSocket protocols.

`/stream_ws` (TextToStreamAudioWS) speaks the `Text` of the query; `/stream_wsv2` (TextToStreamAudioWSv2)
says `ready: 1`, then speaks each `ACTION_SYNTHESIS` piece as it arrives and ends with `final: 1` after
`ACTION_COMPLETE`. Both check what the real service checks (Action for the path, AppId, SecretId, the
time window, the HMAC-SHA1 signature over "GET" + host + path + the sorted decoded query, the parameters)
and answer a failure with a `code != 0` message and a close.

The "voice" is deterministic so tests can count samples: every character that is not a space lasts
`CHAR_MS` of a 440 Hz tone at the requested rate, with one subtitle per character. Audio goes out in
`CHUNK_BYTES` frames after a first frame of an odd size, so every later boundary splits a sample.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiohttp import WSMsgType, web

from tests.providers.server import MockServer

ACTIONS = {"/stream_ws": "TextToStreamAudioWS", "/stream_wsv2": "TextToStreamAudioWSv2"}
REQUIRED = ("Action", "AppId", "SecretId", "Timestamp", "Expired", "SessionId", "Signature")
RATES = ("8000", "16000", "24000")
CODECS = ("pcm", "mp3")
EMOTIONS = (
    "neutral sad happy angry fear news story radio poetry call sajiao disgusted amaze peaceful exciting "
    "aojiao jieshuo"
).split()
BAD_PARAMETER, BAD_AUTH = 10001, 10003

CHAR_MS = 50
CHUNK_BYTES = 3200
FIRST_CHUNK_BYTES = 1601
TONE_HZ = 440
AMPLITUDE = 8000


def spoken(text: str) -> list[tuple[int, str]]:
    """(index, character) of what the voice says: everything but spaces."""
    return [(i, ch) for i, ch in enumerate(text) if not ch.isspace()]


def tone(rate: int, start: int, count: int) -> np.ndarray:
    """`count` samples of the voice's tone, its sample clock starting at `start` (one phase per session)."""
    t = np.arange(start, start + count, dtype=np.float64)
    return (AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t / rate)).astype(np.int16)


def samples_for(text: str, rate: int) -> int:
    """How many samples the voice makes of `text` at `rate`."""
    return len(spoken(text)) * rate * CHAR_MS // 1000


def mp3(samples: np.ndarray, rate: int) -> bytes:
    encoder = av.CodecContext.create("libmp3lame", "w")
    encoder.sample_rate = rate
    encoder.layout = "mono"
    encoder.format = "s16p"
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16p", layout="mono")
    frame.sample_rate = rate
    return b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)])


@dataclass
class Connection:
    """One accepted WebSocket: what the client asked for and sent, and when."""

    path: str
    query: dict[str, str]
    host: str
    received: list[dict[str, Any]] = field(default_factory=list)  # the client's JSON messages
    actions: list[str] = field(default_factory=list)
    action_times: list[float] = field(default_factory=list)  # loop time of each action's arrival
    sent: list[dict[str, Any]] = field(default_factory=list)  # our JSON messages
    audio_bytes: int = 0
    ready_at: float | None = None
    closed_at: float | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the handler ended (either side closed)


class _Dropped(Exception):
    pass


class TencentTtsServer(MockServer):
    """The mock service. Switches: `error_code` answers the first synthesis with that code,
    `drop_after_bytes` aborts the connection once that much audio is out, `delay_ready` holds `ready: 1`
    back (v2), `chunk_delay` paces the audio frames (seconds between them)."""

    def __init__(self, appid: str, secret_id: str, secret_key: str) -> None:
        super().__init__()
        self.appid = appid
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.connections: list[Connection] = []
        self.error_code: int | None = None
        self.drop_after_bytes: int | None = None
        self.delay_ready = 0.0
        self.chunk_delay = 0.0

    async def __aenter__(self) -> TencentTtsServer:
        await super().__aenter__()
        return self

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/stream_ws", self.handle)
        app.router.add_get("/stream_wsv2", self.handle)

    # --- what the real service checks ----------------------------------------------------------------------

    def _refusal(self, request: web.Request) -> tuple[int, str] | None:
        q = request.query
        required = REQUIRED + (("Text",) if request.path == "/stream_ws" else ())
        missing = [k for k in required if not q.get(k)]
        if missing:
            return BAD_PARAMETER, f"missing parameters {missing}"
        if q["Action"] != ACTIONS[request.path]:
            return BAD_PARAMETER, f"Action {q['Action']} is not served at {request.path}"
        if not q["AppId"].isdigit() or q["AppId"] != self.appid:
            return BAD_AUTH, "unknown AppId"
        if q["SecretId"] != self.secret_id:
            return BAD_AUTH, "unknown SecretId"
        now = time.time()
        if not (q["Timestamp"].isdigit() and q["Expired"].isdigit()):
            return BAD_PARAMETER, "Timestamp and Expired must be integers"
        if abs(int(q["Timestamp"]) - now) > 300 or not now < int(q["Expired"]) <= now + 86400 + 300:
            return BAD_AUTH, "request expired"
        params = {k: v for k, v in q.items() if k != "Signature"}
        plain = f"GET{request.host}{request.path}?" + "&".join(f"{k}={params[k]}" for k in sorted(params))
        digest = hmac.new(self.secret_key.encode(), plain.encode(), hashlib.sha1).digest()
        if not hmac.compare_digest(q["Signature"], base64.b64encode(digest).decode()):
            return BAD_AUTH, "signature mismatch"
        if q.get("SampleRate", "16000") not in RATES:
            return BAD_PARAMETER, "SampleRate must be 8000, 16000 or 24000"
        if q.get("Codec", "pcm") not in CODECS:
            return BAD_PARAMETER, "Codec must be pcm or mp3"
        if "EmotionCategory" in q and q["EmotionCategory"] not in EMOTIONS:
            return BAD_PARAMETER, "unknown EmotionCategory"
        return None

    # --- the connection ------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        conn = Connection(request.path, dict(request.query), request.host)
        self.connections.append(conn)
        try:
            session = _Session(self, ws, conn, request)
            refusal = self._refusal(request)
            if refusal is not None:
                await session.send(code=refusal[0], message=refusal[1])
                await ws.close()
            elif request.path == "/stream_ws":
                await session.one_shot()
            else:
                await session.flowing()
        finally:
            conn.closed_at = asyncio.get_running_loop().time()
            conn.closed.set()
        return ws


class _Session:
    """One connection's speaking: the sample clock, subtitle indexes and the switches' effects."""

    def __init__(
        self, server: TencentTtsServer, ws: web.WebSocketResponse, conn: Connection, request: web.Request
    ) -> None:
        self.server = server
        self.ws = ws
        self.conn = conn
        self.request = request
        q = request.query
        self.v2 = request.path == "/stream_wsv2"
        self.session_id = q.get("SessionId", "")
        self.rate = int(q.get("SampleRate", "16000")) if q.get("SampleRate") in RATES else 16000
        self.codec = q.get("Codec", "pcm")
        self.clock = 0  # samples spoken so far
        self.index = 0  # characters of text taken so far
        self.syntheses = 0

    async def send(self, **fields: Any) -> None:
        msg: dict[str, Any] = {
            "code": 0,
            "message": "success",
            "session_id": self.session_id,
            "request_id": str(uuid.uuid4()),
            "message_id": str(uuid.uuid4()),
            "final": 0,
            "result": {"subtitles": None},
        }
        if self.v2:
            msg |= {"ready": 0, "heartbeat": 0}
        msg |= fields
        self.conn.sent.append(msg)
        await self.ws.send_str(json.dumps(msg, ensure_ascii=False))

    async def speak(self, text: str) -> bool:
        """Subtitles and audio of `text`; False when a switch ended the connection instead."""
        self.syntheses += 1
        if self.server.error_code is not None and self.syntheses == 1:
            await self.send(code=self.server.error_code, message="test error")
            await self.ws.close()
            return False
        chars = spoken(text)
        per_char = self.rate * CHAR_MS // 1000
        samples = tone(self.rate, self.clock, len(chars) * per_char)
        start_ms = self.clock * 1000 // self.rate
        subtitles: list[dict[str, Any]] = [
            {
                "Text": ch,
                "BeginTime": start_ms + k * CHAR_MS,
                "EndTime": start_ms + (k + 1) * CHAR_MS,
                "BeginIndex": self.index + i,
                "EndIndex": self.index + i + 1,
                "Phoneme": "",
            }
            for k, (i, ch) in enumerate(chars)
        ]
        self.clock += len(samples)
        self.index += len(text)
        data = mp3(samples, self.rate) if self.codec == "mp3" else samples.astype("<i2").tobytes()
        duration_ms = len(chars) * CHAR_MS
        offset, told = 0, 0
        while offset < len(data):
            end = min(offset + (FIRST_CHUNK_BYTES if offset == 0 else CHUNK_BYTES), len(data))
            # A character's subtitle goes out just before the frame its audio starts in, as the real one does.
            until_ms = start_ms + duration_ms * end / len(data)
            while told < len(subtitles) and subtitles[told]["BeginTime"] < until_ms:
                await self.send(result={"subtitles": [subtitles[told]]})
                told += 1
            await self.ws.send_bytes(data[offset:end])
            self.conn.audio_bytes += end - offset
            offset = end
            drop = self.server.drop_after_bytes
            if drop is not None and self.conn.audio_bytes >= drop:
                # Abruptly: no close frame, as when the network or the service dies.
                if self.request.transport is not None:
                    self.request.transport.abort()
                raise _Dropped
            if self.server.chunk_delay:
                await asyncio.sleep(self.server.chunk_delay)
        return True

    async def _read(self, on_message: Any = None) -> None:
        """Receive until the client closes; JSON messages are recorded and handed to `on_message`."""
        loop = asyncio.get_running_loop()
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            self.conn.received.append(data)
            if isinstance(data, dict) and "action" in data:
                self.conn.actions.append(str(data["action"]))
                self.conn.action_times.append(loop.time())
            if on_message is not None:
                await on_message(data)

    async def one_shot(self) -> None:
        async def talk() -> None:
            try:
                if await self.speak(self.request.query["Text"]):
                    await self.send(final=1)
                    await self.ws.close()
            except (_Dropped, ConnectionError):
                pass

        speaker = asyncio.create_task(talk(), name="tencent-tts-mock:speak")
        try:
            await self._read()
        finally:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)

    async def flowing(self) -> None:
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        ready = asyncio.Event()

        async def talk() -> None:
            try:
                await asyncio.sleep(self.server.delay_ready)
                self.conn.ready_at = asyncio.get_running_loop().time()
                ready.set()
                await self.send(ready=1)
                await self.send(heartbeat=1)
                while (piece := await pieces.get()) is not None:
                    if not await self.speak(piece):
                        return
                await self.send(final=1)
                await self.ws.close()
            except (_Dropped, ConnectionError):
                pass

        async def on_message(data: Any) -> None:
            refusal = None
            if not ready.is_set():
                refusal = "a message before ready"
            elif not isinstance(data, dict) or data.get("session_id") != self.session_id:
                refusal = "session_id does not match the connection's"
            elif data.get("action") == "ACTION_SYNTHESIS" and isinstance(data.get("data"), str):
                pieces.put_nowait(data["data"])
            elif data.get("action") == "ACTION_COMPLETE":
                pieces.put_nowait(None)
            else:
                refusal = f"unknown action {data.get('action')!r}"
            if refusal is not None:
                await self.send(code=BAD_PARAMETER, message=refusal)
                await self.ws.close()

        speaker = asyncio.create_task(talk(), name="tencent-tts-mock:speak")
        try:
            await self._read(on_message)
        finally:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
