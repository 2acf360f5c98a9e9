"""One call: its WebSocket, its events and audio as they come, a method per command.

A reader task (`call:{id}:rx`) reads the socket into two buffers, events and audio frames; iterators and
`wait_for` read those buffers, each at its own position, so any number of them see every event. The call is
in one of four states:

- open: the socket is up;
- ended: the call's `hangup` came and the socket closed (or, for servers that send no `hangup` on `/call`,
  the server closed the socket normally): iterators end, `wait_for` raises `CallEnded`;
- dropped: the socket closed without the call ending: iterators and `wait_for` raise `CallClosed` (with the
  close code) once they have read everything that came before; `reconnect()` opens it again;
- closed: this client closed it (`close()`): iterators end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import aiohttp
import numpy as np

from pbxclient import commands as cmds
from pbxclient.audio import CODEC_RATES, AudioFrame, Decoder, Encoder, as_samples, resample
from pbxclient.errors import ApiError, CallClosed, CallEnded, CallRejected
from pbxclient.events import Answer, Event, Hangup, Reject, parse_event
from pbxclient.options import CallOption, RecorderOption, ReferOption, SynthesisOption
from pbxclient.wire import camel

if TYPE_CHECKING:
    from pbxclient.client import Client

log = logging.getLogger("pbxclient.call")

T = TypeVar("T")
EV = TypeVar("EV", bound=Event)
C = TypeVar("C", bound="Call")
P = ParamSpec("P")

OPEN, ENDED, DROPPED, CLOSED = "open", "ended", "dropped", "closed"
# How long a socket being replaced (`reconnect` while it is still open) may take to deliver what the server
# had queued for it before its close, before it is abandoned.
TAKEOVER_WAIT = 3.0
# An audio frame's message on a `/call/webrtc` or `/call/sip` socket (`option.subscribe`): a track byte,
# then 16 kHz s16le PCM.
SUBSCRIBE_RATE = 16000


class _Signal:
    """Wakes every waiter at once; a waiter takes `.event` before it sleeps (no await in between)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def notify(self) -> None:
        self.event.set()
        self.event = asyncio.Event()


class _Ring(Generic[T]):
    """An append-only buffer addressed by absolute position that keeps the newest `limit` items."""

    def __init__(self, limit: int | None = None) -> None:
        self.items: deque[T] = deque(maxlen=limit)
        self.start = 0

    @property
    def end(self) -> int:
        return self.start + len(self.items)

    def append(self, item: T) -> None:
        if self.items.maxlen is not None and len(self.items) == self.items.maxlen:
            self.start += 1
        self.items.append(item)

    def __getitem__(self, position: int) -> T:
        return self.items[position - self.start]


class EventIterator:
    """`async for ev in call.events()`: every event from `position` on. Ends when the call ends; raises
    `CallClosed` when the socket drops, and goes on from where it was after `call.reconnect()`."""

    def __init__(self, call: Call, position: int) -> None:
        self._call = call
        self.position = position

    def __aiter__(self) -> EventIterator:
        return self

    async def __anext__(self) -> Event:
        call = self._call
        while True:
            ring = call._events
            self.position = max(self.position, ring.start)
            if self.position < ring.end:
                self.position += 1
                return ring[self.position - 1]
            if call._state != OPEN:
                call._raise_if_dropped()
                raise StopAsyncIteration
            await call._event_signal.event.wait()


class AudioIterator:
    """`async for frame in call.audio()`: received audio frames (`AudioFrame`), decoded to int16. Ends and
    raises as `EventIterator` does. Frames older than the call's audio buffer are skipped."""

    def __init__(self, call: Call, position: int) -> None:
        self._call = call
        self.position = position

    def __aiter__(self) -> AudioIterator:
        return self

    async def __anext__(self) -> AudioFrame:
        call = self._call
        while True:
            ring = call._audio
            self.position = max(self.position, ring.start)
            if self.position < ring.end:
                self.position += 1
                return ring[self.position - 1]
            if call._state != OPEN and not call._audio_open():
                call._raise_if_dropped()
                raise StopAsyncIteration
            await call._audio_signal.event.wait()


