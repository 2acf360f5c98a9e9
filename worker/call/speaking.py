"""Everything done to speak on a call: the `tts` command's playback rules, providers, the synthesis cache and
the `metrics` of each synthesis. The server-side track (worker/call/tracks.py) plays; this fills its TTS
tracks with audio.

Rules (design §6, RustPBX's `tts`): a `tts` whose `playId` equals the live TTS track's (both absent counts
as equal) is appended to it and played after what is queued; any other `playId` interrupts that track and
starts a new one. A track ends once everything queued is played and nothing more can come: at once for
single commands, after `endOfStream` for `streaming: true`. Streamed text goes to the provider's own
streaming session where it has one (Tencent), else it is cut into sentences, each synthesized as it
completes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
import numpy as np

from common import events
from common.choices import TTS_PROVIDERS
from common.config import Settings
from common.errors import ProviderError, ProviderRefused
from common.protocol import SynthesisOption, Tts
from worker import metrics
from worker.call.tracks import ServerSide
from worker.media.cache import MediaCache, open_cached, temporary
from worker.media.tts_player import Segment, TtsPlayer
from worker.speech.context import SpeechContext
from worker.speech.tts import (
    SentenceSplitter,
    Subtitle,
    TtsAudio,
    TtsProvider,
    TtsSubtitles,
    strip_emoji,
)
from worker.urlguard import UrlGuard

if TYPE_CHECKING:
    from worker.speech.local_tts import PiperEngine  # loaded with the local voice, on its first use

log = logging.getLogger("pbx.worker.call.speaking")


@dataclass(slots=True, eq=False)
class Job:
    segment: Segment
    provider: TtsProvider
    play_id: str | None
    cache_path: Path | None = None
    received_ms: int = field(default_factory=events.now_ms)
    texts: asyncio.Queue[str | None] | None = None  # a native streaming session's text pieces


@dataclass(slots=True, eq=False)
class TtsRun:
    """One TTS track's synthesis: jobs done one after another, in the order the commands came."""

    player: TtsPlayer
    streaming: bool
    jobs: asyncio.Queue[Job] = field(default_factory=asyncio.Queue)
    splitter: SentenceSplitter | None = None
    option: SynthesisOption | None = None  # a streaming track keeps its first command's option
    texts: asyncio.Queue[str | None] | None = None
    stream_segment: Segment | None = None  # the one segment of a native streaming session
    seq: int = 0


def merge(base: SynthesisOption | None, over: SynthesisOption | None, speaker: str | None) -> SynthesisOption:
    """The command's option over the call's, field by field; the command's `speaker` over both."""
    option = base or SynthesisOption()
    if over is not None:
        changes = {f.name: getattr(over, f.name) for f in dataclasses.fields(over)}
        option = dataclasses.replace(option, **{k: v for k, v in changes.items() if v is not None})
    if speaker:
        option = dataclasses.replace(option, speaker=speaker)
    return option


def cache_file(cache_dir: str, provider: str, text: str, option: SynthesisOption, key: str | None) -> Path:
    """Where a synthesis is kept: by the client's `cacheKey`, else by everything that changes the audio."""
    ident = key or json.dumps(
        [
            provider,
            text,
            option.speaker,
            option.speed,
            option.samplerate or 16000,
            option.volume,
            option.emotion,
            option.codec,
        ],
        ensure_ascii=False,
    )
    return Path(cache_dir) / f"tts-{hashlib.sha256(ident.encode()).hexdigest()}.msgpack"


async def fill(seg: Segment, outputs: AsyncIterator[Any]) -> float | None:
    """Put what a provider's synthesis yields into `seg`, finished at the end; the time (monotonic) its
    first audio came, None when none did. The provider's iterator is closed however it ends."""
    first: float | None = None
    try:
        async for out in outputs:
            if isinstance(out, TtsAudio):
                if first is None:
                    first = time.monotonic()
                seg.add(out.samples, out.rate)
            elif isinstance(out, TtsSubtitles):
                seg.subtitles.extend(out.items)
    finally:
        closer = getattr(outputs, "aclose", None)
        if closer is not None:
            await closer()
    seg.finish()
    return first


def read_cache(path: Path) -> tuple[bytes, list[Subtitle]] | None:
    try:
        f = open_cached(path)  # its use is recorded: the cache evicts the least recently used first
        if f is None:
            return None
        with f:
            data = msgpack.unpackb(f.read())
        return bytes(data["audio"]), [Subtitle(*s) for s in data.get("subtitles", [])]
    except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException):
        return None


def write_cache(path: Path, audio: bytes, subtitles: list[Subtitle], largest: int) -> int:
    """Keep a synthesis (unless it is larger than the cache may hold); the bytes written."""
    subs = [[s.text, s.begin_ms, s.end_ms, s.begin_index, s.end_index] for s in subtitles]
    data = msgpack.packb({"audio": audio, "subtitles": subs})
    if len(data) > largest:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)  # each process its own: two may keep the same synthesis at once
    tmp.write_bytes(data)
    tmp.replace(path)
    return len(data)


