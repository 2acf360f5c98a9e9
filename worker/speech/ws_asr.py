"""The part every cloud recognizer shares: one WebSocket per call, caller audio out, JSON results in.

The connection runs in one task owned by the client. `feed` only appends to a bounded buffer and wakes that
task, so the 20 ms path never waits on the network. A connection that drops mid-call is reported (an `error`
event through `on_error`) and opened again with backoff; audio that arrives meanwhile is buffered (up to
`MAX_BUFFER_MS`, oldest dropped first) and sent on the new connection, and sentence indexes keep counting
up across connections. A provider's own error answer (`ProviderRefused`) is final: it is reported once and
the client stops, since sending the same credentials again would be refused again.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
from typing import Any

import aiohttp
import numpy as np

from common.errors import ProviderError, ProviderRefused
from common.protocol import TranscriptionOption
from worker.speech.asr import AsrClient, AsrContext, ErrorCallback, ResultCallback, Transcript
from worker.urlguard import WS, UrlGuard, UrlRefused

log = logging.getLogger("pbx.worker.asr")

MAX_BUFFER_MS = 10_000
CONNECT_TIMEOUT = 5.0
RECONNECT_DELAYS = (0.2, 1.0, 3.0)  # then give up: the caller is told, the call goes on without ASR
CLOSE_GRACE = 0.5  # seconds to wait for the last results after telling the provider the audio ended


class StreamingAsr(AsrClient, abc.ABC):
    """A recognizer that streams audio to a WebSocket service; subclasses say where and how to read it."""

    # Bytes of 16 kHz s16le per binary message (a multiple of one 20 ms frame).
    chunk_bytes = 640

    def __init__(
        self,
        option: TranscriptionOption,
        context: AsrContext,
        on_result: ResultCallback,
        on_error: ErrorCallback,
    ) -> None:
        super().__init__(option, context, on_result, on_error)
        self._buffer = bytearray()
        self._buffer_start_ms: int | None = None  # audio-clock ms of the first byte in _buffer
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._established = False
        self._index_base = 0  # sentence indexes of earlier connections
        self._max_index = -1
        self.sent_bytes = 0
        # Audio-clock ms of the first byte sent on this connection: provider offsets count from it.
        self.stream_start_ms: int | None = None
        self.last_audio_ms: int | None = None

    # --- what a provider says ------------------------------------------------------------------------------

    @abc.abstractmethod
    def url(self) -> str:
        """Where to connect (a fresh one per connection, for signed URLs)."""

    def headers(self) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    def endpoint(self) -> str:
        """Where the service is, as error messages may show it (never the signed URL)."""

    def guard(self) -> UrlGuard:
        """The rule the connections obey: the call's, and a provider's default endpoint is trusted when the
        client named none."""
        if self.option.endpoint:
            return self.context.guard
        return self.context.guard.trusting(self.endpoint())

    @abc.abstractmethod
    def parse(self, message: dict[str, Any]) -> Transcript | None:
        """One JSON message from the service: a transcript, None (nothing to tell), or ProviderRefused."""

    async def end_of_audio(self, ws: aiohttp.ClientWebSocketResponse) -> None:  # noqa: B027 - optional hook
        """Tell the service no more audio comes (called when the call ends)."""

    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach an error message (library errors may quote the URL)."""
        return ()

    def _scrub(self, text: str) -> str:
        for secret in self.secrets():
            if secret:
                text = text.replace(secret, "***")
        return text

    def check(self) -> None:  # noqa: B027 - optional hook
        """Raise ProviderRefused for an option the provider cannot start with (missing credentials)."""

    # --- the interface -------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self.check()
        except ProviderError as exc:
            self.on_error(exc)
            return
        self._task = asyncio.create_task(self._run(), name=f"call:{self.context.call_id}:{self.provider}-asr")

    def feed(self, frame: np.ndarray, ts_ms: int) -> None:
        if self._closing:
            return
        if self._buffer_start_ms is None:
            self._buffer_start_ms = ts_ms
        self._buffer += frame.astype("<i2", copy=False).tobytes()
        self.last_audio_ms = ts_ms + len(frame) // 16
        excess = len(self._buffer) - MAX_BUFFER_MS * 32
        if excess > 0:
            excess += excess % 640
            del self._buffer[:excess]
            self._buffer_start_ms += excess // 32
        if len(self._buffer) >= self.chunk_bytes:
            self._wake.set()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_GRACE + 0.5)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
        except Exception:
            log.debug("%s asr ended with an error while closing", self.provider, exc_info=True)

    # --- the connection ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        async with self.guard().session(WS, timeout=aiohttp.ClientTimeout(total=None)) as http:
            while not self._closing:
                try:
                    await self._connection(http)
                    if self._closing:
                        return
                    raise ProviderError(f"{self.provider} asr: the service closed the connection")
                except ProviderRefused as exc:
                    self.on_error(exc)
                    return
                except (ProviderError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    if self._closing:
                        return
                    if self._established:  # it had worked: a fresh series of retries
                        self._established = False
                        failures = 0
                    message = (
                        exc.message
                        if isinstance(exc, ProviderError)
                        else self._scrub(f"{self.provider} asr: {exc}")
                    )
                    if failures >= len(RECONNECT_DELAYS):
                        self.on_error(ProviderError(f"{message}; giving up after {failures} retries"))
                        return
                    self.on_error(ProviderError(f"{message}; reconnecting"))
                    await asyncio.sleep(RECONNECT_DELAYS[failures])
                    failures += 1

    async def _connection(self, http: aiohttp.ClientSession) -> None:
        try:
            ws = await asyncio.wait_for(
                http.ws_connect(self.url(), headers=self.headers(), heartbeat=20, autoping=True),
                CONNECT_TIMEOUT,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ProviderError(
                f"{self.provider} asr: the service refused the connection (HTTP {exc.status})"
            ) from None
        except TimeoutError:
            raise ProviderError(
                f"{self.provider} asr: no connection within {CONNECT_TIMEOUT:.0f} s"
            ) from None
        except UrlRefused as exc:
            # Final: the same address would be refused again.
            raise ProviderRefused(exc.for_field("option.asr.endpoint", self.endpoint()), 403) from None
        self._established = True
        self.stream_start_ms = None
        self._index_base = self._max_index + 1
        async with ws:
            reader = asyncio.create_task(self._read(ws), name=f"call:{self.context.call_id}:asr-read")
            try:
                while not self._closing and not reader.done():
                    await self._send_buffered(ws)
                    self._wake.clear()
                    waker = asyncio.create_task(
                        self._wake.wait(), name=f"call:{self.context.call_id}:asr-wake"
                    )
                    try:
                        await asyncio.wait({waker, reader}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waker.cancel()
                if reader.done():
                    reader.result()  # a refusal or a broken connection surfaces here
                    return
                await self._send_buffered(ws, everything=True)
                await self.end_of_audio(ws)
                try:
                    await asyncio.wait_for(asyncio.shield(reader), CLOSE_GRACE)
                except TimeoutError:
                    pass
            finally:
                reader.cancel()

    async def _send_buffered(self, ws: aiohttp.ClientWebSocketResponse, everything: bool = False) -> None:
        step = self.chunk_bytes
        while len(self._buffer) >= step or (everything and self._buffer):
            n = min(step, len(self._buffer))
            chunk = bytes(self._buffer[:n])
            if self.stream_start_ms is None:
                self.stream_start_ms = self._buffer_start_ms
            del self._buffer[:n]
            if self._buffer_start_ms is not None:
                self._buffer_start_ms += n // 32
            self.sent_bytes += n
            await ws.send_bytes(chunk)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    raise ProviderError(
                        f"{self.provider} asr: the service sent text that is not JSON"
                    ) from None
                if not isinstance(data, dict):
                    raise ProviderError(f"{self.provider} asr: the service sent JSON that is not an object")
                transcript = self.parse(data)
                if transcript is not None:
                    self._deliver(transcript)
                if self._closing and self.finished(data):
                    return
            elif msg.type == aiohttp.WSMsgType.ERROR:
                raise ProviderError(f"{self.provider} asr: connection error: {ws.exception()}")
        if not self._closing:
            raise ProviderError(f"{self.provider} asr: the service closed the connection")

    def finished(self, message: dict[str, Any]) -> bool:
        """Whether this message is the service's last one after the end of the audio."""
        return False

    def _deliver(self, t: Transcript) -> None:
        index = self._index_base + t.index
        self._max_index = max(self._max_index, index)
        self.on_result(
            Transcript(text=t.text, index=index, final=t.final, start_ms=t.start_ms, end_ms=t.end_ms)
        )
