"""A call's connection to its mediaPass bot: one WebSocket, opened by the owner before the call is answered.

The media path never waits on the bot: caller audio is turned into messages on the tick and queued (at most
`MAX_OUTGOING`, the oldest dropped when the bot reads too slowly), and one writer task sends them in order.
One reader task turns the bot's messages into audio for the `BotPlayer`, marks and clears. The bot's audio
goes to the call through `on_audio`; that the bot went away, through `on_gone`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence

import aiohttp
import numpy as np

from common import events
from common.protocol import MediaPassOption
from common.redact import redact_url
from common.tasks import TaskSet
from worker import metrics
from worker.bot.dialect import BadBotMessage, BotAudio, BotClear, BotMark, Message, make_dialect
from worker.bot.player import BotPlayer
from worker.call.services import CallHooks
from worker.urlguard import UrlRefused

log = logging.getLogger("pbx.worker.bot")

CONNECT_TIMEOUT = 5.0
# Messages waiting for the bot, at most (2 s of 20 ms audio).
MAX_OUTGOING = 100
# How long the last messages (Twilio's `stop`) may take to go out when the call ends.
CLOSE_TIMEOUT = 1.0
MAX_BOT_MESSAGE = 4 * 1024 * 1024
NORMAL_CLOSES = (aiohttp.WSCloseCode.OK, aiohttp.WSCloseCode.GOING_AWAY)


class BotLink:
    """`http` gives the process's HTTP client; `on_audio` takes the bot's audio; `on_gone` hears that its
    socket closed (with the problem, None when the bot closed it)."""

    def __init__(
        self,
        hooks: CallHooks,
        http: Callable[[], aiohttp.ClientSession],
        option: MediaPassOption,
        extra: dict[str, object] | None,
        on_audio: Callable[[np.ndarray], None],
        on_gone: Callable[[str | None], None],
    ) -> None:
        self.hooks = hooks
        self.http = http
        self.on_audio = on_audio
        self.on_gone = on_gone
        self.option = option
        self.dialect = make_dialect(option, hooks.call_id, extra)
        self.player = BotPlayer(self._answer_mark)
        self.hangup_on_close = option.hangup_on_close is not False
        self.live = False  # the call is answered: caller audio flows to the bot
        self.gone = False  # the bot's socket is closed (or the call ended)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._out: deque[Message | None] = deque()  # None: the last one
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks = TaskSet(log, f"call:{hooks.call_id}:")
        self._complained = False

    @property
    def shown_url(self) -> str:
        return redact_url(self.option.url)

    # --- setting up ---------------------------------------------------------------------------------------

    async def connect(self) -> tuple[int, str] | None:
        """Open the socket; None once it is open, else the error event's code and why it could not be."""
        url = self.dialect.url(self.option.url)
        http = self.http()
        try:
            # No heartbeat: a bot that goes away closes its TCP connection, and aiohttp's ping timer
            # would hold a closed socket for 30 s. The bot's own pings are answered.
            ws = await asyncio.wait_for(
                http.ws_connect(url, autoping=True, max_msg_size=MAX_BOT_MESSAGE), CONNECT_TIMEOUT
            )
        except UrlRefused as exc:
            return 403, self._refused(exc.for_field("option.mediaPass.url", self.shown_url))
        except aiohttp.WSServerHandshakeError as exc:
            return 502, self._refused(
                f"the bot at {self.shown_url} refused the connection (HTTP {exc.status})"
            )
        except TimeoutError:
            return 502, self._refused(
                f"no connection to the bot at {self.shown_url} within {CONNECT_TIMEOUT:.0f} s"
            )
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            reason = str(exc).replace(self.option.url, self.shown_url).replace(url, self.shown_url)
            return 502, self._refused(
                f"cannot connect to the bot at {self.shown_url}: {reason or type(exc).__name__}"
            )
        metrics.BOT_CONNECTS.labels(self.dialect.name, "ok").inc()
        self._ws = ws
        self._queue(self.dialect.opened())
        self._writer = self._tasks.spawn(self._write(ws), "bot-write")
        self._reader = self._tasks.spawn(self._read(ws), "bot-read")
        return None

    def _refused(self, message: str) -> str:
        metrics.BOT_CONNECTS.labels(self.dialect.name, "failed").inc()
        log.warning("mediaPass: %s", message)
        return message

    def start(self) -> None:
        """The call is answered: the stream starts."""
        if self.gone or self.live:
            return
        self.live = True
        self._queue(self.dialect.started(events.now_ms()))

    # --- towards the bot -----------------------------------------------------------------------------------

    def caller_audio(self, pcm: np.ndarray) -> None:
        if self.live and not self.gone:
            self._queue(self.dialect.caller_audio(pcm, events.now_ms()))

    def digit(self, digit: str) -> None:
        if self.live and not self.gone:
            self._queue(self.dialect.digit(digit))

    def _answer_mark(self, name: str) -> None:
        if not self.gone:
            self._queue(self.dialect.mark(name))

    def _queue(self, messages: Sequence[Message | None]) -> None:
        if not messages:
            return
        self._out.extend(messages)
        excess = len(self._out) - MAX_OUTGOING
        for _ in range(excess):
            self._out.popleft()
        if excess > 0:
            metrics.BOT_DROPPED.inc(excess)
        self._wake.set()

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._out:
                    message = self._out.popleft()
                    if message is None:
                        return
                    if isinstance(message, bytes):
                        await ws.send_bytes(message)
                    else:
                        await ws.send_str(message)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            log.debug("mediaPass: sending to the bot failed: %s", exc)

    # --- from the bot --------------------------------------------------------------------------------------

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        problem: str | None = None
        code: int | None = None
        try:
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._handle(msg.data)
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    # The bot's own code: aiohttp's close_code turns 1006 when the bot shuts its end before
                    # our reply to its close frame is written.
                    code = msg.data
                    break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    problem = f"connection error: {ws.exception()}"
                    break
                elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    code = ws.close_code
                    break
        except (aiohttp.ClientError, ConnectionError) as exc:
            problem = f"connection error: {exc}"
        if self.gone:
            return  # the call ended first and closed it
        if problem is None and code not in NORMAL_CLOSES:
            problem = "closed without a close frame" if code in (None, 1006) else f"closed with code {code}"
        self._closed(problem)

    def _handle(self, data: str | bytes) -> None:
        try:
            actions = self.dialect.decode(data)
        except BadBotMessage as exc:
            if not self._complained:  # once per call: a bot that sends junk sends a lot of it
                self._complained = True
                self.hooks.error("mediaPass", str(exc), 400, track_id=self.hooks.server_track)
            return
        for action in actions:
            if isinstance(action, BotAudio):
                self.on_audio(action.pcm)
            elif isinstance(action, BotMark):
                self.player.mark(action.name)
            elif isinstance(action, BotClear):
                self.player.clear()

    def _closed(self, problem: str | None) -> None:
        self.gone = True
        self.player.closed = True
        if self._writer is not None:
            self._writer.cancel()
        metrics.BOT_ENDS.labels(self.dialect.name, "dropped" if problem else "closed").inc()
        log.info("mediaPass: the bot %s", f"dropped: {problem}" if problem else "closed the connection")
        self.on_gone(problem)

    # --- the end -----------------------------------------------------------------------------------------

    async def close(self) -> None:
        """The call ends: say so (Twilio's `stop`), then close the socket."""
        if self._ws is None:
            return
        ws, self._ws = self._ws, None
        was_gone, self.gone = self.gone, True
        writer = self._writer
        if writer is not None and not was_gone:
            self._queue([*(self.dialect.stopped() if self.live else []), None])
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, CLOSE_TIMEOUT)
        self.live = False
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT)
        if self._reader is not None:
            self._reader.cancel()