class SpeechServices(Protocol):
    """What synthesis needs from its media process (worker/process.py's MediaProcess has it)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def url_guard(self) -> UrlGuard: ...
    @property
    def piper(self) -> PiperEngine: ...
    @property
    def io(self) -> Executor: ...  # the disk thread
    @property
    def cache(self) -> MediaCache: ...


def tts_provider(option: SynthesisOption, services: SpeechServices, call_id: str) -> TtsProvider:
    """The provider `option` names, checked (ProviderError when it cannot start); `call_id` names the call
    its requests are for."""
    name = (option.provider or "local").lower()
    context = SpeechContext.for_call(call_id, services.settings, services.url_guard)
    provider: TtsProvider
    if name == "local":
        from worker.speech.local_tts import LocalTts

        provider = LocalTts(option, context, services.piper)
    elif name == "tencent":
        from worker.speech.tencent_tts import TencentTts

        provider = TencentTts(option, context)
    elif name == "voiceapi":
        from worker.speech.voiceapi_tts import VoiceApiTts

        provider = VoiceApiTts(option, context)
    else:
        raise ProviderRefused(
            f"option.tts.provider: unknown provider {option.provider!r} "
            f"(expected {', '.join(TTS_PROVIDERS)})",
            400,
        )
    provider.check()
    return provider


class CallSpeaker:
    """A call's `tts` commands on its server-side track; `call_option` is the `tts` field of the `invite`.

    `emit` sends an event to the client; `ending` says whether the call is ending."""

    def __init__(
        self,
        tracks: ServerSide,
        services: SpeechServices,
        call_id: str,
        emit: Callable[[dict[str, Any]], None],
        ending: Callable[[], bool],
    ) -> None:
        self.tracks = tracks
        self.services = services
        self.call_id = call_id
        self._emit = emit
        self._ending = ending
        self.call_option: SynthesisOption | None = None

    # --- the command ---------------------------------------------------------------------------------------

    def tts(self, cmd: Tts) -> None:
        option = merge(self.call_option, cmd.option, cmd.speaker)
        track = self.tracks.track
        run = track.tts if track is not None and isinstance(track.tts, TtsRun) else None
        if track is None or run is None or track.play_id != cmd.play_id or run.player.closing:
            run = TtsRun(player=TtsPlayer(), streaming=bool(cmd.streaming))
            track = self.tracks.start_tts(cmd.play_id, run.player, run)
            track.loader = asyncio.create_task(self._synthesize(run), name=f"call:{self.call_id}:tts")
        if cmd.auto_hangup:
            track.auto_hangup = True  # a later command on the same track never takes it back
        if cmd.wait_input_timeout is not None:
            track.wait_input_timeout = cmd.wait_input_timeout
        if run.streaming:
            self._stream(run, cmd, option)
        elif cmd.text:
            self._queue(run, cmd, option, cmd.text)

    def _provider(self, option: SynthesisOption) -> TtsProvider:
        return tts_provider(option, self.services, self.call_id)

    def _queue(self, run: TtsRun, cmd: Tts, option: SynthesisOption, text: str) -> None:
        """One text (a command, or a streamed sentence) as a segment of the track."""
        seq: int | None = None if run.streaming else run.seq
        run.seq += 1
        if cmd.base64 and not run.streaming:
            run.player.add(self._raw_segment(seq, text, option))
            return
        spoken = strip_emoji(text).strip()
        if not spoken:
            return
        segment = Segment(seq=seq, text=spoken)
        run.player.add(segment)
        try:
            provider = self._provider(option)
        except ProviderError as exc:
            self._failed(segment, _sender(option), exc)
            return
        cache = None
        if not run.streaming:
            cache = cache_file(
                self.services.settings.media_cache_path, provider.name, spoken, option, cmd.cache_key
            )
        run.jobs.put_nowait(Job(segment=segment, provider=provider, play_id=cmd.play_id, cache_path=cache))

    def _raw_segment(self, seq: int | None, text: str, option: SynthesisOption) -> Segment:
        """`base64: true`: the text is s16le PCM at the TTS rate, played as it is."""
        segment = Segment(seq=seq, text="")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            self._failed(segment, "tts", ProviderRefused("text: not valid base64 (base64: true)", 400))
            return segment
        usable = len(raw) - len(raw) % 2
        segment.add(np.frombuffer(raw[:usable], dtype="<i2"), option.samplerate or 16000)
        segment.finish()
        return segment

    def _stream(self, run: TtsRun, cmd: Tts, option: SynthesisOption) -> None:
        if run.option is None:
            run.option = option
            run.player.open_input = True
            try:
                provider = self._provider(option)
            except ProviderError as exc:
                segment = Segment(seq=None, text="")
                run.player.add(segment)
                run.player.open_input = False
                self._failed(segment, _sender(option), exc)
                return
            if provider.native_streaming:
                run.texts = asyncio.Queue()
                segment = run.stream_segment = Segment(seq=None, text="")
                run.player.add(segment)
                run.jobs.put_nowait(
                    Job(segment=segment, provider=provider, play_id=cmd.play_id, texts=run.texts)
                )
            else:
                run.splitter = SentenceSplitter()
        if not run.player.open_input:
            return  # the stream already ended (endOfStream, a failure, or a graceful interrupt)
        text = strip_emoji(cmd.text)
        if run.texts is not None:
            if text and run.stream_segment is not None:
                run.stream_segment.text += text
                run.texts.put_nowait(text)
            if cmd.end_of_stream:
                run.texts.put_nowait(None)
                run.player.open_input = False
        elif run.splitter is not None:
            for sentence in run.splitter.push(text):
                self._queue(run, cmd, run.option, sentence)
            if cmd.end_of_stream:
                for sentence in run.splitter.flush():
                    self._queue(run, cmd, run.option, sentence)
                run.player.open_input = False

    # --- synthesis -----------------------------------------------------------------------------------------

    async def _synthesize(self, run: TtsRun) -> None:
        while True:
            job = await run.jobs.get()
            try:
                await self._job(job)
            except ProviderError as exc:
                metrics.SPEECH_ERRORS.labels("tts", job.provider.name).inc()
                self._failed(job.segment, f"{job.provider.name}_tts", exc)
            except Exception as exc:
                metrics.SPEECH_ERRORS.labels("tts", job.provider.name).inc()
                log.exception("tts synthesis failed")
                self._failed(job.segment, f"{job.provider.name}_tts", ProviderError(f"tts failed: {exc}"))

    async def _job(self, job: Job) -> None:
        services = self.services
        seg = job.segment
        loop = asyncio.get_running_loop()
        if job.cache_path is not None:
            hit = await loop.run_in_executor(services.io, read_cache, job.cache_path)
            if hit is not None:
                seg.audio += hit[0]
                seg.subtitles = hit[1]
                seg.finish()
                metrics.TTS_SYNTHESES.labels(job.provider.name, "cache").inc()
                self._metrics(job, 0, 0, cached=True)
                return
        asked = time.monotonic()
        outputs: AsyncIterator[Any]
        if job.texts is not None:
            outputs = job.provider.stream(_drain(job.texts))
        else:
            outputs = job.provider.synthesize(seg.text)
        first_at = await fill(seg, outputs)
        metrics.TTS_SYNTHESES.labels(job.provider.name, "provider").inc()
        now = events.now_ms()
        first = now  # (epoch ms) of the first audio, or of the end when none came
        if first_at is not None:
            metrics.TTS_FIRST_AUDIO.labels(job.provider.name).observe(first_at - asked)
            first -= round((time.monotonic() - first_at) * 1000)
        self._metrics(job, now - job.received_ms, first - job.received_ms, cached=False)
        if job.cache_path is not None and seg.received:
            cache = services.cache
            audio, subtitles = bytes(seg.audio), list(seg.subtitles)
            stored = loop.run_in_executor(
                services.io, write_cache, job.cache_path, audio, subtitles, cache.largest
            )
            stored.add_done_callback(partial(_cache_written, cache))

    def _metrics(self, job: Job, duration: int, ttfb: int, cached: bool) -> None:
        data: dict[str, Any] = {
            "playId": job.play_id,
            "cmdSeq": job.segment.seq,
            "length": len(job.segment.audio),
            "cached": cached,
            "ttfb": ttfb,
        }
        if cached and job.provider.option.speaker:
            data["speaker"] = job.provider.option.speaker
        self._emit(
            events.event(
                "metrics",
                key=f"completed.tts.{job.provider.name}",
                duration=duration,
                data={k: v for k, v in data.items() if v is not None},
            )
        )

    def _failed(self, segment: Segment, sender: str, exc: ProviderError) -> None:
        segment.failed = True
        segment.finish()
        if not self._ending():
            self._emit(events.error(self.tracks.track_id, sender, exc.message, exc.status))


async def _drain(texts: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (text := await texts.get()) is not None:
        yield text


def _sender(option: SynthesisOption) -> str:
    """The `sender` of a TTS error event: the provider's name, or plain `tts` for an unknown provider."""
    name = (option.provider or "local").lower()
    return f"{name}_tts" if name in TTS_PROVIDERS else "tts"


def _cache_written(cache: MediaCache, fut: asyncio.Future[int]) -> None:
    if fut.cancelled():
        return
    if fut.exception() is not None:
        log.warning("cannot store a synthesis in the cache: %s", fut.exception())
    else:
        cache.stored(fut.result())
