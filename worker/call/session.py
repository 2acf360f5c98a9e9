"""One call in its owning media process: commands in, events and audio out, on the 20 ms clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common import events, wire
from common.errors import BadCommand
from common.events import SERVER_SIDE_TRACK
from common.logs import call_id_var
from common.protocol import (
    NAMES,
    Accept,
    AddIceCandidate,
    Candidate,
    Command,
    Hangup,
    History,
    Interrupt,
    Invite,
    Mute,
    Pause,
    Play,
    Refer,
    Reject,
    Resume,
    Ringing,
    Tts,
    Unmute,
    command_from_dict,
    redact,
    redact_url,
)
from common.tasks import TaskSet, close_each
from worker import metrics
from worker.bot.link import BotLink
from worker.bot.player import BotPlayer
from worker.call.commands import CommandQueue, Parsed
from worker.call.dump import EventDump
from worker.call.listening import CallerListener
from worker.call.speaking import CallSpeaker, TtsRun
from worker.call.transfer import Transfer
from worker.media.audiofile import AudioFileError, load_audio
from worker.media.cache import FetchError, is_url
from worker.media.codecs import Codec, make_codec
from worker.media.player import BridgePlayer, FilePlayer
from worker.media.recorder import CallRecorder
from worker.media.tts_player import TtsPlayer
from worker.paths import MediaNotFound, PathRefused, file_stem, inside, recorder_file
from worker.rtc.peer import RtcError, RtcPeer
from worker.sip.call_leg import SipCall
from worker.urlguard import UrlRefused

if TYPE_CHECKING:
    from worker.process import MediaProcess

log = logging.getLogger("pbx.worker.call.session")

# Audio a client may send before `invite`; it is decoded once the call is set up.
MAX_EARLY_AUDIO = 256 * 1024
SILENT_FRAME = np.zeros(320, dtype=np.int16)


@dataclass(slots=True)
class ServerTrack:
    """What is playing on the server-side track now."""

    play_id: str | None
    source: str
    started_ms: int
    auto_hangup: bool = False
    wait_input_timeout: int = 0
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    player: FilePlayer | TtsPlayer | BridgePlayer | BotPlayer | None = None
    loader: asyncio.Task[None] | None = None
    tts: TtsRun | None = None  # set on TTS tracks
    # The command field the file came from, named when it cannot be played.
    source_field: str = "play.url"


class CallSession:
    """The owner's half of a call (design §2, §4)."""

    def __init__(
        self, proc: MediaProcess, call_id: str, call_type: str, frontend: str, dump: bool, created_ms: int
    ) -> None:
        self.proc = proc
        self.call_id = call_id
        self.call_type = call_type
        self.frontend = frontend
        self.created_ms = created_ms
        self.answer_ms: int | None = None
        # The option as `/call/lists` shows it (secrets redacted), kept to rebuild a lost registry entry.
        self.listed_option: str | None = None
        self.codec: Codec = make_codec("pcm")
        self.recorder: CallRecorder | None = None
        self.server: ServerTrack | None = None
        self.caller_muted = False
        self.server_muted = False
        self.ending = False
        self.frames_in = 0
        self.frames_out = 0
        self._frames_in = metrics.FRAMES_IN.labels(call_type)  # counted per frame: bound once
        self._frames_out = metrics.FRAMES_OUT.labels(call_type)
        self._setup_began: float | None = None
        self._early = bytearray()
        self._early_overflow = False
        self._bad_audio = False
        self._caller_ssrc = random.getrandbits(32)
        self.rtc: RtcPeer | None = None
        self.sip: SipCall | None = None
        self.transfer: Transfer | None = None
        self.bot: BotLink | None = None  # option.mediaPass
        self._candidates: list[tuple[str, str | None, int | None]] = []  # trickled before the offer
        self.listener = CallerListener(self)
        self.speaker = CallSpeaker(self)
        # Commands run one at a time, except beside a pending setup (worker/call/commands.py).
        self.commands = CommandQueue(self._parse, self._execute, self._is_setup, self.spawn)
        self._wait_input: asyncio.Task[None] | None = None
        self._tasks = TaskSet(log, f"call:{call_id}:")
        settings = proc.settings
        self.dump = (
            EventDump(
                Path(settings.recorder_path) / f"{file_stem(call_id)}.events.jsonl",
                proc.io,
                proc.recorder_quota,
                self._dump_stopped,
            )
            if dump
            else None
        )
        self.done = asyncio.Event()

    def start(self) -> None:
        metrics.CALLS_STARTED.labels(self.call_type).inc()
        self.spawn(self._run_commands(), "cmd")

    # --- inbound -----------------------------------------------------------------------------------------

    def deliver(self, kind: str, body: Any) -> None:
        if self.ending:
            return
        if kind == wire.PCM:
            self.on_audio(body)
        elif kind == wire.CMD:
            self.commands.put(body)
        elif kind == wire.LOG:
            if self.dump:
                self.dump.add("event", body)
        elif kind == wire.CTL:
            op = body.get("op")
            if op == wire.Op.KILL:
                self.spawn(self.hangup("killed", "system"), "kill")
            elif op == wire.Op.SHUTDOWN:  # the frontend is stopping and its drain time is over
                self.proc.end_soon(self, "shutdown", "system")
            elif op == wire.Op.GONE:
                self.proc.end_soon(self, "connection_closed", "caller")

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run `coro` as the call's task `call:{id}:{name}`: cancelled on hangup, its failure logged."""
        # The task's context is copied now: whoever spawns it, its log lines carry this call's id.
        token = call_id_var.set(self.call_id)
        try:
            return self._tasks.spawn(coro, name)
        finally:
            call_id_var.reset(token)

    def on_audio(self, data: bytes) -> None:
        # Socket audio of a WebSocket call (the frontend drops it on the other call types).
        if self.answer_ms is None:
            if len(self._early) + len(data) > MAX_EARLY_AUDIO:
                if not self._early_overflow:
                    self._early_overflow = True
                    self.emit(
                        events.error(
                            self.call_id,
                            "audio",
                            "audio sent before invite exceeds the "
                            f"{MAX_EARLY_AUDIO}-byte buffer; the excess was dropped",
                            413,
                        )
                    )
                return
            self._early += len(data).to_bytes(4, "little") + data
            return
        try:
            pcm = self.codec.decode(data)
        except Exception as exc:
            if not self._bad_audio:
                self._bad_audio = True
                self.emit(
                    events.error(self.call_id, "audio", f"cannot decode {self.codec.name} audio: {exc}", 400)
                )
            return
        self.caller_audio(pcm)

    def caller_audio(self, pcm: np.ndarray) -> None:
        """Decoded caller audio (16 kHz int16), from the socket or the peer connection."""
        if self.ending:
            return
        self.frames_in += 1
        self._frames_in.value += 1
        if self.recorder is not None:
            self.recorder.caller(pcm.tobytes())
        heard = np.zeros_like(pcm) if self.caller_muted else pcm
        self.listener.feed(heard)
        if self.bot is not None:
            self.bot.caller_audio(heard)
        if self.transfer is not None:
            self.transfer.caller_audio(pcm)

    def input_detected(self) -> None:
        """The caller spoke or keyed: a pending waitInputTimeout no longer applies."""
        self._cancel_wait_input()

    def _replay_early_audio(self) -> None:
        buf, self._early = self._early, bytearray()
        i = 0
        while i + 4 <= len(buf):
            n = int.from_bytes(buf[i : i + 4], "little")
            self.on_audio(bytes(buf[i + 4 : i + 4 + n]))
            i += 4 + n

    # --- outbound ----------------------------------------------------------------------------------------

    def emit(self, ev: dict[str, Any]) -> None:
        self.proc.send(self.frontend, wire.msg(self.call_id, wire.EVT, ev))
        if self.dump is not None:
            self.dump.add("event", ev)

    def error(self, sender: str, message: str, code: int, track_id: str | None = None) -> None:
        self.emit(events.error(track_id or self.call_id, sender, message, code))

    def tick(self) -> None:
        """Advance one 20 ms frame of the media clock."""
        out: bytes | None = None
        frame: np.ndarray | None = None
        track = self.server
        if track is not None and track.player is not None and not track.player.paused:
            frame = track.player.next_frame()
            if frame is None:
                if track.player.finished:
                    self._finish_server_track(natural=True)
            else:
                if self.server_muted:
                    frame = SILENT_FRAME
                if self.recorder is not None:
                    out = frame.tobytes()
                if self.call_type == "websocket":
                    self.proc.send(self.frontend, wire.msg(self.call_id, wire.PCM, self.codec.encode(frame)))
                self.frames_out += 1
                self._frames_out.value += 1
        # Silence too: an RTP stream keeps its pace and timestamps whether or not anything plays.
        if self.rtc is not None and self.answer_ms is not None:
            self.rtc.push(SILENT_FRAME if frame is None else frame)
        elif self.sip is not None:
            self.sip.push(SILENT_FRAME if frame is None else frame)
        if self.transfer is not None:
            self.transfer.tick()
        if self.recorder is not None:
            self.recorder.tick(out)
        if self.dump is not None and self.proc.ticks % 10 == 0:
            self.dump.flush()

    # --- commands ----------------------------------------------------------------------------------------

    async def _run_commands(self) -> None:
        call_id_var.set(self.call_id)
        await self.commands.run(lambda: self.ending)

    def _parse(self, body: dict[str, Any]) -> Parsed | None:
        """A queued command body as a command (None after telling the client what is wrong with it)."""
        seq = body.pop(wire.SEQ, None)
        if self.dump is not None:
            self.dump.add("command", redact(body))
        if body.get("command") in ("invite", "accept") and isinstance(body.get("option"), dict):
            self.listed_option = json.dumps(redact(body["option"]))
        try:
            return command_from_dict(body, self.call_type), seq
        except BadCommand as exc:
            self.error("command", exc.message, 400)
        except Exception as exc:
            log.exception("command %s unreadable", body.get("command"))
            self.error("command", f"{body.get('command')} failed: {exc}", 500)
        self._ack(seq)
        return None

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
            self.proc.send(self.frontend, wire.msg(self.call_id, wire.CTL, {"op": wire.Op.ACK, "seq": seq}))

    def _is_setup(self, cmd: Command) -> bool:
        """An `invite` that waits for its peer (the SIP callee's answer, ICE gathering) runs beside the
        queue; on `/call` it answers at once, so it runs in line, like every other command."""
        return isinstance(cmd, Invite) and self.call_type != "websocket"

    async def _dispatch(self, cmd: Command) -> None:
        match cmd:
            case Invite():
                await self._invite(cmd)
            case Play():
                self._play(cmd)
            case Interrupt():
                if self.server is not None:
                    if cmd.graceful and isinstance(self.server.player, TtsPlayer):
                        self.server.player.graceful_stop()
                    else:
                        self._finish_server_track(natural=False)
            case Pause() | Resume():
                if self.server is not None and self.server.player is not None:
                    self.server.player.paused = isinstance(cmd, Pause)
            case Mute() | Unmute():
                self._mute(cmd.track_id, isinstance(cmd, Mute))
            case History():
                self.emit(events.event("addHistory", sender=self.call_id, speaker=cmd.speaker, text=cmd.text))
            case Hangup():
                await self.hangup(cmd.reason or "normal_clearing", cmd.initiator or "caller")
            case Candidate():
                for line in cmd.candidates:
                    await self._candidate(line, None, None)
            case AddIceCandidate():
                await self._candidate(cmd.candidate, cmd.sdp_mid, cmd.sdp_m_line_index)
            case Tts():
                if self.answer_ms is None:
                    self.error("tts", "tts before the call is set up (send invite first)", 409)
                else:
                    self.speaker.tts(cmd)
            case Accept():
                await self._accept(cmd)
            case Reject():
                if self.sip is None or self.answer_ms is not None:
                    self.error("reject", "no pending call to reject", 400)
                elif self.sip.reject(cmd.code or 603, cmd.reason):
                    await self.hangup("rejected", "caller")
            case Ringing():
                await self._ringing(cmd)
            case Refer():
                await self._refer(cmd)

    async def _invite(self, cmd: Invite) -> None:
        self._setup_began = time.monotonic()
        if self.answer_ms is not None:
            self.error("invite", "the call is already set up", 409)
            return
        option = cmd.option
        if self.call_type == "sip" and self.sip is not None:
            self.error("invite", "this is an inbound SIP call: answer it with accept (or reject)", 409)
            return
        if self.call_type == "webrtc" and not option.offer:
            self.error("invite", "option.offer: required for a WebRTC call (the browser's SDP offer)", 400)
            await self.hangup("failed", "system")
            return
        await self._prepare(option)
        if not await self._connect_bot(option):
            await self.hangup("failed", "system")
            return
        if self.call_type == "sip":
            if self.proc.telephony is None:
                self.error("invite", "SIP is not available in this media process", 503)
                await self.hangup("failed", "system")
                return
            self.sip = SipCall(self)
            await self.sip.dial(option)  # the answer comes as media_up (or the call ends)
            return
        sdp = ""
        if self.call_type == "webrtc":
            answer = await self._answer_webrtc(option)
            if answer is None:
                return
            sdp = answer
        await self.media_up(sdp)

    async def _prepare(self, option: Any) -> None:
        """What every call type sets up from its option before media flows. A recorder file the client may
        not write refuses the command (BadCommand) before anything is set up."""
        recording = None
        if option.recorder is not None and self.recorder is None:
            recording = await self._recording_path(option.recorder, "option.recorder")
        self.codec = make_codec(option.codec)
        self.listener.configure(option)
        self.speaker.call_option = option.tts
        if recording is not None:
            await self._start_recorder(recording)

    async def _connect_bot(self, option: Any) -> bool:
        """Open the mediaPass bot's socket if the option names one; False (the client told why) if not."""
        if option.media_pass is None or self.bot is not None:
            return True
        link = BotLink(self, option.media_pass, option.extra)
        refusal = await link.connect()
        if refusal is None and self.ending:  # the call ended while the bot was being reached
            await link.close()
            return False
        if refusal is None:
            self.bot = link
            return True
        code, problem = refusal
        self.error("mediaPass", problem, code)
        self.emit(events.event("reject", track_id=self.call_id, reason=f"mediaPass: {problem}", code=code))
        return False

    async def _recording_path(self, recorder_option: Any, where: str) -> Path:
        """Where the option's recording goes; BadCommand naming `<where>.recorderFile` if the client may
        not write there (docs/security.md)."""
        settings = self.proc.settings
        root, trusted = settings.recorder_path, settings.trust_clients
        try:
            path = recorder_file(root, recorder_option.recorder_file, self.call_id, trusted)
            if not trusted and not await asyncio.get_running_loop().run_in_executor(
                self.proc.io, inside, path, root
            ):
                raise PathRefused("leads outside RECORDER_PATH (through a symbolic link)")
        except PathRefused as exc:
            raise BadCommand(f"{where}.recorderFile: {exc}") from None
        return path

    async def _start_recorder(self, path: Path) -> None:
        quota = self.proc.recorder_quota
        if not await quota.admit():
            self.error(
                "recorder",
                "recording refused: the recordings' disk quota (RECORDER_QUOTA_MB) is used up; "
                "the call goes on unrecorded",
                507,
            )
            return
        if self.ending or self.recorder is not None:
            return
        recorder = CallRecorder(str(path), self.proc.io, quota.charge)
        try:
            await recorder.open()
            self.recorder = recorder
        except OSError as exc:
            self.error("recorder", f"cannot record to {self._shown(path)}: {exc.strerror or exc}", 500)

    def _shown(self, path: Path) -> str:
        """A recording's path as the client may see it: relative to RECORDER_PATH when under it."""
        try:
            return str(path.relative_to(self.proc.settings.recorder_path))
        except ValueError:
            return str(path)

    def _dump_stopped(self) -> None:
        self.error(
            "dump",
            "the event dump stopped: the recordings' disk quota (RECORDER_QUOTA_MB) is used up",
            507,
        )

    async def media_up(self, sdp: str) -> None:
        """The call is answered: media flows from now on."""
        if self.ending or self.answer_ms is not None:
            return
        self.answer_ms = events.now_ms()
        if self._setup_began is not None:
            metrics.SETUP_SECONDS.labels(self.call_type).observe(time.monotonic() - self._setup_began)
        self.emit(events.event("trackStart", track_id=self.call_id))
        self.emit(events.event("answer", track_id=self.call_id, sdp=sdp))
        if self.bot is not None:
            self.bot.start()
            if self.bot.player.pending and self.server is None:
                self._start_bot_track()  # what the bot said before the answer
        self._replay_early_audio()
        with contextlib.suppress(Exception):
            await self.proc.registry.update(self.call_id, state="active", answered_at=self.answer_ms)

    # --- SIP -----------------------------------------------------------------------------------------------

    def attach_incoming(self, pending: Any) -> None:
        """An inbound SIP call (held by the telephony side) now has this session's socket."""
        self.sip = SipCall(self)
        self.sip.attach(pending)

    async def _accept(self, cmd: Accept) -> None:
        self._setup_began = time.monotonic()
        if self.sip is None or self.answer_ms is not None:
            self.error("accept", "no pending call to accept", 400)
            return
        await self._prepare(cmd.option)
        if not await self._connect_bot(cmd.option):
            self.sip.reject(503, "Service Unavailable")
            await self.hangup("failed", "system")
            return
        answer = await self.sip.accept()
        if answer is None:
            await self.hangup("failed", "system")
            return
        await self.media_up(answer)

    async def _ringing(self, cmd: Ringing) -> None:
        if self.sip is None or self.answer_ms is not None:
            self.error("ringing", "no pending call to ring (ringing answers an inbound SIP call)", 400)
            return
        if cmd.recorder is not None and self.recorder is None:
            await self._start_recorder(await self._recording_path(cmd.recorder, "recorder"))
        if await self.sip.ringing(cmd) and cmd.ringtone:
            self._play(Play(url=cmd.ringtone), "ringing.ringtone")

    async def _refer(self, cmd: Refer) -> None:
        if self.answer_ms is None:
            self.error("refer", "refer needs a connected call", 409)
            return
        if self.transfer is not None and not self.transfer.ended:
            self.error("refer", "a transfer is already in progress", 409)
            return
        if self.proc.telephony is None:
            self.error("refer", "SIP is not available in this media process", 503)
            return
        # The transfer dials beside the queue: the call stays connected meanwhile, so every command runs
        # as it would without the transfer (a tts replaces the music on hold; hangup CANCELs the new leg).
        self.transfer = Transfer(self, cmd)
        self.spawn(self._transfer(self.transfer), "refer")

    async def _transfer(self, transfer: Transfer) -> None:
        try:
            await transfer.start()
        except Exception as exc:
            log.exception("refer failed")
            self.error("refer", f"refer failed: {exc}", 500)

    def play_moh(self, url: str) -> None:
        track = self._start_track(
            ServerTrack(play_id=url, source=url, started_ms=events.now_ms(), source_field="refer.options.moh")
        )
        track.loader = asyncio.create_task(self._load(track, loop=True), name=f"call:{self.call_id}:moh")

    def end_moh(self) -> None:
        if self.server is not None and isinstance(self.server.player, FilePlayer) and self.server.player.loop:
            self._finish_server_track(natural=False)
        elif self.server is not None and self.server.player is None and self.server.loader is not None:
            self._finish_server_track(natural=False)

    def start_bridge_track(self, player: BridgePlayer, ssrc: int) -> None:
        self._start_track(
            ServerTrack(play_id=None, source="refer", started_ms=events.now_ms(), player=player, ssrc=ssrc)
        )

    # --- the mediaPass bot ---------------------------------------------------------------------------------

    def bot_audio(self, pcm: np.ndarray) -> None:
        """Audio from the bot: it plays as the server-side track, unless the app put something else there."""
        bot = self.bot
        if bot is None or self.ending:
            return
        track = self.server
        if track is not None and track.player is not bot.player:
            bot.player.dropped += len(pcm)  # the app's play, tts or transfer has the track
            return
        if bot.player.add(pcm) and track is None and self.answer_ms is not None:
            self._start_bot_track()

    def _start_bot_track(self) -> None:
        assert self.bot is not None
        self._start_track(
            ServerTrack(play_id=None, source="mediaPass", started_ms=events.now_ms(), player=self.bot.player)
        )

    def bot_gone(self, problem: str | None) -> None:
        """The bot's socket closed: a drop is an error; the call ends unless the option says otherwise."""
        bot = self.bot
        if bot is None or self.ending:
            return
        if problem is not None:
            self.error(
                "mediaPass", f"the bot's connection dropped: {problem}", 502, track_id=SERVER_SIDE_TRACK
            )
        if not bot.hangup_on_close:
            return
        if problem is not None:
            self.spawn(self.hangup("bot_lost", "system"), "bot-lost")
        elif self.server is None or self.server.player is not bot.player or not bot.player.pending:
            self.spawn(self.hangup("bot_closed", "system"), "bot-closed")
        # else the bot's last words play out first; the end of its track hangs up

    def end_bridge_track(self, player: BridgePlayer) -> None:
        if self.server is not None and self.server.player is player:
            self._finish_server_track(natural=False)

    async def _answer_webrtc(self, option: Any) -> str | None:
        """The peer connection's answer, or None after telling the client why there is none."""
        peer = RtcPeer(
            self.call_id, self.proc.settings, self.caller_audio, self.listener.digit, self._rtc_ended
        )
        self.rtc = peer
        try:
            for line, mid, index in self._candidates:
                await peer.add_candidate(line, mid, index)
            self._candidates.clear()
            return await peer.answer(option.offer, option.handshake_seconds(), bool(option.enable_ipv6))
        except RtcError as exc:
            self.error("invite", str(exc), exc.code)
        except ValueError as exc:
            self.error("invite", str(exc), 400)
        await self.hangup("failed", "system")
        return None

    async def _candidate(self, line: str, sdp_mid: str | None, index: int | None) -> None:
        if self.call_type != "webrtc":
            return  # RustPBX's first API sent candidates on every call type; nothing uses them there
        if self.rtc is None:
            self._candidates.append((line, sdp_mid, index))
            return
        try:
            await self.rtc.add_candidate(line, sdp_mid, index)
        except ValueError as exc:
            self.error("candidate", str(exc), 400)

    def _rtc_ended(self, reason: str, initiator: str) -> None:
        self.spawn(self.hangup(reason, initiator), "rtc-ended")

    def _mute(self, track_id: str | None, muted: bool) -> None:
        if track_id is None:
            self.caller_muted = self.server_muted = muted
        elif track_id == self.call_id:
            self.caller_muted = muted
        elif track_id == SERVER_SIDE_TRACK:
            self.server_muted = muted
        else:
            raise BadCommand(
                f"trackId: no track {track_id!r} in this call (use {self.call_id!r} or {SERVER_SIDE_TRACK!r})"
            )

    # --- the server-side track ---------------------------------------------------------------------------

    def _start_track(self, track: ServerTrack) -> ServerTrack:
        """Put a new track on the server side, replacing (interrupting) whatever plays there."""
        if self.server is not None:
            self._finish_server_track(natural=False)
        self._cancel_wait_input()
        self.server = track
        self.emit(events.event("trackStart", track_id=SERVER_SIDE_TRACK, play_id=track.play_id))
        return track

    def _play(self, cmd: Play, source_field: str = "play.url") -> None:
        track = self._start_track(
            ServerTrack(
                play_id=cmd.play_id or cmd.url,
                source=cmd.url,
                started_ms=events.now_ms(),
                auto_hangup=bool(cmd.auto_hangup),
                wait_input_timeout=cmd.wait_input_timeout or 0,
                source_field=source_field,
            )
        )
        track.loader = asyncio.create_task(self._load(track), name=f"call:{self.call_id}:load")

    def start_tts_track(self, play_id: str | None, run: TtsRun) -> ServerTrack:
        return self._start_track(
            ServerTrack(play_id=play_id, source="tts", started_ms=events.now_ms(), player=run.player, tts=run)
        )

    async def _load(self, track: ServerTrack, loop: bool = False) -> None:
        proc, source = self.proc, track.source
        threads = asyncio.get_running_loop()
        try:
            if is_url(source):
                f = await proc.cache.open(source)
            else:  # only under MEDIA_PATH or the cache (worker/paths.py), unless clients are trusted
                f = await threads.run_in_executor(proc.io, proc.media_roots.open, source)
            samples = await threads.run_in_executor(proc.cpu, load_audio, f, source)
        except UrlRefused as exc:
            if self.server is track:
                message = exc.for_field(track.source_field, redact_url(source))
                self.emit(events.error(SERVER_SIDE_TRACK, f"filetrack: {source}", message, 403))
                self._finish_server_track(natural=True)
            return
        except (MediaNotFound, FetchError, AudioFileError, OSError) as exc:
            if self.server is track:
                problem = f"{track.source_field}: {exc}"
                self.emit(events.error(SERVER_SIDE_TRACK, f"filetrack: {source}", problem, 404))
                self._finish_server_track(natural=True)
            return
        if self.server is track:
            track.player = FilePlayer(samples, loop=loop)

    def _finish_server_track(self, natural: bool) -> None:
        track = self.server
        if track is None:
            return
        self.server = None
        if track.loader is not None and not track.loader.done():
            track.loader.cancel()
        now = events.now_ms()
        bot = self.bot
        if bot is not None and track.player is bot.player and not natural:
            bot.player.cut()  # an interrupt, or the app's own track: the bot's sentence is cut off
        if not natural and track.tts is not None:
            cut = track.tts.player.interruption()
            if cut is not None:
                self.emit(
                    events.event(
                        "interruption",
                        track_id=SERVER_SIDE_TRACK,
                        timestamp=now,
                        play_id=track.play_id,
                        **cut,
                    )
                )
        self.emit(
            events.event(
                "trackEnd",
                track_id=SERVER_SIDE_TRACK,
                timestamp=now,
                duration=now - track.started_ms,
                ssrc=track.ssrc,
                play_id=track.play_id,
            )
        )
        if not natural or self.ending:
            return
        if bot is not None and track.player is bot.player:
            if bot.gone and bot.hangup_on_close:
                self.spawn(self.hangup("bot_closed", "system"), "bot-closed")
            return
        if isinstance(track.player, TtsPlayer) and track.player.closing:
            return  # a graceful interrupt is still an interrupt: no autoHangup, no waitInputTimeout
        if track.auto_hangup:
            self.spawn(self.hangup("autohangup", "system"), "autohangup")
        elif track.wait_input_timeout > 0:
            self._wait_input = asyncio.create_task(
                self._wait_for_input(now, track.wait_input_timeout), name=f"call:{self.call_id}:wait-input"
            )

    async def _wait_for_input(self, since_ms: int, timeout_ms: int) -> None:
        await asyncio.sleep(timeout_ms / 1000)
        self._wait_input = None
        self.emit(
            events.event("silence", track_id=SERVER_SIDE_TRACK, start_time=since_ms, duration=timeout_ms)
        )

    def _cancel_wait_input(self) -> None:
        if self._wait_input is not None:
            self._wait_input.cancel()
            self._wait_input = None

    def registry_fields(self) -> dict[str, str | int]:
        """This call's registry entry, written back when Redis restarted without it."""
        fields: dict[str, str | int] = {
            "id": self.call_id,
            "call_type": self.call_type,
            "state": "active" if self.answer_ms is not None else "claimed",
            "owner": self.proc.proc_id,
            "frontend": self.frontend,
            "created_at": self.created_ms,
        }
        if self.answer_ms is not None:
            fields["answered_at"] = self.answer_ms
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
        self._finish_server_track(natural=False)
        self._cancel_wait_input()
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
                ("bot link", lambda: self.bot.close() if self.bot is not None else None),
                ("sip leg", lambda: self.sip.close() if self.sip is not None else None),
                ("peer connection", lambda: self.rtc.close() if self.rtc is not None else None),
                ("listener", lambda: self.listener.close()),
                ("recorder", lambda: self.recorder.close() if self.recorder is not None else None),
                ("event dump", lambda: self.dump.close() if self.dump is not None else None),
                ("registry entry", lambda: self.proc.registry.remove(self.call_id)),
            ),
        )
        self.proc.send(self.frontend, wire.msg(self.call_id, wire.CTL, {"op": wire.Op.CLOSE}))
        self.proc.session_ended(self)
        self._tasks.cancel()  # not the task running this hangup
        self.done.set()