class Call:
    """A call's socket. Made by `Client.call`, `webrtc_call`, `sip_call`, `attach` or `open`.

    `id` is the call id (the client picks `s.<uuid4>` when none is given, so that it is known at once and
    a dropped socket can be reopened with it); `path` the socket's route (`/call`, `/call/webrtc`,
    `/call/sip`). Use it as an async context manager to hang up (and close) on the way out.
    """

    def __init__(
        self,
        client: Client,
        path: str,
        call_id: str,
        params: dict[str, str],
        codec: str = "pcm",
        audio_frames: int = 3000,
    ) -> None:
        self.client = client
        self.id = call_id
        self.path = path
        self.codec = codec.lower()
        if self.codec not in CODEC_RATES:
            raise ValueError(f"unknown codec {codec!r} (expected one of {', '.join(CODEC_RATES)})")
        self._params = params
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._generation = 0
        self._state = OPEN
        self._closed: CallClosed | None = None
        self._events: _Ring[Event] = _Ring()
        self._audio: _Ring[AudioFrame] = _Ring(audio_frames)
        self._event_signal = _Signal()
        self._audio_signal = _Signal()
        self._taken: set[int] = set()
        self._hangup_sent = False
        self.answer: Answer | None = None
        self.hangup_event: Hangup | None = None
        pcm_rate = 16000 if client.flavor == "pbx" else 8000  # RustPBX and active-call send pcm at 8 kHz
        self._encoder: Encoder | None = None
        self._decoder: Decoder | None = None
        if path == "/call":
            self._encoder = Encoder(self.codec)
            self._decoder = Decoder(self.codec, pcm_rate if self.codec == "pcm" else None)
        self._next_frame_at: float | None = None

    # --- state ------------------------------------------------------------------------------------------

    @property
    def call_type(self) -> str:
        """`websocket`, `webrtc` or `sip`, from the socket's path."""
        return {"/call/webrtc": "webrtc", "/call/sip": "sip"}.get(self.path, "websocket")

    @property
    def sample_rate(self) -> int:
        """The rate `send_audio` expects by default: the codec's (pcm and g722 16 kHz, pcmu/pcma 8 kHz)."""
        return self._encoder.sample_rate if self._encoder is not None else 16000

    @property
    def receive_rate(self) -> int:
        """The rate of the frames `audio()` gives (pcm: 16 kHz from this server, 8 kHz from RustPBX and
        active-call)."""
        return self._decoder.sample_rate if self._decoder is not None else SUBSCRIBE_RATE

    @property
    def is_open(self) -> bool:
        return self._state == OPEN

    @property
    def ended(self) -> bool:
        """The call is over (its `hangup` came, or this client closed it)."""
        return self._state in (ENDED, CLOSED)

    @property
    def closed_error(self) -> CallClosed | None:
        """The `CallClosed` of the last drop, while the socket is down."""
        return self._closed if self._state == DROPPED else None

    @property
    def position(self) -> int:
        """How many events have come so far: pass as `after=` to `wait_for` to only look at later ones."""
        return self._events.end

    def received(self) -> list[Event]:
        """Every event so far, oldest first."""
        return list(self._events.items)

    def _audio_open(self) -> bool:
        """Whether audio may still come with the socket down (a WebRTC peer's)."""
        return False

    def _raise_if_dropped(self) -> None:
        if self._state == DROPPED and self._closed is not None:
            raise self._closed

    # --- the socket -------------------------------------------------------------------------------------

    def _start(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        previous = self._reader
        self._generation += 1
        self._ws = ws
        self._state = OPEN
        self._closed = None
        self._reader = asyncio.create_task(
            self._read(ws, self._generation, previous), name=f"call:{self.id}:rx"
        )

    async def _read(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        generation: int,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None and not previous.done():
            # The old socket's last events come first: the server writes to it what it had queued, then
            # closes it, and sends the rest to this one.
            done, _ = await asyncio.wait({previous}, timeout=TAKEOVER_WAIT)
            if not done:
                previous.cancel()
        code: int | None = None
        reason = ""
        try:
            while True:
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._on_binary(msg.data)
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    code, reason = msg.data, msg.extra or ""
                    break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    reason = str(ws.exception() or "connection error")
                    break
                else:  # CLOSING, CLOSED
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken connection ends the socket, never the reader's owner
            reason = str(exc)
        finally:
            with contextlib.suppress(Exception):
                await ws.close()
        if generation != self._generation or self._state != OPEN:
            return  # superseded by a newer socket, or closed by this client
        code = code if code is not None else ws.close_code or 1006
        self._socket_gone(code, reason)

    def _socket_gone(self, code: int, reason: str) -> None:
        normal_close = code == 1000 and self.client.flavor != "pbx" and self.path == "/call"
        if self.hangup_event is not None or normal_close:
            self._state = ENDED
        else:
            self._state = DROPPED
            self._closed = CallClosed(self.id, code, reason)
            log.info("call %s: socket closed (%s %s) without a hangup", self.id, code, reason)
        self._event_signal.notify()
        self._audio_signal.notify()

    def _on_text(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            log.warning("call %s: a text message that is not JSON: %.80s", self.id, text)
            return
        if not isinstance(data, dict):
            log.warning("call %s: a message that is not an object: %.80s", self.id, text)
            return
        event = parse_event(data)
        if isinstance(event, Answer) and not event.refer and self.answer is None:
            self.answer = event
        elif isinstance(event, Hangup) and not event.refer:
            self.hangup_event = event
        self._events.append(event)
        self._on_event(event)
        self._event_signal.notify()

    def _on_event(self, event: Event) -> None:
        """A hook for subclasses (WebRTC: the answer)."""

    def _on_binary(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        if self._decoder is not None:
            frame = AudioFrame(self._decoder.decode(data), self._decoder.sample_rate, at=loop.time())
        elif data:
            pcm = np.frombuffer(data, dtype="<i2", offset=1, count=(len(data) - 1) // 2).astype(np.int16)
            frame = AudioFrame(pcm, SUBSCRIBE_RATE, track=data[0], at=loop.time())
        else:
            return
        self._push_audio(frame)

    def _push_audio(self, frame: AudioFrame) -> None:
        self._audio.append(frame)
        self._audio_signal.notify()

    async def reconnect(self, conflict_wait: float = 0.0) -> None:
        """Open the socket again with the same id, path and query (this server's `option.resume`): the
        events the server held come first, then everything live, on the same iterators. If the old socket
        still looks open, the new one takes over and the old one's last events are read first.

        A 409 (the call is not resumable, or not yet: an `invite` still on its way) may be retried for
        `conflict_wait` seconds (none by default: this server records that a call is resumable before its
        `answer`). Raises `ApiError` (409) after that."""
        if self.ended:
            raise CallEnded(self.id, "the call is over; nothing to reconnect", self.hangup_event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + conflict_wait
        delay = 0.02
        while True:
            try:
                ws = await self.client._connect(self.path, self._params)
                break
            except ApiError as exc:
                remaining = deadline - loop.time()
                if exc.status != 409 or remaining <= 0:
                    raise
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.2)
        self._next_frame_at = None
        self._start(ws)

    async def close(self) -> None:
        """Close the socket without hanging up (the server ends the call, unless it has `option.resume`).
        Iterators end."""
        if self._state == OPEN:
            self._state = CLOSED
        elif self._state == DROPPED:
            self._state = CLOSED
        ws, reader = self._ws, self._reader
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._event_signal.notify()
        self._audio_signal.notify()
        self.client._forget(self)

    async def wait_ended(self, timeout: float | None = 10.0) -> Hangup | None:
        """Wait until the socket closes after the call's end; the `hangup` event (None from servers that
        send none). Raises `CallClosed` if the socket drops instead."""
        async with asyncio.timeout(timeout):
            while self._state == OPEN:
                await self._event_signal.event.wait()
        self._raise_if_dropped()
        return self.hangup_event

    async def __aenter__(self) -> Call:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Hang up (if the call is still up and nobody did), wait briefly for the end, close."""
        try:
            if self._state == OPEN and self.hangup_event is None and not self._hangup_sent:
                with contextlib.suppress(Exception):
                    await self.hangup()
            if self._state == OPEN:
                with contextlib.suppress(Exception):
                    await self.wait_ended(5.0)
        finally:
            await self.close()

    # --- events -----------------------------------------------------------------------------------------

    def events(self, replay: bool = True) -> EventIterator:
        """An iterator over the call's events: from the first one (`replay`) or from the next one."""
        return EventIterator(self, self._events.start if replay else self._events.end)

    @overload
    async def wait_for(
        self, kind: type[EV], timeout: float | None = 10.0, *, after: int | None = None, **match: Any
    ) -> EV: ...

    @overload
    async def wait_for(
        self,
        kind: str | tuple[type[Event], ...],
        timeout: float | None = 10.0,
        *,
        after: int | None = None,
        **match: Any,
    ) -> Event: ...

    async def wait_for(
        self,
        kind: type[Event] | str | tuple[type[Event], ...],
        timeout: float | None = 10.0,
        *,
        after: int | None = None,
        **match: Any,
    ) -> Event:
        """The oldest event of `kind` (a class, a tuple of classes, or a wire name) whose attributes equal
        `match` (snake_case; `play_id="x"`, `refer=None`), that no earlier `wait_for` returned; waits for
        it. `after`: only events from that `position` on.

        Raises `TimeoutError` (naming the events that did come), `CallEnded` if the call ends first,
        `CallClosed` if the socket drops first."""

        def matches(ev: Event) -> bool:
            if isinstance(kind, str):
                if ev.name != kind:
                    return False
            elif not isinstance(ev, kind):
                return False
            for key, want in match.items():
                got = getattr(ev, key) if hasattr(ev, key) else ev.fields.get(camel(key))
                if got != want:
                    return False
            return True

        ring = self._events
        scanned = after or 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for i in range(max(scanned, ring.start), ring.end):
                        if i not in self._taken and matches(ring[i]):
                            self._taken.add(i)
                            return ring[i]
                    scanned = ring.end
                    if self._state != OPEN:
                        self._raise_if_dropped()
                        raise CallEnded(
                            self.id, f"ended without {self._describe(kind, match)}", self.hangup_event
                        )
                    await self._event_signal.event.wait()
        except TimeoutError:
            raise TimeoutError(
                f"call {self.id}: no {self._describe(kind, match)} within {timeout} s; "
                f"events: {[e.name for e in ring.items]}{self._errors()}"
            ) from None

    @staticmethod
    def _describe(kind: type[Event] | str | tuple[type[Event], ...], match: Mapping[str, Any]) -> str:
        if isinstance(kind, str):
            name = kind
        elif isinstance(kind, tuple):
            name = "/".join(k.__name__ for k in kind)
        else:
            name = kind.__name__
        return f"{name} {dict(match)}" if match else name

    def _errors(self) -> str:
        said = [
            f"{e.get('sender')} {e.get('code')}: {e.get('error')}"
            for e in self._events.items
            if e.name == "error"
        ]
        return f"; errors: {said}" if said else ""

    async def _await_answer(self, timeout: float | None) -> Answer:
        """The call's answer; `CallRejected` if its `reject` or `hangup` comes first."""
        try:
            ev = await self.wait_for((Answer, Reject, Hangup), timeout, refer=None)
        except CallEnded as exc:
            raise CallRejected(self.id, exc.hangup or Event(name="closed")) from None
        if not isinstance(ev, Answer):
            raise CallRejected(self.id, ev)
        return ev

    # --- audio ------------------------------------------------------------------------------------------

    def audio(self, replay: bool = True) -> AudioIterator:
        """An iterator over received audio frames: from the oldest still held (`replay`; the last minute by
        default) or from the next one. On `/call`, the call's codec decoded to int16 at `receive_rate`; on
        `/call/webrtc` and `/call/sip`, `option.subscribe` frames (16 kHz, with their `track`)."""
        return AudioIterator(self, self._audio.start if replay else self._audio.end)

    def received_audio(self) -> list[AudioFrame]:
        """The received audio frames still held (the last `audio_buffer` seconds), oldest first."""
        return list(self._audio.items)

    async def read_audio(self, seconds: float, timeout: float | None = None) -> np.ndarray:
        """The next `seconds` of received audio (new frames only), concatenated; fewer samples if the call
        ends first or `timeout` runs out."""
        want = int(seconds * self.receive_rate)
        parts: list[np.ndarray] = []
        got = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async for frame in self.audio(replay=False):
                    parts.append(frame.samples)
                    got += len(frame.samples)
                    if got >= want:
                        break
        return np.concatenate(parts)[:want] if parts else np.zeros(0, dtype=np.int16)

    async def send_audio(
        self,
        pcm: np.ndarray | bytes | AudioFrame,
        sample_rate: int | None = None,
        pace: bool = True,
    ) -> None:
        """Send caller audio: int16 samples (a numpy array, an `AudioFrame`, or s16le bytes) at
        `sample_rate` (default: the frame's, else the codec's, `self.sample_rate`), resampled to the codec's
        rate if they differ, encoded and sent as 20 ms messages. `pace` sends them in real time (a stream
        kept in time across calls); without it they go at once (the server takes bursts of up to a second
        beyond real time). Samples that do not fill a frame wait for the next call or `flush_audio()`."""
        encoder = self._encoder
        if encoder is None:
            raise ValueError(f"{self.path} carries no caller audio on its socket (use a WebRTC or SIP peer)")
        samples, rate = as_samples(pcm)
        rate = sample_rate or rate or encoder.sample_rate
        if rate != encoder.sample_rate:
            samples = resample(samples, rate, encoder.sample_rate)
        await self._send_frames(encoder.encode(samples), pace)

    async def flush_audio(self, pace: bool = True) -> None:
        """Send the samples `send_audio` held back, padded with silence to a whole frame."""
        if self._encoder is not None:
            await self._send_frames(self._encoder.flush(), pace)

    async def _send_frames(self, frames: list[bytes], pace: bool) -> None:
        loop = asyncio.get_running_loop()
        for payload in frames:
            ws = self._socket()
            if pace:
                now = loop.time()
                if self._next_frame_at is None or self._next_frame_at < now - 0.06:
                    self._next_frame_at = now  # a new stream, or one that fell behind: start from now
                delay = self._next_frame_at - now
                if delay > 0:
                    await asyncio.sleep(delay)
                self._next_frame_at += 0.02
            try:
                await ws.send_bytes(payload)
            except (ConnectionError, aiohttp.ClientError) as exc:
                raise await self._send_failed(ws, exc) from None

    # --- commands ---------------------------------------------------------------------------------------

    def _socket(self) -> aiohttp.ClientWebSocketResponse:
        if self._state == DROPPED and self._closed is not None:
            raise self._closed
        if self._state != OPEN or self._ws is None:
            raise CallEnded(self.id, "the call is over", self.hangup_event)
        return self._ws

    async def _send_failed(self, ws: aiohttp.ClientWebSocketResponse, exc: Exception) -> CallClosed:
        """The error for a write that failed: the server's close as the reader gets it (a server that closes
        while a message is being written, over its size limit say, has usually sent its close frame), else
        the write's own error."""
        reader = self._reader
        if reader is not None and ws is self._ws:
            await asyncio.wait({reader}, timeout=0.5)
            if self._state == DROPPED and self._closed is not None:
                return self._closed
        return CallClosed(self.id, ws.close_code or 1006, str(exc))

    async def send(self, command: cmds.Command | Mapping[str, Any]) -> None:
        """Send a command: a `pbxclient.commands` object, or a JSON object as is (for fields this library
        does not know)."""
        body = cmds.command_to_dict(command) if isinstance(command, cmds.Command) else dict(command)
        ws = self._socket()
        try:
            await ws.send_str(json.dumps(body, separators=(",", ":")))
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise await self._send_failed(ws, exc) from None

    async def invite(self, option: CallOption | None = None) -> None:
        """Place the call (see `Client.call`, `webrtc_call`, `sip_call`, which also wait for the answer)."""
        await self.send(cmds.Invite(option=option or CallOption()))

    async def accept(self, option: CallOption | None = None) -> None:
        """Answer the inbound SIP call this socket is attached to."""
        await self.send(cmds.Accept(option=option or CallOption()))

    async def reject(self, reason: str = "Decline", code: int | None = None) -> None:
        await self.send(cmds.Reject(reason=reason, code=code))

    async def ringing(
        self,
        *,
        recorder: RecorderOption | None = None,
        early_media: bool | None = None,
        ringtone: str | None = None,
    ) -> None:
        await self.send(cmds.Ringing(recorder=recorder, early_media=early_media, ringtone=ringtone))

    async def tts(
        self,
        text: str,
        *,
        speaker: str | None = None,
        play_id: str | None = None,
        auto_hangup: bool | None = None,
        streaming: bool | None = None,
        end_of_stream: bool | None = None,
        wait_input_timeout: int | None = None,
        option: SynthesisOption | None = None,
        base64: bool | None = None,
        cache_key: str | None = None,
    ) -> None:
        """Speak `text` (see `commands.Tts`). For a streamed reply: `tts(piece, play_id=p, streaming=True)`
        per piece, then `tts("", play_id=p, streaming=True, end_of_stream=True)`."""
        await self.send(
            cmds.Tts(
                text=text,
                speaker=speaker,
                play_id=play_id,
                auto_hangup=auto_hangup,
                streaming=streaming,
                end_of_stream=end_of_stream,
                wait_input_timeout=wait_input_timeout,
                option=option,
                base64=base64,
                cache_key=cache_key,
            )
        )

    async def play(
        self,
        url: str,
        *,
        play_id: str | None = None,
        auto_hangup: bool | None = None,
        wait_input_timeout: int | None = None,
        offset_ms: int | None = None,
    ) -> None:
        await self.send(
            cmds.Play(
                url=url,
                play_id=play_id,
                auto_hangup=auto_hangup,
                wait_input_timeout=wait_input_timeout,
                offset_ms=offset_ms,
            )
        )

    async def interrupt(self, *, graceful: bool | None = None) -> None:
        await self.send(cmds.Interrupt(graceful=graceful))

    async def pause(self) -> None:
        await self.send(cmds.Pause())

    async def resume(self) -> None:
        """Resume paused playback (the `resume` command; reopening the socket is `reconnect`)."""
        await self.send(cmds.Resume())

    async def mute(self, track_id: str | None = None) -> None:
        await self.send(cmds.Mute(track_id=track_id))

    async def unmute(self, track_id: str | None = None) -> None:
        await self.send(cmds.Unmute(track_id=track_id))

    async def history(self, speaker: str, text: str) -> None:
        await self.send(cmds.History(speaker=speaker, text=text))

    async def hangup(
        self,
        reason: str | None = None,
        initiator: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        refer: bool | None = None,
    ) -> None:
        """End the call (`wait_ended()` waits for its end); `refer=True` ends only the transfer leg."""
        if not refer:
            self._hangup_sent = True
        await self.send(cmds.Hangup(reason=reason, initiator=initiator, headers=headers, refer=refer))

    async def refer(
        self,
        target: str | None = None,
        *,
        caller: str | None = None,
        callee: str | None = None,
        options: ReferOption | None = None,
    ) -> None:
        """Transfer the call. RustPBX reads `target`, active-call `callee`: with the active-call flavor a
        `target` is sent as `callee` (this server reads either)."""
        if self.client.flavor == "active-call" and callee is None:
            target, callee = None, target
        await self.send(cmds.Refer(target=target, caller=caller, callee=callee, options=options))

    async def candidate(self, candidates: list[str]) -> None:
        """Trickle ICE candidates. active-call no longer reads `candidate`: with that flavor each goes as
        an `addIceCandidate`."""
        if self.client.flavor == "active-call":
            for c in candidates:
                await self.add_ice_candidate(c)
        else:
            await self.send(cmds.Candidate(candidates=list(candidates)))

    async def add_ice_candidate(
        self, candidate: str, sdp_mid: str | None = None, sdp_m_line_index: int | None = None
    ) -> None:
        await self.send(
            cmds.AddIceCandidate(candidate=candidate, sdp_mid=sdp_mid, sdp_m_line_index=sdp_m_line_index)
        )

    async def custom(self, data: Any, sender: str | None = None) -> None:
        """(active-call, this server) Echoed back as a `Custom` event."""
        await self.send(cmds.Custom(data=data, sender=sender))

    async def bridge(self, target_session_id: str) -> None:
        """(active-call, this server) Each caller hears the other."""
        await self.send(cmds.Bridge(target_session_id=target_session_id))

    async def unbridge(self, target_session_id: str | None = None) -> None:
        await self.send(cmds.Unbridge(target_session_id=target_session_id))

    async def message(
        self, body: str, *, content_type: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """(active-call, this server) A SIP MESSAGE in the call's dialog (SIP calls only)."""
        await self.send(cmds.Message(body=body, content_type=content_type, headers=headers))

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.path} {self._state}>"


class Opening(Generic[C]):
    """What `Client.call()` and the other openers return, as aiohttp's `ws_connect` does: `await` it for
    the call, or use it as `async with client.call(...) as call:`, which on the way out hangs the call up
    (if nobody did) and closes its socket."""

    def __init__(self, coro: Coroutine[Any, Any, C]) -> None:
        self._coro = coro
        self._call: C | None = None

    def __await__(self) -> Generator[Any, None, C]:
        return self._coro.__await__()

    async def __aenter__(self) -> C:
        self._call = await self._coro
        return self._call

    async def __aexit__(self, *exc: object) -> None:
        if self._call is not None:
            await self._call.__aexit__(*exc)


def opening(method: Callable[P, Coroutine[Any, Any, C]]) -> Callable[P, Opening[C]]:
    """Make an async method that opens a call return an `Opening`."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Opening[C]:
        return Opening(method(*args, **kwargs))

    return wrapper
