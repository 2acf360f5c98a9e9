"""A VoiceAPI TTS service for tests (the protocol of github.com/ruzhila/voiceapi's `/tts` WebSocket).

It parses the query as that FastAPI handler declares it (`samplerate`, `sid`, `chunk_size`, `speed`,
`split`, `interrupt`) and, like FastAPI behind uvicorn, refuses a value it cannot parse at the handshake:
the validation error closes the socket before it is accepted, which uvicorn answers with HTTP 403.
A text frame in gives `tone()` out, cut into `chunk_size`-byte binary frames, then
`{"progress": 1.0, "elapsed", "duration", "size": 0}`; the socket then stays open until the client closes
it, as the real one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field

import numpy as np
from aiohttp import WSMsgType, web

from tests.providers.server import MockServer

CHAR_SECONDS = 0.04
TONE_HZ = 330.0
AMPLITUDE = 8000

# The server's sentence splitter (voiceapi/tts.py), used when `split` is true.
_SPLITTER = re.compile(r"[,，。.!?！？;；、\n]")
# What pydantic takes for a bool query value.
_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def tone(text: str, rate: int, speed: float = 1.0, split: bool = False) -> np.ndarray:
    """The audio the mock speaks for `text`: 40 ms (at speed 1) of a 330 Hz sine per non-space character."""
    pieces = _SPLITTER.split(text) if split else [text]
    per_char = round(rate * CHAR_SECONDS / speed)
    n = sum(len(re.sub(r"\s", "", p)) for p in pieces) * per_char
    t = np.arange(n) / rate
    return (AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)


@dataclass
class Params:
    samplerate: int = 16000
    sid: int = 0
    chunk_size: int = 1024
    speed: float = 1.0
    split: bool = True
    interrupt: bool = True


def parse_query(query: dict[str, str]) -> Params:
    """The handler's parameters from a query, or ValueError where FastAPI's validation would fail."""
    p = Params()
    for name in ("samplerate", "sid", "chunk_size"):
        if name in query:
            value = query[name].strip()
            if not re.fullmatch(r"[+-]?[0-9]+", value):
                raise ValueError(f"{name}: not an integer: {value!r}")
            setattr(p, name, int(value))
    if "speed" in query:
        p.speed = float(query["speed"])
    for name in ("split", "interrupt"):
        if name in query:
            value = query[name].strip().lower()
            if value not in _TRUE | _FALSE:
                raise ValueError(f"{name}: not a boolean: {value!r}")
            setattr(p, name, value in _TRUE)
    return p


@dataclass
class Connection:
    path: str
    query: dict[str, str]
    params: Params
    texts: list[str] = field(default_factory=list)
    sent_bytes: int = 0
    # Set when the client has closed the socket (or the server dropped it).
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class VoiceApiTtsServer(MockServer):
    """`/tts` under `prefix`; the switches make it misbehave the ways a real service can."""

    def __init__(
        self,
        prefix: str = "",
        *,
        drop_after_bytes: int | None = None,
        garbage: bool = False,
        never_finish: bool = False,
        stall: bool = False,
        interim_progress: bool = False,
        chunk_override: int | None = None,
        chunk_delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.drop_after_bytes = drop_after_bytes  # abort the TCP connection once this much audio went out
        self.garbage = garbage  # a text frame that is not JSON after the first chunk
        self.never_finish = never_finish  # all the audio, then a clean close without progress 1.0
        self.stall = stall  # all the audio, then silence with the socket open
        self.interim_progress = interim_progress  # progress < 1 after each chunk (the real server sends none)
        self.chunk_override = chunk_override  # bytes per frame regardless of the query (odd sizes)
        self.chunk_delay = chunk_delay  # seconds between frames, to keep a long text in flight
        self.connections: list[Connection] = []

    async def __aenter__(self) -> VoiceApiTtsServer:
        await super().__aenter__()
        return self

    def routes(self, app: web.Application) -> None:
        app.router.add_get(f"{self.prefix}/tts", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            params = parse_query(dict(request.query))
        except ValueError as exc:
            return web.Response(status=403, text=str(exc))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        conn = Connection(request.path, dict(request.query), params)
        self.connections.append(conn)
        # Without `interrupt` the real server queues a second text behind the first; with it, it cuts in.
        speaking: list[asyncio.Task[None]] = []
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT or not msg.data:
                    continue
                conn.texts.append(msg.data)
                if params.interrupt:
                    for task in speaking:
                        task.cancel()
                after = speaking[-1] if speaking and not params.interrupt else None
                speaking.append(
                    asyncio.create_task(
                        self._speak(request, ws, conn, msg.data, after), name="mock:voiceapi-tts"
                    )
                )
        finally:
            for task in speaking:
                task.cancel()
            for task in speaking:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            conn.closed.set()
        return ws

    async def _speak(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        conn: Connection,
        text: str,
        after: asyncio.Task[None] | None,
    ) -> None:
        if after is not None:
            with contextlib.suppress(Exception):
                await after
        p = conn.params
        pcm = tone(text, p.samplerate, p.speed, p.split).tobytes()
        step = self.chunk_override or p.chunk_size
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step]
            await ws.send_bytes(chunk)
            conn.sent_bytes += len(chunk)
            if self.drop_after_bytes is not None and conn.sent_bytes >= self.drop_after_bytes:
                assert request.transport is not None
                request.transport.abort()
                return
            if self.garbage:
                await ws.send_str("Internal Server Error")
            if self.interim_progress:
                await ws.send_str(json.dumps({"progress": min(0.99, (i + step) / len(pcm))}))
            await asyncio.sleep(self.chunk_delay)
        if self.never_finish:
            await ws.close()
            return
        if self.stall:
            return
        duration = len(pcm) / 2 / p.samplerate
        await ws.send_str(
            json.dumps({"progress": 1.0, "elapsed": "5ms", "duration": f"{duration:.2f}s", "size": 0})
        )
