"""One call in its owning media process: commands in, events and audio out, on the 20 ms clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from typing import Any

import numpy as np

from common import events, wire
from common.errors import BadCommand
from common.events import SERVER_SIDE_TRACK
from common.logs import call_id_var
from common.protocol import (
    NAMES,
    SDP_CALL_TYPES,
    Accept,
    AddIceCandidate,
    Bridge,
    Candidate,
    Command,
    Custom,
    Hangup,
    History,
    Interrupt,
    Invite,
    Message,
    Mute,
    Pause,
    Play,
    Refer,
    Reject,
    Resume,
    Ringing,
    Tts,
    Unbridge,
    Unmute,
    command_to_dict,
    decode_command,
    redact,
)
from common.tasks import TaskSet, close_each
from worker import metrics
from worker.call.applink import AppLink
from worker.call.bridge import CallBridge
from worker.call.commands import CommandQueue, Parsed
from worker.call.inactivity import InactivityWatch
from worker.call.leg import CallLeg, LegHooks, WebSocketLeg
from worker.call.listening import CallerListener
from worker.call.mediapass import MediaPass
from worker.call.observers import Observers
from worker.call.recording import Recording
from worker.call.services import CallHooks, CallHost, MediaServices
from worker.call.speaking import CallSpeaker
from worker.call.subscribe import AudioMirror
from worker.call.tracks import ServerSide
from worker.call.transfer import Transfer, TransferTrack
from worker.media.audiofile import load_audio
from worker.media.cache import is_url
from worker.media.player import BridgePlayer
from worker.rtc.call_leg import RtcLeg
from worker.sip.call_leg import SipCall

log = logging.getLogger("pbx.worker.call.session")


class CallSession:
    """The owner's half of a call (design §2, §4). `services` are its media process's shared services, `host`
    the little it asks of that process (worker/call/services.py); its peer is reached through its leg.
    `server_track` is the trackId of what the server plays (the socket's `serverSideTrack`)."""

    def __init__(
        self,
        services: MediaServices,
        host: CallHost,
        call_id: str,
        call_type: str,
        frontend: str,
        dump: bool,
        created_ms: int,
        server_track: str = SERVER_SIDE_TRACK,
    ) -> None:
        self.services = services
        self.host = host
        self.call_id = call_id
        self.call_type = call_type
        self.created_ms = created_ms
        self.answer_ms: int | None = None
        self._ring_listed = False  # the leg's first ringing (`leg.ring_ms`) is in the registry
        # The option as `/call/lists` shows it (secrets redacted), kept to rebuild a lost registry entry.
        self.listed_option: str | None = None
        self.caller_muted = False
        self.ending = False
        self.frames_in = 0
        self.frames_out = 0
        self._frames_in = metrics.FRAMES_IN.labels(call_type)  # counted per frame: bound once
        self._frames_out = metrics.FRAMES_OUT.labels(call_type)
        self._setup_began: float | None = None
        self._caller_ssrc = random.getrandbits(32)
        self.transfer: Transfer | None = None
        # option.subscribe (worker/call/subscribe.py): None, the default, costs the hot path nothing more.
        self.mirror: AudioMirror | None = None
        self.hooks = CallHooks(
            call_id=call_id,
            emit=self.emit,
            error=self.error,
            spawn=self.spawn,
            hangup=self.hangup,
            ending=lambda: self.ending,
            server_track=server_track,
        )
        # The peer, by call type (worker/call/leg.py): chosen here, once.
        self.leg = make_leg(
            call_type,
            LegHooks(
                call=self.hooks,
                answered=self.media_up,
                caller_audio=self.caller_audio,
                digit=self._digit,
                notified=self._refer_notified,
                send_audio=self._send_audio,
            ),
            services,
        )
        self.listener = CallerListener(self.hooks, services, self.input_detected, self._bot_digit)
        # The server-side track and its timing rules (worker/call/tracks.py).
        self.tracks = ServerSide(
            call_id,
            self.emit,
            self._end_soon,
            lambda: self.ending,
            self._open_media,
            self._bot_done,
            track_id=server_track,
        )
        self.listener.side = self.tracks
        self.speaker = CallSpeaker(self.tracks, services, call_id, self.emit, lambda: self.ending)
        # Commands run one at a time, except beside a pending setup (worker/call/commands.py).
        self.commands = CommandQueue(self._parse, self._execute, self._is_setup, self.spawn)
        self._tasks = TaskSet(log, f"call:{call_id}:")
        # The recorder and the event dump (worker/call/recording.py).
        self.recording = Recording(self.hooks, services, dump)
        # The mediaPass bot, once the option names one (worker/call/mediapass.py).
        self.media_pass = MediaPass(self.hooks, services, self.tracks, lambda: self.answer_ms is not None)
        # Who watches the call through `/events/{id}` (worker/call/observers.py).
        self.observers = Observers(call_id, host.send)
        # Where the app's events and audio go, and how the call waits for a new socket (option.resume).
        self.app = AppLink(
            self.hooks,
            host,
            services.proc_id,
            frontend,
            lambda reason, initiator: host.end_soon(self, reason, initiator),
            lambda: self.answer_ms is not None,
            self.end_moh,
            lambda call_id, **fields: services.registry.update(call_id, **fields),
        )
        # A bridge with another live call, on any media process (worker/call/bridge.py).
        self.bridge = CallBridge(call_id, services.proc_id, host.send)
        # `option.inactivityTimeout` (in ms here), from the answer on (worker/call/inactivity.py).
        self._inactivity_ms: float = 0
        self.inactivity: InactivityWatch | None = None
        self.done = asyncio.Event()

    def start(self) -> None:
        metrics.CALLS_STARTED.labels(self.call_type).inc()
        self.spawn(self._run_commands(), "cmd")

    # --- inbound -----------------------------------------------------------------------------------------

    def deliver(self, kind: str, body: Any) -> None:
        if self.ending:
            return
        if kind == wire.PCM:
            self.leg.audio(body)
        elif kind == wire.BRG:
            self.bridge.feed(body)
        elif kind == wire.CMD:
            self.commands.put(body)
        elif kind == wire.LOG:
            self.recording.note("event", body)
        elif kind == wire.CTL:
            op = body.get("op")
            if op == wire.Op.KILL:
                self.spawn(self.hangup("killed", "system"), "kill")
            elif op == wire.Op.SHUTDOWN:  # the frontend is stopping and its drain time is over
                self.app.frontend_stops()
            elif op == wire.Op.GONE:
                self.app.gone(body)
            elif op == wire.Op.RESUME:
                self.app.resumed(str(body.get("frontend") or ""), body.get("socket") or None)
            elif op == wire.Op.WATCH:
                self.observers.watch(str(body.get("w") or ""), str(body.get("frontend") or ""))
            elif op == wire.Op.UNWATCH:
                self.observers.unwatch(str(body.get("w") or ""))
            elif op == wire.Op.BRIDGE:
                self.bridge.joined(str(body.get("peer") or ""), str(body.get("owner") or ""))
            elif op == wire.Op.UNBRIDGE:
                self.bridge.left(str(body.get("peer") or ""))

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run `coro` as the call's task `call:{id}:{name}`: cancelled on hangup, its failure logged."""
        # The task's context is copied now: whoever spawns it, its log lines carry this call's id.
        token = call_id_var.set(self.call_id)
        try:
            return self._tasks.spawn(coro, name)
        finally:
            call_id_var.reset(token)

    def caller_audio(self, pcm: np.ndarray) -> None:
        """Decoded caller audio (16 kHz int16), from the socket or the peer connection."""
        if self.ending:
            return
        self.frames_in += 1
        self._frames_in.value += 1
        if self.inactivity is not None:
            self.inactivity.heard = True
        self.recording.caller(pcm)
        if self.mirror is not None:
            self.mirror.peer(pcm)
        heard = np.zeros_like(pcm) if self.caller_muted else pcm
        self.listener.feed(heard)
        self.media_pass.caller_audio(heard)
        if self.bridge.active:
            self.bridge.caller_audio(heard)
        if self.transfer is not None:
            self.transfer.caller_audio(pcm)

    def input_detected(self) -> None:
        """The caller spoke or keyed: a pending waitInputTimeout no longer applies."""
        self.tracks.input_detected()

    def _digit(self, digit: str) -> None:
        self.listener.digit(digit)

    def _bot_digit(self, digit: str) -> None:
        self.media_pass.digit(digit)

    def _bot_done(self) -> None:
        self.media_pass.played_out()

    def _refer_notified(self, status: int, reason: str) -> None:
        if self.transfer is not None:
            self.transfer.notified(status, reason)

    # --- outbound ----------------------------------------------------------------------------------------

    @property
    def frontend(self) -> str:
        """The frontend holding the app's socket ("" while the call waits for one)."""
        return self.app.frontend

    def frontend_lost(self) -> None:
        """The frontend holding the socket died: the call ends, or waits for a new socket."""
        self.app.lost(None, "frontend_lost", "system")

    def emit(self, ev: dict[str, Any]) -> None:
        self.app.event(ev)
        self.recording.note("event", ev)
        if self.observers:
            self.observers.event(ev)
        if ev["event"] == "ringing" and not ev.get("refer"):
            self._list_ringing()

    def error(self, sender: str, message: str, code: int, track_id: str | None = None) -> None:
        self.emit(events.error(track_id or self.call_id, sender, message, code))

    def _send_audio(self, data: bytes) -> None:
        self.app.audio(data)

    def tick(self) -> None:
        """Advance one 20 ms frame of the media clock."""
        if self.app.moh_wanted is not None and self.tracks.track is None:
            self.play_moh(self.app.moh_wanted)  # waiting for a new socket, with nothing else playing
        frame = self.tracks.tick()
        if self.bridge.active:
            frame = self.bridge.mix(frame)
        if frame is not None:
            self.frames_out += 1
            self._frames_out.value += 1
            if self.mirror is not None:
                self.mirror.server_side(frame)
        self.leg.send(frame)  # None: nothing plays (an RTP stream still gets its silence)
        if self.transfer is not None:
            self.transfer.tick()
        self.recording.tick(frame, self.host.ticks)
        if self.inactivity is not None:
            self.inactivity.tick()

    # --- commands ----------------------------------------------------------------------------------------

    async def _run_commands(self) -> None:
        call_id_var.set(self.call_id)
        await self.commands.run(lambda: self.ending)

    def _parse(self, body: dict[str, Any]) -> Parsed | None:
        """A queued command body as its command, decoded by type: the frontend validated it (common/wire.py).
        A body that does not decode (none should) is logged and answered with an error event: None."""
        seq = body.pop(wire.SEQ, None) if isinstance(body, dict) else None
        try:
            cmd = decode_command(body)
        except Exception as exc:
            log.error("undecodable command body: %s", exc)
            self.recording.note("command", redact(body))
            self.error("command", f"command could not be read: {exc}", 400)
            self._ack(seq)
            return None
        if self.recording.dumping or self.observers or isinstance(cmd, Invite | Accept):
            canonical = command_to_dict(cmd)
            shown = redact(canonical)
            self.recording.note("command", shown)
            if self.observers:
                self.observers.command(shown)
            if isinstance(cmd, Invite | Accept):
                self.listed_option = json.dumps(redact(canonical.get("option") or {}))
        return cmd, seq

    async def _execute(self, cmd: Command, seq: int | None) -> None:
        try:
            await self._dispatch(cmd)
        except BadCommand as exc:
            self.error("command", exc.message, 400)
        except Exception as exc:
            name = NAMES[type(cmd)]
            log.exception("command %s failed", name)
            self.error("command", f"{name} failed: {exc}", 500)
        self._ack(seq)

    def _ack(self, seq: int | None) -> None:
        if seq is not None:  # handled: the frontend times the round trip
            self.app.control({"op": wire.Op.ACK, "seq": seq})

    def _is_setup(self, cmd: Command) -> bool:
        """An `invite` that waits for its peer (the SIP callee's answer, ICE gathering) runs beside the
        queue; on `/call` it answers at once, so it runs in line, like every other command."""
        return isinstance(cmd, Invite) and not self.leg.answers_at_once

    async def _dispatch(self, cmd: Command) -> None:
        match cmd:
            case Invite():
                await self._invite(cmd)
            case Play():
                self._play(cmd)
            case Interrupt():
                self.tracks.interrupt(bool(cmd.graceful))
            case Pause() | Resume():
                self.tracks.pause(isinstance(cmd, Pause))
            case Mute() | Unmute():
                self._mute(cmd.track_id, isinstance(cmd, Mute))
            case History():
                self.emit(events.event("addHistory", sender=self.call_id, speaker=cmd.speaker, text=cmd.text))
            case Custom():
                # active-call's echo: no trackId, and `data` as sent, even null.
                self.emit({**events.event("custom", sender=cmd.sender), "data": cmd.data})
            case Hangup() if cmd.refer:
                transfer = self.transfer
                if transfer is None or not transfer.hang_up(
                    cmd.reason or "normal_clearing", cmd.initiator or "caller"
                ):
                    self.error("hangup", "hangup.refer: no transfer leg to hang up", 409)
            case Hangup():
                if cmd.headers:
                    self.leg.bye_headers(cmd.headers)
                await self.hangup(cmd.reason or "normal_clearing", cmd.initiator or "caller")
            case Candidate():
                for line in cmd.candidates:
                    await self.leg.candidate(line, None, None)
            case AddIceCandidate():
                await self.leg.candidate(cmd.candidate, cmd.sdp_mid, cmd.sdp_m_line_index)
            case Tts():
                if self.answer_ms is None:
                    self.error("tts", "tts before the call is set up (send invite first)", 409)
                else:
                    self.speaker.tts(cmd)
            case Accept():
                await self._accept(cmd)
            case Reject():
                if not self.leg.bound or self.answer_ms is not None:
                    self.error("reject", "no pending call to reject", 400)
                elif self.leg.reject(cmd.code or 603, cmd.reason):
                    await self.hangup("rejected", "caller")
            case Ringing():
                await self._ringing(cmd)
            case Refer():
                await self._refer(cmd)
            case Bridge():
                why = await self.bridge.connect(self.services.registry, cmd.target_session_id)
                if why is not None:
                    self.error("command", why, 404 if "not found" in why else 400)
            case Unbridge():
                self.bridge.disconnect(cmd.target_session_id)
            case Message():
                self.leg.message(cmd)

    async def _invite(self, cmd: Invite) -> None:
        self._setup_began = time.monotonic()
        if self.answer_ms is not None:
            self.error("invite", "the call is already set up", 409)
            return
        option = cmd.option
        if not await self.leg.check_invite(option):
            return
        await self._prepare(option)
        if not await self.media_pass.connect(option):
            await self.hangup("failed", "system")
            return
        await self.leg.invite(option)  # the answer comes as media_up (or the call ends)

    async def _prepare(self, option: Any) -> None:
        """What every call type sets up from its option before media flows. A recorder file the client may
        not write refuses the command (BadCommand) before anything is set up."""
        path = None
        if option.recorder is not None and self.recording.recorder is None:
            path = await self.recording.path(option.recorder, "option.recorder")
        self.leg.configure(option)
        await self.app.configure(option.resume)
        self.listener.configure(option)
        # active-call mirrors SIP and WebRTC calls only: on /call the socket carries the audio already.
        if option.subscribe and self.call_type in SDP_CALL_TYPES and self.mirror is None:
            self.mirror = AudioMirror(self._send_audio)
        self.speaker.call_option = option.tts
        self._inactivity_ms = (option.inactivity_timeout or 0) * 1000
        if path is not None:
            await self.recording.start(path)

    async def media_up(self, sdp: str) -> None:
        """The call is answered: media flows from now on."""
        if self.ending or self.answer_ms is not None:
            return
        self.answer_ms = events.now_ms()
        if self._inactivity_ms > 0:
            self.inactivity = InactivityWatch(self.call_id, self._inactivity_ms, self.emit, self._end_soon)
        if self._setup_began is not None:
            metrics.SETUP_SECONDS.labels(self.call_type).observe(time.monotonic() - self._setup_began)
        self.emit(events.event("trackStart", track_id=self.call_id))
        self.emit(events.event("answer", track_id=self.call_id, sdp=sdp))
        self.media_pass.media_up()  # what the bot said before the answer plays now
        self.leg.answered()  # a WebSocket call's audio sent before the answer is heard now
        with contextlib.suppress(Exception):
            await self.services.registry.update(self.call_id, state="active", answered_at=self.answer_ms)

    # --- an inbound call -----------------------------------------------------------------------------------

    def attach_incoming(self, pending: Any) -> None:
        """An inbound SIP call (held by the telephony side) now has this session's socket."""
        if not isinstance(self.leg, SipCall):
            raise TypeError(f"an inbound SIP call cannot attach to a {self.call_type} session")
        self.leg.attach(pending)

    async def _accept(self, cmd: Accept) -> None:
        self._setup_began = time.monotonic()
        if not self.leg.bound or self.answer_ms is not None:
            self.error("accept", "no pending call to accept", 400)
            return
        await self._prepare(cmd.option)
        if not await self.media_pass.connect(cmd.option):
            self.leg.reject(503, "Service Unavailable")
            await self.hangup("failed", "system")
            return
        answer = await self.leg.accept()
        if answer is None:
            await self.hangup("failed", "system")
            return
        await self.media_up(answer)

    async def _ringing(self, cmd: Ringing) -> None:
        if not self.leg.bound or self.answer_ms is not None:
            self.error("ringing", "no pending call to ring (ringing answers an inbound SIP call)", 400)
            return
        if cmd.recorder is not None and self.recording.recorder is None:
            await self.recording.start(await self.recording.path(cmd.recorder, "recorder"))
        rang = await self.leg.ringing(cmd)
        self._list_ringing()
        if rang and cmd.ringtone:
            self._play(Play(url=cmd.ringtone), "ringing.ringtone")

    def _list_ringing(self) -> None:
        """When the call's own leg first rang (`leg.ring_ms`), for `/list`'s `ringTime`."""
        if not self._ring_listed and self.leg.ring_ms is not None:
            self._ring_listed = True
            self.spawn(self.services.registry.update(self.call_id, ringing_at=self.leg.ring_ms), "ringing")

    async def _refer(self, cmd: Refer) -> None:
        if self.answer_ms is None:
            self.error("refer", "refer needs a connected call", 409)
            return
        if self.transfer is not None and not self.transfer.ended:
            self.error("refer", "a transfer is already in progress", 409)
            return
        telephony = self.services.telephony
        if telephony is None:
            self.error("refer", "SIP is not available in this media process", 503)
            return
        # The transfer dials beside the queue: the call stays connected meanwhile, so every command runs
        # as it would without the transfer (a tts replaces the music on hold; hangup CANCELs the new leg).
        track = TransferTrack(self.play_moh, self.end_moh, self.start_bridge_track, self.end_bridge_track)
        self.transfer = Transfer(self.hooks, track, cmd, telephony, self.leg.sip_dialog())
        self.spawn(self._transfer(self.transfer), "refer")

    async def _transfer(self, transfer: Transfer) -> None:
        try:
            await transfer.start()
        except Exception as exc:
            log.exception("refer failed")
            self.error("refer", f"refer failed: {exc}", 500)

    def play_moh(self, url: str) -> None:
        self.tracks.play_moh(url)

    def end_moh(self) -> None:
        self.tracks.end_moh()

    def start_bridge_track(self, player: BridgePlayer, ssrc: int) -> None:
        self.tracks.start_bridge(player, ssrc)

    def end_bridge_track(self, player: BridgePlayer) -> None:
        self.tracks.end_bridge(player)

    def _mute(self, track_id: str | None, muted: bool) -> None:
        if track_id is None:
            self.caller_muted = self.tracks.muted = muted
        elif track_id == self.call_id:
            self.caller_muted = muted
        elif track_id == self.tracks.track_id:
            self.tracks.muted = muted
        else:
            raise BadCommand(
                f"trackId: no track {track_id!r} in this call "
                f"(use {self.call_id!r} or {self.tracks.track_id!r})"
            )

    # --- the server-side track (worker/call/tracks.py) -----------------------------------------------------

    def _play(self, cmd: Play, source_field: str = "play.url") -> None:
        self.tracks.play(
            cmd.url,
            cmd.play_id,
            bool(cmd.auto_hangup),
            cmd.wait_input_timeout or 0,
            source_field,
            offset_ms=cmd.offset_ms or 0,
        )

    async def _open_media(self, source: str) -> np.ndarray:
        """A file or URL as 16 kHz mono samples: a URL through the cache, a path only under MEDIA_PATH or
        the cache (worker/paths.py) unless clients are trusted."""
        proc = self.services
        threads = asyncio.get_running_loop()
        if is_url(source):
            f = await proc.cache.open(source)
        else:
            f = await threads.run_in_executor(proc.io, proc.media_roots.open, source)
        return await threads.run_in_executor(proc.cpu, load_audio, f, source)

    def _end_soon(self, reason: str, initiator: str) -> None:
        self.spawn(self.hangup(reason, initiator), reason.replace("_", "-"))

    def registry_fields(self) -> dict[str, str | int]:
        """This call's registry entry, written back when Redis restarted without it."""
        fields: dict[str, str | int] = {
            "id": self.call_id,
            "call_type": self.call_type,
            "state": "active" if self.answer_ms is not None else "claimed",
            "owner": self.services.proc_id,
            "frontend": self.frontend,
            "created_at": self.created_ms,
        }
        if self.answer_ms is not None:
            fields["answered_at"] = self.answer_ms
        if self.leg.ring_ms is not None:
            fields["ringing_at"] = self.leg.ring_ms
        if self.listed_option is not None:
            fields["option"] = self.listed_option
        return fields

    # --- the end -----------------------------------------------------------------------------------------

    async def hangup(self, reason: str, initiator: str) -> None:
        """End the call: final events, recorder and dump flushed, registry entry removed, socket closed."""
        if self.ending:
            return
        self.ending = True
        self.commands.cancel_setup()  # a ringing invite stops here; _finish CANCELs its INVITE
        metrics.call_ended(self.call_type, reason)
        log.info(
            "hangup reason=%s initiator=%s in=%d out=%d", reason, initiator, self.frames_in, self.frames_out
        )
        self.tracks.close()
        self.bridge.disconnect()
        now = events.now_ms()
        if self.answer_ms is not None:
            self.emit(
                events.event(
                    "trackEnd",
                    track_id=self.call_id,
                    timestamp=now,
                    duration=now - self.answer_ms,
                    ssrc=self._caller_ssrc,
                )
            )
        self.emit(
            events.event(
                "hangup",
                track_id=self.call_id,
                timestamp=now,
                reason=reason,
                initiator=initiator,
                start_time=events.rfc3339(self.created_ms),
                answer_time=events.rfc3339(self.answer_ms) if self.answer_ms is not None else None,
                ringing_time=events.rfc3339(self.leg.ring_ms) if self.leg.ring_ms is not None else None,
                hangup_time=events.rfc3339(now),
            )
        )
        await asyncio.shield(self._finish())

    async def _finish(self) -> None:
        # Each on its own: a bot link that fails to close must not cost the call its recording or dump. Each
        # resource is looked up when its turn comes, as a setup still ending may have just made it.
        await close_each(
            log,
            (
                ("transfer", lambda: self.transfer.close() if self.transfer is not None else None),
                ("bot link", lambda: self.media_pass.close()),
                (self.leg.name, lambda: self.leg.close()),
                ("listener", lambda: self.listener.close()),
                ("recorder", lambda: self.recording.close_recorder()),
                ("event dump", lambda: self.recording.close_dump()),
                ("registry entry", lambda: self.services.registry.remove(self.call_id)),
            ),
        )
        self.app.close()
        self.observers.end()
        self.host.session_ended(self)
        self._tasks.cancel()  # not the task running this hangup
        self.done.set()


def make_leg(call_type: str, hooks: LegHooks, services: MediaServices) -> CallLeg:
    """The leg of a call of `call_type` (worker/call/leg.py)."""
    if call_type == "webrtc":
        return RtcLeg(hooks, services.settings)
    if call_type == "sip":
        return SipCall(hooks, services)
    return WebSocketLeg(hooks)
