"""One client WebSocket: validates its commands, relays them to the call's owner, and writes events back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from common import events, wire
from common.config import Settings
from common.errors import BadCommand, PbxError, RateLimited
from common.metrics import call_failed
from common.protocol import (
    MAX_TEXT_FRAME,
    SDP_CALL_TYPES,
    Accept,
    Command,
    Invite,
    command_body,
    command_to_dict,
    parse_command,
    redact,
)
from common.registry import Registry
from frontend.callsocket import CallSocket
from frontend.limits import CommandLimit, TokenBucket, describe
from frontend.metrics import COMMANDS_REFUSED, RATE_LIMIT_DROPS, SLOW_CLIENT_DROPS, CommandTimer

log = logging.getLogger("pbx.frontend.call")

MAX_BINARY_FRAME = 64 * 1024
# Messages held for a call whose media process has not claimed it yet.
MAX_UNCLAIMED = 500
# Outgoing audio frames queued for a slow client before new ones are dropped (100 = 2 s).
MAX_QUEUED_AUDIO = 100
# Outgoing events queued for a client that does not read before it is disconnected.
MAX_QUEUED_EVENTS = 2000
# Why binary messages on a socket whose call's audio goes elsewhere are not the caller's audio.
_NO_SOCKET_AUDIO = {
    "webrtc": "a WebRTC call carries its audio on the peer connection, not the socket",
    "sip": "a SIP call carries its audio on RTP with the SIP peer, not the socket",
}
# A socket's messages are handled back to back at most this long (s) before the loop gets a turn.
READ_SLICE = 0.005


class Relay(Protocol):
    """What a connection needs of its frontend process (frontend.hub.Hub, which holds the connections)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def proc_id(self) -> str: ...

    def send(self, proc: str, message: dict[str, Any]) -> None:
        """Queue `message` for process `proc` (the call's owner)."""

    def background(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run short-lived work as a named task whose failure is logged."""


class CallConnection:
    """The frontend half of a call: the client socket and the route to the media process that owns it."""

    def __init__(self, hub: Relay, call_id: str, call_type: str, ws: web.WebSocketResponse) -> None:
        self.hub = hub
        self.call_id = call_id
        self.call_type = call_type
        self.ws = ws
        self.created_ms = 0
        self.owner: str | None = None
        self._unclaimed: list[dict[str, Any]] = []
        self._unclaimed_dropped = False
        self._out: deque[tuple[str, Any]] = deque()
        self._queued_audio = 0
        self._wake = asyncio.Event()
        self._closing = False
        self.closed_by_server = False
        # The owner's events written to the socket: what a resumable call's owner need not hold for the next
        # socket (`gone {written}`, worker/call/resume.py).
        self.owner_events_written = 0
        self._replaced = False
        self._replaced_why = ""
        # This socket's id, in its `gone` and `resume`: a resumable call's owner tells its sockets apart.
        self.socket_id = secrets.token_hex(6)
        self._option_registered = False
        # Binary messages ignored on a call whose audio is not on the socket (told about once).
        self.ignored_audio = 0
        self.command_timer = CommandTimer()
        settings = hub.settings
        self._command_limit = CommandLimit(
            settings.ws_max_commands_per_sec, settings.ws_max_tts_pieces_per_sec
        )
        self._audio_frames = TokenBucket(settings.ws_max_audio_frames_per_sec)
        # Caller audio frames dropped for going over WS_MAX_AUDIO_FRAMES_PER_SEC.
        self.rate_dropped_audio = 0
        # At most one 429 per second about audio, and one per second of commands in the dump.
        self._audio_429 = TokenBucket(1.0)
        self._command_429_dump = TokenBucket(1.0)
        # Frames go straight to the transport when nothing waits ahead of them (CallSocket.send_now).
        self._direct: CallSocket | None = ws if isinstance(ws, CallSocket) else None
        if isinstance(ws, CallSocket):
            ws.too_big_event = self._too_big
            # Audio frames come from the socket's parser, without a task wake-up each (CallSocket).
            ws.on_binary = self._on_binary

    # --- client → owner ---------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read the client socket until it closes."""
        writer = asyncio.create_task(self._writer(), name=f"call:{self.call_id}:tx")
        claim_watch = asyncio.create_task(self._claim_watch(), name=f"call:{self.call_id}:claim")
        held = time.monotonic()
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._on_binary(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log.info("socket error: %s", self.ws.exception())
                    break
                # Messages already read return without yielding: a client's burst (a streamed reply's
                # thousands of `tts` pieces, or a flood) would hold this process's loop, and every other
                # call's audio through it, for as long as it takes to handle (~25 µs a message).
                if time.monotonic() - held > READ_SLICE:
                    await asyncio.sleep(0)
                    held = time.monotonic()
        finally:
            claim_watch.cancel()
            if not self.closed_by_server:
                self.client_gone()
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            with contextlib.suppress(asyncio.CancelledError):
                await claim_watch

    def _on_text(self, text: str) -> None:
        # Parsed before it is counted: which budget a command comes out of depends on what it is, and a
        # dropped one is named in its 429. Frames over MAX_TEXT_FRAME are refused unread.
        cmd: Command | None = None
        invalid: BadCommand | None = None
        try:
            cmd = parse_command(text, self.call_type)
        except BadCommand as exc:
            invalid = exc
        refused = self._command_limit.admit(cmd, len(text))
        if refused is not None:
            if refused is self._command_limit.pieces:
                what = "streamed tts pieces per second (WS_MAX_TTS_PIECES_PER_SEC)"
            else:
                what = "commands per second (WS_MAX_COMMANDS_PER_SEC)"
            self._reject(
                RateLimited(f"more than {refused.rate:g} {what}: dropped {describe(cmd, len(text))}"),
                dump=self._command_429_dump.take(),
            )
            return
        if invalid is not None:
            self._reject(invalid)
            return
        assert cmd is not None
        # Validated here, once: the owner gets the command typed (common/wire.py) and runs it as it is.
        body = command_body(cmd)
        if isinstance(cmd, Invite | Accept) and not self._option_registered:
            self._option_registered = True
            option = command_to_dict(cmd).get("option") or {}
            self.hub.background(self._register_option(option), f"call:{self.call_id}:option")
        if not self._command_limit.piece:
            # Timed, so acknowledged: for a stream's pieces that would double its messages, so they are not.
            body = self.command_timer.stamp(body)
        self._to_owner(wire.msg(self.call_id, wire.CMD, body))

    def _on_binary(self, data: bytes) -> None:
        if self.call_type in SDP_CALL_TYPES:
            # Not the caller's audio (RustPBX ignores it too): dropped here, never sent to the media process.
            self.ignored_audio += 1
            if self.ignored_audio == 1:
                why = _NO_SOCKET_AUDIO.get(self.call_type, "this call's audio is not on the socket")
                self._reject(BadCommand(f"{why}: binary messages are ignored"), sender="audio")
            return
        if not self._audio_frames.take():
            self.rate_dropped_audio += 1
            RATE_LIMIT_DROPS.inc()
            if self._audio_429.take():
                limit = self.hub.settings.ws_max_audio_frames_per_sec
                self._reject(
                    RateLimited(
                        f"more than {limit:g} audio frames per second (WS_MAX_AUDIO_FRAMES_PER_SEC): "
                        f"frames over the limit are dropped ({self.rate_dropped_audio} so far)"
                    ),
                    sender="audio",
                )
            return
        if len(data) > MAX_BINARY_FRAME:
            self._reject(
                BadCommand(
                    f"binary frame of {len(data)} bytes exceeds the {MAX_BINARY_FRAME}-byte "
                    "limit (send one 20 ms frame per message)"
                ),
                sender="audio",
            )
            return
        self._to_owner(wire.msg(self.call_id, wire.PCM, data))

    def _reject(self, exc: PbxError, sender: str = "command", dump: bool = True) -> None:
        ev = events.error(self.call_id, sender, exc.message, exc.status)
        self.push_event(ev)
        if sender == "command":
            COMMANDS_REFUSED.labels("rate_limit" if exc.status == 429 else "invalid").inc()
        # The owner keeps the dump; it records the error in order with everything else.
        if dump:
            self._to_owner(wire.msg(self.call_id, wire.LOG, ev))

    def _too_big(self) -> dict[str, Any]:
        """The error for a message over the socket's size limit, which closes the socket."""
        limit = self.ws.max_msg_size if isinstance(self.ws, CallSocket) else 0
        ev = events.error(
            self.call_id,
            "socket",
            f"a WebSocket message exceeds the {limit}-byte limit: the socket is closed "
            f"(commands are at most {MAX_TEXT_FRAME} bytes, audio frames {MAX_BINARY_FRAME})",
            413,
        )
        self._to_owner(wire.msg(self.call_id, wire.LOG, ev))
        return ev

    async def _register_option(self, option: dict[str, Any]) -> None:
        try:
            await self.hub.registry.update(self.call_id, option=json.dumps(redact(option)))
        except Exception as exc:  # listing details are best effort; the call goes on
            log.warning("could not store call option: %s", exc)

    def _to_owner(self, m: dict[str, Any]) -> None:
        if self.owner is not None:
            self.hub.send(self.owner, m)
        elif len(self._unclaimed) < MAX_UNCLAIMED or m["k"] != wire.PCM:
            self._unclaimed.append(m)
        elif not self._unclaimed_dropped:
            self._unclaimed_dropped = True
            self.push_event(
                events.error(
                    self.call_id,
                    "audio",
                    "audio sent before the call was set up was "
                    "dropped: no media worker has taken the call yet",
                    503,
                )
            )

    def client_gone(self) -> None:
        if self.owner is not None:
            self.hub.send(self.owner, wire.msg(self.call_id, wire.CTL, self._gone()))
        else:
            self.hub.background(self.hub.registry.remove(self.call_id), f"call:{self.call_id}:gone")

    def _gone(self) -> dict[str, Any]:
        return {
            "op": wire.Op.GONE,
            "frontend": self.hub.proc_id,
            "socket": self.socket_id,
            "written": self.owner_events_written,
        }

    def replace(self, why: str = "replaced by a new socket for this call") -> None:
        """A new socket takes the call over (or this frontend stops, and the call waits for one): what is
        queued goes out, then this socket closes with `why` and the owner hears how many of its events were
        written (`gone`), to send the rest to the next one."""
        if self._replaced:
            return
        self._replaced_why = why
        self._replaced = self._closing = True
        self._wake.set()

    async def _claim_watch(self) -> None:
        await asyncio.sleep(self.hub.settings.claim_timeout)
        if self.owner is None and not self._closing:
            log.warning("no media process claimed the call within %.1fs", self.hub.settings.claim_timeout)
            await self.hub.registry.remove(self.call_id)
            self.end_locally("no_worker", "no media worker is available to take the call", 503)

    def end_locally(self, reason: str, message: str, code: int) -> None:
        """End a call that has no owner: tell the client and close."""
        call_failed(self.call_type, reason)
        for ev in events.ended_by_system(self.call_id, message, code, reason, self.created_ms):
            self.push_event(ev)
        self.control({"op": wire.Op.CLOSE})

    # --- owner → client ---------------------------------------------------------------------------------

    def control(self, body: dict[str, Any]) -> None:
        op = body.get("op")
        if op == wire.Op.CLAIMED:
            self.owner = str(body["owner"])
            pending, self._unclaimed = self._unclaimed, []
            for m in pending:
                self.hub.send(self.owner, m)
        elif op == wire.Op.ACK:
            self.command_timer.acked(body.get("seq"))
        elif op == wire.Op.CLOSE:
            self._closing = True
            self._wake.set()
        elif op == wire.Op.REPLACED:  # a new socket resumes the call: this one closes, saying what it wrote
            self.replace(str(body.get("why") or "replaced by a new socket for this call"))
        elif op == wire.Op.RELAY:  # from another frontend's `/command` or `/events`, before the claim
            relayed = body.get("m")
            if isinstance(relayed, dict):
                self._to_owner(relayed)
        elif op == wire.Op.KILL:
            if self.owner is not None:
                self.hub.send(self.owner, wire.msg(self.call_id, wire.CTL, {"op": wire.Op.KILL}))
            else:
                self.end_locally("killed", "the call was killed before a media worker took it", 410)
                self.hub.background(self.hub.registry.remove(self.call_id), f"call:{self.call_id}:kill")

    def owner_event(self, ev: dict[str, Any]) -> None:
        """An event of the call's owner (counted once written: see `owner_events_written`)."""
        self.push_event(ev, "o")

    def push_event(self, ev: dict[str, Any], kind: str = "e") -> None:
        if self._replaced:
            return  # the owner holds it for the new socket
        direct = self._direct
        if direct is not None and not self._out and not self._closing:
            if direct.send_now(json.dumps(ev, separators=(",", ":"), ensure_ascii=False)):
                if kind == "o":
                    self.owner_events_written += 1
                return
        self._out.append((kind, ev))
        self._wake.set()
        if len(self._out) - self._queued_audio > MAX_QUEUED_EVENTS and not self._closing:
            log.warning("client too slow for events; disconnecting")
            self._closing = True
            if self.owner is not None:
                self.hub.send(self.owner, wire.msg(self.call_id, wire.CTL, self._gone()))
            self._out.clear()
            self._queued_audio = 0

    def push_audio(self, frame: bytes) -> None:
        # Nothing queued ahead and a transport keeping up (the usual case): written here, no task hop.
        direct = self._direct
        if direct is not None and not self._out and not self._closing and direct.send_now(frame):
            return
        if self._queued_audio >= MAX_QUEUED_AUDIO:
            SLOW_CLIENT_DROPS.value += 1
            return
        self._queued_audio += 1
        self._out.append(("a", frame))
        self._wake.set()

    async def _writer(self) -> None:
        ws = self.ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._out:
                kind, item = self._out.popleft()
                try:
                    if kind == "a":
                        self._queued_audio -= 1
                        await ws.send_bytes(item)
                    else:
                        await ws.send_str(json.dumps(item, separators=(",", ":"), ensure_ascii=False))
                        if kind == "o":
                            self.owner_events_written += 1
                except (ConnectionError, RuntimeError):
                    self._out.clear()
                    self._queued_audio = 0
                    return
            if self._closing:
                self.closed_by_server = True
                if self._replaced:
                    if self.owner is not None:
                        self.hub.send(self.owner, wire.msg(self.call_id, wire.CTL, self._gone()))
                    await ws.close(message=self._replaced_why.encode()[:123])
                else:
                    await ws.close()
                return

    def shutdown(self) -> None:
        """The frontend stops: the owner hangs the call up (the client gets `hangup`), then closes it."""
        if self.owner is not None:
            self.hub.send(self.owner, wire.msg(self.call_id, wire.CTL, {"op": wire.Op.SHUTDOWN}))
        else:
            self.end_locally("shutdown", "the server is shutting down", 503)

    async def server_close(self) -> None:
        """Shutdown of this frontend: the owner hangs the call up, the socket closes."""
        if self.owner is not None:
            self.hub.send(self.owner, wire.msg(self.call_id, wire.CTL, self._gone()))
        self.closed_by_server = True
        with contextlib.suppress(Exception):
            await self.ws.close()
