"""Everything done with one call's caller audio: the audio clock, VAD, speech recognition (and later denoise,
DTMF, EOU). Frames come in as the client sends them; events go out through the call's hooks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from common import events
from common.choices import ASR_PROVIDERS, VAD_TYPES
from common.errors import ProviderError
from common.protocol import CallOption, TranscriptionOption
from worker import metrics
from worker.call.bargein import BargeIn
from worker.call.services import CallHooks, MediaServices
from worker.media.denoise import Denoiser
from worker.media.dtmf import DtmfDetector
from worker.media.vad import Discarded, Silence, Speaking, VadEvent, VadProcessor
from worker.speech.asr import AsrClient, Transcript
from worker.speech.context import SpeechContext
from worker.speech.eou import EouDetector
from worker.speech.smart_turn import SmartTurn

if TYPE_CHECKING:
    from worker.call.tracks import ServerSide

log = logging.getLogger("pbx.worker.call.listening")

# Past this lag behind wall time (ms), the caller's audio clock is re-anchored: the client paused sending.
MAX_AUDIO_CLOCK_LAG = 1000
PCM = np.dtype("<i2")


class CallerListener:
    """Owned by a session; built from the call option at `invite`. `input_detected` is called when the caller
    speaks or keys; `bot_digit` passes a key press on to the mediaPass bot."""

    def __init__(
        self,
        hooks: CallHooks,
        services: MediaServices,
        input_detected: Callable[[], None],
        bot_digit: Callable[[str], None],
    ) -> None:
        self.hooks = hooks
        self.services = services
        self.input_detected = input_detected
        self.bot_digit = bot_digit
        self.call_id = hooks.call_id
        self.vad: VadProcessor | None = None
        self.vad_events = False  # speaking/silence go to the client only when it asked for a VAD
        self.asr: AsrClient | None = None
        self.denoiser: Denoiser | None = None
        self.eou: EouDetector | None = None
        self.turn: SmartTurn | None = None  # eou type smart_turn
        self.barge: BargeIn | None = None  # vad.bargeIn
        # The server-side track (set by the session once built): what barge-in judges speech against.
        self.side: ServerSide | None = None
        # In-band DTMF is always listened for (RustPBX only reads RFC 4733 events and SIP INFO).
        self.dtmf = DtmfDetector()
        self._asr_first_audio: int | None = None
        self._frames = bytearray()
        self._t0: int | None = None
        self._samples = 0

    # --- set-up ------------------------------------------------------------------------------------------

    def configure(self, option: CallOption) -> None:
        s, services = self.hooks, self.services
        if option.denoise:
            self.denoiser = Denoiser()
        if option.vad is not None:
            self.vad_events = self._make_vad(option)
        if option.asr is not None:
            self._make_asr(option.asr)
        if option.vad is not None and option.vad.barge_in is not None and self.side is not None:
            self.barge = BargeIn(option.vad.barge_in, self.asr is not None, self.side, s.emit)
        if option.eou is not None and (option.eou.type or "").lower() == "smart_turn":
            try:
                self.turn = SmartTurn(option.eou, self._on_turn, self._on_turn_error, services.turn)
            except ValueError as exc:
                s.error("eou", str(exc), 400)
            if self.turn is not None and self.vad is None:
                self.vad = VadProcessor("webrtc", self._on_vad, batcher=services.silero)
        elif option.eou is not None:
            settings = services.settings
            # The endpoint is always the client's: the server's secrets go there only when its clients are
            # trusted (TRUST_CLIENTS), else the option brings its own or none is sent.
            lend = settings.trust_clients
            try:
                self.eou = EouDetector(
                    option.eou,
                    self.call_id,
                    self._on_eou,
                    self._on_eou_error,
                    guard=services.url_guard,
                    secret_id=settings.tencent_secret_id if lend else "",
                    secret_key=settings.tencent_secret_key if lend else "",
                )
            except ValueError as exc:
                s.error("eou", str(exc), 400)
            if self.eou is not None and self.vad is None:
                # The turn ends in silence: EOU brings its own VAD, whose events stay internal.
                self.vad = VadProcessor("webrtc", self._on_vad, batcher=services.silero)

    def _make_vad(self, option: CallOption) -> bool:
        vad = option.vad
        assert vad is not None
        engine = (vad.type or "webrtc").lower()
        if engine not in VAD_TYPES:
            self.hooks.error(
                "vad",
                f"option.vad.type: unknown VAD type {vad.type!r} (expected {', '.join(VAD_TYPES)})",
                400,
            )
            return False
        self.vad = VadProcessor(
            engine,
            self._on_vad,
            aggressiveness=vad.aggressiveness,
            threshold=vad.voice_threshold,
            speech_padding=vad.speech_padding,
            silence_padding=vad.silence_padding,
            silence_timeout=vad.silence_timeout,
            batcher=self.services.silero,
            offload=self.services.ten,
        )
        return True

    def _make_asr(self, option: TranscriptionOption) -> None:
        s, services = self.hooks, self.services
        provider = (option.provider or "local").lower()
        context = SpeechContext.for_call(self.call_id, services.settings, services.url_guard)
        client: AsrClient
        if provider == "local":
            from worker.speech.local_asr import LocalAsr

            client = LocalAsr(option, context, self._on_transcript, self._on_asr_error, services.whisper)
            if self.vad is None:
                # Local recognition works per utterance: it brings its own VAD, whose events stay internal.
                self.vad = VadProcessor("webrtc", self._on_vad, batcher=services.silero)
        elif provider == "tencent":
            from worker.speech.tencent_asr import TencentAsr

            client = TencentAsr(option, context, self._on_transcript, self._on_asr_error)
        elif provider == "voiceapi":
            from worker.speech.voiceapi_asr import VoiceApiAsr

            client = VoiceApiAsr(option, context, self._on_transcript, self._on_asr_error)
        else:
            s.error(
                "asr",
                f"option.asr.provider: unknown provider {option.provider!r} "
                f"(expected {', '.join(ASR_PROVIDERS)})",
                400,
            )
            return
        self.asr = client
        s.spawn(client.start(), f"asr-{provider}")

    # --- audio -------------------------------------------------------------------------------------------

    def feed(self, pcm: np.ndarray) -> None:
        """Caller audio after mute: cut into 20 ms frames stamped on the caller's audio clock."""
        now = events.now_ms()
        if self._t0 is None or now - (self._t0 + self._samples // 16) > MAX_AUDIO_CLOCK_LAG:
            self._t0 = now - self._samples // 16 - len(self._frames) // 32
        if not self._frames and pcm.size == 320:
            # The usual case, one whole frame and nothing held over: no re-framing. The DTMF bank keeps the
            # frame until its next flush, so it gets a read-only one: the frame itself when it is (a PCM
            # call's, straight over the message's bytes), else a copy.
            if pcm.flags.writeable or pcm.dtype != PCM:
                pcm = np.frombuffer(pcm.astype(PCM, copy=False).tobytes(), PCM)
            self._frame(pcm)
            return
        self._frames += pcm.astype(PCM, copy=False).tobytes()
        while len(self._frames) >= 640:
            frame = np.frombuffer(bytes(self._frames[:640]), PCM)
            del self._frames[:640]
            self._frame(frame)

    def _frame(self, frame: np.ndarray) -> None:
        """A 20 ms frame: to the process's DTMF bank, and (denoised when asked) to speech processing."""
        ts = self._t0 + self._samples // 16 if self._t0 is not None else 0
        self._samples += 320
        services = self.services
        services.dtmf.feed(self.dtmf, frame, self.digit)
        if self.denoiser is not None:
            services.denoise.submit(self.denoiser, self.denoiser.process, frame, ts, self._clean)
        else:
            self._clean(frame, ts)

    def digit(self, digit: str) -> None:
        """A key press: detected in-band here, or (later) from RTP telephone-events or SIP INFO."""
        s = self.hooks
        if s.ending():
            return
        self.input_detected()
        s.emit(events.event("dtmf", track_id=self.call_id, digit=digit))
        self.bot_digit(digit)

    def _clean(self, frame: np.ndarray, ts: int) -> None:
        """A frame ready for speech processing (denoised when asked)."""
        if self.hooks.ending():
            return
        if self.vad is not None:
            self.vad.feed(frame, ts)
        if self.turn is not None:
            self.turn.feed(frame, ts)
        if self.barge is not None:
            self.barge.tick(ts)
        if self.asr is not None:
            if self._asr_first_audio is None:
                self._asr_first_audio = ts
            self.asr.feed(frame, ts)

    # --- results -----------------------------------------------------------------------------------------

    def _on_vad(self, ev: VadEvent) -> None:
        s = self.hooks
        if s.ending():
            return
        if isinstance(ev, Speaking):
            if self.asr is not None:
                self.asr.speech_started(ev.start_ms)
            if self.eou is not None:
                self.eou.speech_started()
            if self.turn is not None:
                self.turn.speech_started(ev.start_ms)
            if self.barge is not None:
                self.barge.speech_started(ev.start_ms)
            if self.vad_events:
                self.input_detected()
                s.emit(events.event("speaking", track_id=self.call_id, start_time=ev.start_ms))
        elif isinstance(ev, Silence):
            if self.asr is not None and not ev.idle:
                self.asr.speech_ended(ev.start_ms, ev.start_ms + ev.duration_ms)
            if self.eou is not None and self.asr is None and not ev.idle:
                self.eou.turn_may_end(None)
            if self.turn is not None and not ev.idle:
                self.turn.paused(ev.start_ms + ev.duration_ms)
            if self.barge is not None and not ev.idle:
                self.barge.speech_ended(ev.start_ms + ev.duration_ms, ev.duration_ms)
            if self.vad_events:
                s.emit(
                    events.event(
                        "silence", track_id=self.call_id, start_time=ev.start_ms, duration=ev.duration_ms
                    )
                )
        elif isinstance(ev, Discarded):
            if self.asr is not None:
                self.asr.speech_discarded()
            if self.barge is not None:
                self.barge.speech_ended(ev.start_ms, None)

    def _on_transcript(self, t: Transcript) -> None:
        s = self.hooks
        if s.ending() or self.asr is None:
            return
        now = events.now_ms()
        provider = self.asr.provider
        self.input_detected()
        name = "asrFinal" if t.final else "asrDelta"
        s.emit(
            events.event(
                name,
                track_id=self.call_id,
                index=t.index,
                start_time=t.start_ms,
                end_time=t.end_ms,
                text=t.text,
            )
        )
        if self.barge is not None:  # after the words it judges
            self.barge.transcript(t.text, t.final, t.start_ms)
        since = self._asr_first_audio if self._asr_first_audio is not None else now
        if t.final:
            if t.end_ms is not None:
                metrics.ASR_FINAL_LATENCY.labels(provider).observe(max(0, now - t.end_ms) / 1000)
            # Local recognition knows when the words ended; the time to the final result counts from there.
            reference = t.end_ms if t.end_ms is not None and provider == "local" else since
            s.emit(
                events.event(
                    "metrics",
                    key=f"completed.asr.{provider}",
                    duration=max(0, now - reference),
                    data={"index": t.index},
                )
            )
            self._asr_first_audio = None
            if self.eou is not None:
                self.eou.turn_may_end(t.text)
            if self.turn is not None and t.text:
                self.turn.transcript(t.text)
        else:
            if self.eou is not None:
                self.eou.speech_started()
            reference = t.start_ms if t.start_ms is not None and provider == "local" else since
            s.emit(
                events.event(
                    "metrics",
                    key=f"ttfb.asr.{provider}",
                    duration=max(0, now - reference),
                    data={"index": t.index},
                )
            )

    def _on_eou(self, completed: bool, text: str | None) -> None:
        if not self.hooks.ending():
            self.hooks.emit(events.event("eou", track_id=self.call_id, completed=completed, text=text))

    def _on_turn(self, completed: bool, probability: float | None, text: str | None) -> None:
        if not self.hooks.ending():
            if probability is not None:
                probability = round(probability, 4)
            self.hooks.emit(
                events.event(
                    "eou", track_id=self.call_id, completed=completed, probability=probability, text=text
                )
            )

    def _on_turn_error(self, message: str) -> None:
        if not self.hooks.ending():
            self.hooks.error("eou", message, 500)

    def _on_eou_error(self, exc: ProviderError) -> None:
        if not self.hooks.ending():
            self.hooks.error("eou", exc.message, exc.status)

    def _on_asr_error(self, exc: ProviderError) -> None:
        s = self.hooks
        if s.ending() or self.asr is None:
            return
        metrics.SPEECH_ERRORS.labels("asr", self.asr.provider).inc()
        s.error(f"{self.asr.provider}_asr", exc.message, exc.status)

    # --- the end -----------------------------------------------------------------------------------------

    async def close(self) -> None:
        if self.vad is not None:
            self.vad.close()
        if self.eou is not None:
            await self.eou.close()
        if self.turn is not None:
            self.turn.close()
        if self.denoiser is not None:
            self.services.denoise.forget(self.denoiser)
            self.denoiser.close()
        if self.asr is not None:
            try:
                await asyncio.wait_for(self.asr.close(), 2)
            except Exception as exc:  # a provider that fails to close must not stop the hangup
                log.warning("closing %s asr: %s", self.asr.provider, exc)
