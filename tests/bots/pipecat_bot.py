"""A real Pipecat bot that speaks Twilio Media Streams, the peer of the server's `mediaPass` tests.

`python -m tests.bots.pipecat_bot --report-dir DIR` listens on 127.0.0.1 (a free port), prints
`READY <port>` and serves `ws://127.0.0.1:<port>/twilio`, one Pipecat pipeline per connection:
FastAPIWebsocketTransport input -> BotLogic -> output, with Pipecat's own TwilioFrameSerializer.
No VAD, STT, LLM or TTS, and nothing leaves the machine.

The call's `start.customParameters` choose what it does:

- `mode`: `echo` (caller audio straight back) or `tone` (`seconds`, default 5, of a sine at `freq` Hz,
  default 440, with a mark `m1`..`mN` after each of the first `marks` seconds).
- `clear_digit` (default `5`): that DTMF digit interrupts the bot, so Pipecat sends `clear`.
- `end_after` (seconds): the bot ends the pipeline then (an EndFrame, which first plays out the audio the
  output still holds), and closes the socket with 1000.

Each call writes `DIR/<callSid>.jsonl` (one `{"t": time.time(), "event": ...}` per line) and, at the end,
`DIR/<callSid>.heard.wav` (8 kHz mono s16: everything the serializer decoded from the caller).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import socket
import sys
import time
import warnings
import wave
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import uvicorn
import uvloop
from loguru import logger
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

# Pipecat's μ-law helpers import the stdlib audioop, deprecated on 3.11; the bot runs in its own process.
warnings.filterwarnings("ignore", message=".*audioop.*", category=DeprecationWarning)

from pipecat.frames.frames import (  # noqa: E402
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    StartFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.serializers.twilio import TwilioFrameSerializer  # noqa: E402
from pipecat.transports.websocket.fastapi import (  # noqa: E402
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner  # noqa: E402

RATE = 8000
FRAME_SAMPLES = RATE // 50  # 20 ms, the Twilio packet size
TONE_AMPLITUDE = 8000
START_TIMEOUT = 10.0
log = logging.getLogger("pbx.tests.pipecat_bot")


class CallReport:
    """One call's report: a JSON-lines event log flushed per line, and the caller audio heard."""

    def __init__(self, report_dir: Path, call_sid: str) -> None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", call_sid) or "unnamed"
        self.jsonl_path = report_dir / f"{name}.jsonl"
        self.wav_path = report_dir / f"{name}.heard.wav"
        self._file: TextIO = self.jsonl_path.open("a", encoding="utf-8")
        self._heard = bytearray()

    def write(self, event: str, t: float | None = None, **fields: Any) -> None:
        if self._file.closed:
            return
        self._file.write(json.dumps({"t": time.time() if t is None else t, "event": event, **fields}) + "\n")
        self._file.flush()

    def hear(self, pcm: bytes) -> None:
        self._heard.extend(pcm)

    def close(self, **closed: Any) -> None:
        """Write the audio heard, then the `closed` line with `closed`'s fields: a reader that sees that line
        finds the WAV whole (it was written before, under another name, and renamed)."""
        part = self.wav_path.with_suffix(".part")
        with wave.open(str(part), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(RATE)
            wav.writeframes(bytes(self._heard))
        part.replace(self.wav_path)
        self.write("closed", **closed)
        self._file.close()


class TappedWebSocket(WebSocket):
    """A Starlette WebSocket that notes, at the ASGI boundary, what really went out and how it closed.

    Pipecat's transport hides both: it discards the peer's close code, and a frame it serializes may
    still wait before it is written. Here `clear` and marks are stamped when handed to the server.
    """

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(scope, receive, send)
        self.report: CallReport | None = None
        self.media_in = 0
        self.media_out = 0
        self.close_code: int | None = None
        self.closed_by: str | None = None
        self.closed_at: float | None = None

    async def receive(self) -> Message:
        message = await super().receive()
        if message["type"] == "websocket.disconnect":
            self._closed("peer", message.get("code"))
        elif message.get("text", "").startswith('{"event": "media"'):
            self.media_in += 1
        return message

    async def send(self, message: Message) -> None:
        await super().send(message)
        if message["type"] == "websocket.close":
            self._closed("bot", message.get("code", 1000))
            return
        text = message.get("text")
        if message["type"] != "websocket.send" or not text:
            return
        if text.startswith('{"event": "media"'):
            self.media_out += 1
        elif self.report is not None and text.startswith('{"event": "clear"'):
            self.report.write("clear_sent", media_out=self.media_out)
        elif self.report is not None and text.startswith('{"event": "mark"'):
            self.report.write("mark_sent", name=json.loads(text)["mark"]["name"], media_out=self.media_out)

    def _closed(self, by: str, code: int | None) -> None:
        if self.closed_by is None:
            self.closed_by, self.close_code, self.closed_at = by, code, time.time()


class ReportingSerializer(TwilioFrameSerializer):
    """Pipecat's Twilio serializer, plus a report of the control events it has no frame for."""

    def __init__(self, stream_sid: str, call_sid: str, report: CallReport) -> None:
        super().__init__(
            stream_sid=stream_sid,
            call_sid=call_sid,
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
        self._report = report

    async def deserialize(self, data: str | bytes) -> Frame | None:
        # Media is most of the traffic and the base class parses it anyway: skip the second parse.
        if isinstance(data, str) and not data.startswith('{"event": "media"'):
            try:
                message = json.loads(data)
            except ValueError:
                message = {}
            event = message.get("event")
            if event == "mark":
                self._report.write("mark", name=message.get("mark", {}).get("name"))
            elif event == "dtmf":
                self._report.write("dtmf", digit=message.get("dtmf", {}).get("digit"))
            elif event == "stop":
                self._report.write("stop", message=message)
        return await super().deserialize(data)


class BotLogic(FrameProcessor):
    """The bot's behaviour, chosen by the call's custom parameters (see the module docstring)."""

    def __init__(self, params: dict[str, str], stream_sid: str, report: CallReport) -> None:
        super().__init__(name="bot-logic")
        self._mode = params.get("mode", "echo")
        self._freq = float(params.get("freq", "440"))
        self._seconds = float(params.get("seconds", "5"))
        self._marks = int(params.get("marks", "0"))
        self._clear_digit = params.get("clear_digit", "5")
        self._end_after = float(params["end_after"]) if params.get("end_after") else None
        self._stream_sid = stream_sid
        self._report = report
        self._end_task: asyncio.Task[None] | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self._mode == "tone":
                await self._queue_tone()
            if self._end_after is not None:
                self._end_task = self.create_task(self._end_later(self._end_after), name="end-after")
        elif isinstance(frame, InputAudioRawFrame):
            self._report.hear(frame.audio)
            if self._mode == "echo":
                await self.push_frame(
                    OutputAudioRawFrame(frame.audio, sample_rate=frame.sample_rate, num_channels=1)
                )
        elif isinstance(frame, InputDTMFFrame):
            if frame.button.value == self._clear_digit:
                self._report.write("interrupt", digit=frame.button.value)
                await self.broadcast_interruption()
        else:
            await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()
        if self._end_task is not None:
            await self.cancel_task(self._end_task)
            self._end_task = None

    async def _queue_tone(self) -> None:
        # The whole tone is queued at once; the output transport paces it in real time. A non-urgent
        # transport message waits in the same queue as the audio, so each mark follows its second.
        total = int(round(self._seconds * RATE)) // FRAME_SAMPLES * FRAME_SAMPLES
        n = np.arange(total)
        pcm = np.round(TONE_AMPLITUDE * np.sin(2 * np.pi * self._freq * n / RATE)).astype(np.int16)
        marks = min(self._marks, total // RATE)
        for index, start in enumerate(range(0, total, FRAME_SAMPLES)):
            chunk = pcm[start : start + FRAME_SAMPLES].tobytes()
            await self.push_frame(OutputAudioRawFrame(chunk, sample_rate=RATE, num_channels=1))
            second, rest = divmod((index + 1) * FRAME_SAMPLES, RATE)
            if rest == 0 and 1 <= second <= marks:
                message = {"event": "mark", "streamSid": self._stream_sid, "mark": {"name": f"m{second}"}}
                await self.push_frame(OutputTransportMessageFrame(message=message))

    async def _end_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._report.write("end")
        await self.push_frame(EndWorkerFrame(reason="end_after"))


async def read_start(websocket: WebSocket) -> dict[str, Any]:
    """Read Twilio's opening messages up to `start` (the `connected` one carries nothing we need)."""
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            message: dict[str, Any] = json.loads(await websocket.receive_text())
            if message.get("event") == "start":
                return message
            if message.get("event") != "connected":
                log.warning("ignored %s before start", message.get("event"))


async def run_call(websocket: TappedWebSocket, start: dict[str, Any], report: CallReport) -> None:
    """Run one call's pipeline until either side ends it."""
    stream_sid = start["start"]["streamSid"]
    call_sid = start["start"]["callSid"]
    params = {str(k): str(v) for k, v in (start["start"].get("customParameters") or {}).items()}
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=RATE,
            audio_out_sample_rate=RATE,
            # 20 ms chunks, as Twilio sends them: an interruption then cuts at most 20 ms late.
            audio_out_10ms_chunks=2,
            # Pipecat pads 2 s of silence before an EndFrame closes; the tests want the close on time.
            audio_out_end_silence_secs=0,
            add_wav_header=False,
            allowed_origins=[],
            serializer=ReportingSerializer(stream_sid, call_sid, report),
        ),
    )
    pipeline = Pipeline([transport.input(), BotLogic(params, stream_sid, report), transport.output()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport: object, _websocket: object) -> None:
        await worker.cancel(reason="caller hung up")

    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    await runner.run()


class TwilioEndpoint:
    """The ASGI endpoint of `/twilio`: one pipeline and one report per connection."""

    def __init__(self, report_dir: Path) -> None:
        self._report_dir = report_dir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = TappedWebSocket(scope, receive, send)
        await websocket.accept()
        try:
            start = await read_start(websocket)
        except (TimeoutError, ValueError, KeyError, WebSocketDisconnect) as exc:
            log.warning("no start message: %r", exc)
            if websocket.client_state != WebSocketState.DISCONNECTED:
                await websocket.close(1008)
            return
        report = CallReport(self._report_dir, str(start["start"].get("callSid", "")))
        websocket.report = report
        report.write("start", message=start)
        try:
            await run_call(websocket, start, report)
        except Exception:
            log.exception("call %s failed", start["start"].get("callSid"))
        finally:
            if websocket.closed_by is None and websocket.application_state != WebSocketState.DISCONNECTED:
                try:
                    await websocket.close(1011)
                except RuntimeError:
                    pass
            report.close(
                t=websocket.closed_at,
                code=websocket.close_code,
                by=websocket.closed_by,
                media_in=websocket.media_in,
                media_out=websocket.media_out,
            )


async def serve(report_dir: Path, host: str) -> None:
    """Bind a free port, announce it on stdout and serve until SIGINT or SIGTERM."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.setblocking(False)
    app = Starlette(routes=[WebSocketRoute("/twilio", TwilioEndpoint(report_dir))])
    # Uvicorn's own handlers only flag the signal; its shutdown closes every socket with 1012, which
    # cancels each pipeline through on_client_disconnected. The grace timeout bounds the stragglers.
    config = uvicorn.Config(
        app, log_config=None, access_log=False, timeout_graceful_shutdown=1, lifespan="off"
    )
    server = uvicorn.Server(config)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await server.serve(sockets=[sock])


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--log-level", default="WARNING", help="for both Pipecat (loguru) and uvicorn")
    args = parser.parse_args()
    args.report_dir.mkdir(parents=True, exist_ok=True)
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s"
    )
    # Uvicorn re-raises a caught SIGTERM/SIGINT once it has shut down, through the handler it found
    # installed: make that one a plain exit, so a stopped bot exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    uvloop.run(serve(args.report_dir, args.host))


if __name__ == "__main__":
    main()
