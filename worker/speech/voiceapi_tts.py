"""VoiceAPI speech synthesis (provider `voiceapi`; the sherpa-onnx server of github.com/ruzhila/voiceapi).

Protocol (the `/tts` WebSocket of its `app.py`): the text goes out as one text frame, as it is (no JSON);
the audio comes back as binary frames of s16le mono PCM, each a `chunk_size`-byte slice of what the model
produced, and one JSON text frame `{"progress": 1.0, "elapsed": "812ms", "duration": "1.52s", "size": 0}`
follows the last of it. The server sends no interim progress, and afterwards keeps the socket open for
more text, so the client closes it once `progress` reaches 1.0; a close before that is an error.

The query, each a FastAPI `Query` parameter of that handler (a value it cannot parse fails the handshake):
- `samplerate` (int, server default 16000): the provider's rate. The server resamples from the model's own
  rate, so the audio arrives at the rate `TtsAudio` claims. RustPBX leaves it out and assumes 16 kHz.
- `sid` (int, default 0): the speaker, `option.speaker`, else VOICEAPI_SPEAKER_ID, else 0. RustPBX never
  sends it, so its bots always get speaker 0. `check` refuses a speaker that is not a number, naming the
  field, rather than let the handshake fail with a bare HTTP 403.
- `speed` (float, default 1.0): sherpa-onnx's tempo factor (2.0 speaks twice as fast), only when
  `option.speed` is set. The model divides by it, so 0 or less is refused up front.
- `chunk_size` (bytes, default 1024): 80 ms of audio at the asked rate, RustPBX's 2560 bytes at 16 kHz, so
  a chunk lasts as long at every rate.
- `split=false`, as RustPBX: otherwise the server cuts the text at every comma and synthesizes the pieces
  one by one. The caller already hands over one sentence at a time; whole, it keeps its intonation.
`interrupt` (default true: a new text cancels the current one) is left alone: each text gets its own socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator
from urllib.parse import urlencode

import aiohttp
import numpy as np

from common.errors import ProviderError, ProviderRefused
from worker.speech.endpoints import split_endpoint
from worker.speech.tts import TtsAudio, TtsOutput, TtsProvider, strip_emoji
from worker.urlguard import WS, UrlGuard, UrlRefused

log = logging.getLogger("pbx.worker.tts")

DEFAULT_ENDPOINT = "ws://localhost:8000"  # the port voiceapi's app.py listens on unless told otherwise
CONNECT_TIMEOUT = 5.0
# The server synthesizes a whole text before it sends the first byte of it (the model runs on its event
# loop), so a long sentence on a slow CPU takes seconds; only a silence this long means it is stuck.
IDLE_TIMEOUT = 30.0
# For the same reason it cannot answer a close frame while it synthesizes: don't let an interrupt wait.
CLOSE_TIMEOUT = 1.0
CHUNK_MS = 80

_FIELD = "option.tts"


class VoiceApiTts(TtsProvider):
    """Speaks one text per WebSocket connection to a VoiceAPI server, streaming its PCM as it arrives."""

    name = "voiceapi"
    native_streaming = False

    idle_timeout = IDLE_TIMEOUT

    def _endpoint(self) -> str:
        return self.option.endpoint or self.context.voiceapi_endpoint or DEFAULT_ENDPOINT

    def _guard(self) -> UrlGuard:
        # The endpoint the server picked (VOICEAPI_ENDPOINT, or the default) is trusted; a client's is not.
        if self.option.endpoint:
            return self.context.guard
        return self.context.guard.trusting(self._endpoint())

    def _speaker(self) -> str:
        return (self.option.speaker or self.context.voiceapi_speaker_id or "0").strip()

    def check(self) -> None:
        split_endpoint(self._endpoint(), "", f"{_FIELD}.endpoint")
        if not re.fullmatch(r"[0-9]+", self._speaker()):
            raise ProviderRefused(
                f"{_FIELD}.speaker: voiceapi speakers are numbers (sid), not {self._speaker()!r}", 400
            )
        if self.option.speed is not None and not self.option.speed > 0:
            raise ProviderRefused(
                f"{_FIELD}.speed: voiceapi takes a tempo factor above 0 (1.0 is normal), not "
                f"{self.option.speed}",
                400,
            )
        if self.rate <= 0:
            raise ProviderRefused(f"{_FIELD}.samplerate: {self.rate} is not a sample rate", 400)

    def url(self) -> str:
        scheme, host, prefix = split_endpoint(self._endpoint(), "", f"{_FIELD}.endpoint")
        chunk_bytes = self.rate * CHUNK_MS // 1000 * 2  # whole samples, so chunks never split one
        query: dict[str, str | int | float] = {
            "samplerate": self.rate,
            "sid": int(self._speaker()),
            "chunk_size": chunk_bytes,
            "split": "false",
        }
        if self.option.speed is not None:
            query["speed"] = self.option.speed
        return f"{scheme}://{host}{prefix}/tts?{urlencode(query)}"

    async def _connect(self, http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT))
        except aiohttp.WSServerHandshakeError as exc:
            message = f"voiceapi tts: the service refused the connection (HTTP {exc.status})"
            if 400 <= exc.status < 500:  # a wrong path or a query it cannot parse: asking again won't help
                raise ProviderRefused(message, exc.status) from None
            raise ProviderError(message) from None
        except TimeoutError:
            raise ProviderError(f"voiceapi tts: no connection within {CONNECT_TIMEOUT:.0f} s") from None
        except UrlRefused as exc:
            raise ProviderRefused(exc.for_field(f"{_FIELD}.endpoint", self._endpoint()), 403) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderError(f"voiceapi tts: cannot connect: {exc}") from None

    async def synthesize(self, text: str) -> AsyncGenerator[TtsOutput, None]:
        self.check()
        text = strip_emoji(text)
        if not text.strip():
            # The server ignores an empty frame and then waits for a stream that never starts.
            return
        url = self.url()
        started = time.monotonic()
        received = 0
        leftover = b""
        async with self._guard().session(WS) as http, await self._connect(http, url) as ws:
            try:
                await ws.send_str(text)
            except (aiohttp.ClientError, OSError) as exc:
                raise ProviderError(f"voiceapi tts: cannot send the text: {exc}") from None
            while True:
                try:
                    msg = await ws.receive(self.idle_timeout)
                except TimeoutError:
                    raise ProviderError(
                        f"voiceapi tts: nothing from the service for {self.idle_timeout:.0f} s"
                    ) from None
                if msg.type == aiohttp.WSMsgType.BINARY:
                    data = leftover + msg.data
                    received += len(msg.data)
                    # A sample may straddle two frames when the server's chunk size is odd.
                    cut = len(data) & ~1
                    leftover = data[cut:]
                    if cut:
                        yield TtsAudio(
                            samples=np.frombuffer(data[:cut], dtype="<i2").astype(np.int16), rate=self.rate
                        )
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    if _finished(msg.data):
                        break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    raise ProviderError(f"voiceapi tts: connection error: {ws.exception()}")
                else:  # CLOSE, CLOSING, CLOSED
                    raise ProviderError(
                        f"voiceapi tts: the service closed the connection before the end of the audio "
                        f"({received} bytes received)"
                    )
        log.debug(
            "voiceapi tts: %d bytes at %d Hz in %.0f ms",
            received,
            self.rate,
            (time.monotonic() - started) * 1000,
        )


def _finished(message: str) -> bool:
    """Whether a progress message says the audio is complete (`progress` reached 1.0)."""
    try:
        data = json.loads(message)
    except ValueError:
        raise ProviderError(
            f"voiceapi tts: the service sent text that is not JSON: {message[:80]!r}"
        ) from None
    if not isinstance(data, dict):
        raise ProviderError("voiceapi tts: the service sent JSON that is not an object")
    progress = data.get("progress")
    return isinstance(progress, int | float) and not isinstance(progress, bool) and progress >= 1.0
