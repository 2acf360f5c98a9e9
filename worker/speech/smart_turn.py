"""Semantic end of turn (`option.eou.type: "smart_turn"`): has the caller finished, judged from the sound of
their last words, at each pause the VAD finds.

The model is Smart Turn v3.2 (Daily's, BSD-2-Clause), the ONNX file shipped inside the `pipecat-ai` wheel
(BSD-2-Clause): a Whisper-tiny encoder with a classifier head, reading Whisper log-mel features of the last
8 s of 16 kHz audio (worker/speech/turn_features.py) and answering the probability that the turn is complete.
Its graph is rewritten at load (worker/speech/turn_graph.py): its GELUs fused (the same answers, ~12 % less
CPU), its attention logits kept in float (answers as well ranked, ~20 % less), and any input length
accepted, so that it hears only the turn (6-14 ms a decision instead of ~26, its probabilities shifted to
match; see `WINDOWS`).
Nothing is downloaded: the file is found through the installed distribution's metadata, without importing
pipecat (whose import logs a banner and pulls in its frame machinery).

One `TurnBatcher` per media process owns the ONNX Runtime session (one intra-op thread) and runs every call's
requests on a thread of its own, off the event loop, handed over together. Each request is its own inference:
turns differ in length, on this model a batch costs more CPU per decision than single runs even at one
length (the whole window: ~23 ms alone, 27-34 ms each in batches of 4 or 16, bench/smart_turn.py), and single
runs let the first answer out before the last is done.

`TurnRule` is the decision on the caller's audio clock (pure, unit-tested on a virtual clock); `SmartTurn` is
a call's part: the last 8 s of audio, the rule, and the requests to the batcher.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import numpy as np

from common.protocol import EouOption
from worker.speech.turn_features import FRAMES, HOP, N_MELS, RATE, SAMPLES, log_mel
from worker.speech.turn_graph import GraphChanged, any_length

log = logging.getLogger("pbx.worker.smart_turn")

MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
DEFAULT_THRESHOLD = 0.5
# After an incomplete verdict, the turn still ends after this long a silence (ms, on the audio clock).
DEFAULT_INCOMPLETE_TIMEOUT_MS = 3000
# With no verdict (model failed or overloaded), the turn ends after this much silence: the `local` rule's.
SILENCE_FALLBACK_MS = 600
# Audio kept before the turn's first speech, as pipecat does (the model was trained with it).
PRE_SPEECH_MS = 500
# A request that waited longer than this behind others for the model is not run: the silence timer decides
# that pause.
MAX_WAIT_S = 1.0
FRAME_MS = 20
# The model hears the turn up to this long after its last loud frame (RMS at least LOUD_DBFS, the VAD's
# onset level). Its verdict depends on the trailing silence: "I would like to" followed by 40-200 ms of
# silence is 0.08-0.22, by 240-400 ms 0.57-0.70 (bench/smart_turn.py --sweep); pipecat feeds it ~200 ms
# (its VAD's stop time). The VADs here end an utterance 100-300 ms after the words, by engine and hangover.
TRAILING_MS = 120
LOUD_DBFS = -40.0
LOUD_POWER = 10 ** (LOUD_DBFS / 10)  # mean square of full-scale samples
# What the model hears (SMART_TURN_WINDOW): the short window (the default, "turn"): the turn and MARGIN_FRAMES
# of padding before it (feature frames, 10 ms each) rounded up to whole steps, at most the turn's last
# LONGEST_FRAMES (4 input lengths, each warmed once; ~3 ms per 100 frames, 6-14 ms a decision); or the
# model's own 8-s window, turns padded in front as it was trained (~26 ms of CPU a decision). The short
# window's probabilities run lower than the 8-s window's on the same turns (its ranking holds: the same AUC),
# so its log-odds get SHORT_SHIFT added: fit on the sentences tuned on, and on 360 held-out turns it decides
# as well as the 8-s window (AUC 0.641 against 0.635, accuracy 0.617 against 0.589; bench/turn_window.py
# --shift). "whole" pins the 8-s window; "auto" hears a question in it unless it waited SHORTEN_AFTER_S for
# the model. docs/performance.md has the figures.
WINDOWS = ("turn", "whole", "auto")  # the first is the default
SHORTEN_AFTER_S = 0.05
# An early question's answer at least this sure (or the client's threshold, if higher) ends the turn at once,
# before the VAD calls the pause: on the labelled set the same verdicts as waiting for the pause, where at
# the plain threshold (0.5) one more turn of 180 ended early (bench/turn_eval.py). The short window's
# answers reach CONFIDENT_SHORT on about as many finished turns (171 of 270) as the 8-s window's reach
# CONFIDENT (175), and on fewer cut-off ones (86 against 100; bench/turn_window.py --shift's turns). The 8-s
# window's 0.7 would end the e2e test's "I would" (0.77, heard in a gap inside "I would like to").
CONFIDENT = 0.8
CONFIDENT_SHORT = 0.7
MARGIN_FRAMES = 50
STEP_FRAMES = 100
LONGEST_FRAMES = 400
SHORT_SHIFT = 1.1
# The VAD's silencePadding (default 100 ms) is kept for the VAD smart_turn brings: at 60 ms, pauses are
# judged 40-60 ms sooner, but the gaps between words become pauses too, heard with too little silence after
# them ("I would like | to": 0.52, complete) and twice the model's CPU (bench/smart_turn.py, 2026-12-04).


def model_path() -> Path:
    """The Smart Turn v3.2 CPU model inside the installed pipecat-ai distribution (no download)."""
    path = Path(str(distribution("pipecat-ai").locate_file(MODEL_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"the pipecat-ai distribution has no {MODEL_FILE}")
    return path


def trim_trailing(audio: np.ndarray) -> np.ndarray:
    """`audio` (16 kHz int16) cut TRAILING_MS after its last loud 20 ms frame (unchanged when none is loud
    or it ends sooner: a noise floor above the level keeps everything)."""
    step = RATE // 1000 * FRAME_MS
    whole = len(audio) // step
    if whole == 0:
        return audio
    x = audio[: whole * step].astype(np.float32).reshape(whole, step) / 32768.0
    loud = np.nonzero(np.einsum("ij,ij->i", x, x) / step >= LOUD_POWER)[0]
    if len(loud) == 0:
        return audio
    end = (int(loud[-1]) + 1) * step + TRAILING_MS * RATE // 1000
    return audio[:end]


def is_loud(frame: np.ndarray) -> bool:
    """Whether a frame's RMS reaches LOUD_DBFS (what `trim_trailing` cuts after)."""
    if len(frame) == 0:
        return False
    x = frame.astype(np.float32) / 32768.0
    return float(np.dot(x, x)) / len(x) >= LOUD_POWER


def import_graph_tools() -> None:
    """Import what loading the model needs that nothing else of the process imports (warm-up): `onnx` takes
    ~0.65 s to import, holding the interpreter all along, which stalled the event loop of a process whose
    first smart_turn call came in (setup p99 ~0.5 s at 100 such calls). The model itself (~55 MiB) still
    loads with the first call that asks for it."""
    import onnx  # noqa: F401


def window_frames(samples: int) -> int:
    """How many feature frames the model reads for a turn of `samples` (at most the whole window)."""
    need = min(samples, SAMPLES) // HOP + MARGIN_FRAMES
    return min(LONGEST_FRAMES, -(-need // STEP_FRAMES) * STEP_FRAMES)


def shifted(probability: float, logit_shift: float = SHORT_SHIFT) -> float:
    """`probability` with `logit_shift` added to its log-odds."""
    lifted = probability * math.exp(logit_shift)
    return lifted / (lifted + (1.0 - probability))


def inference_session(graph: bytes) -> Any:
    """An ONNX Runtime session on one thread: the process sets one per numeric library; more would fight the
    loop and the VAD."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class TurnModel:
    """The ONNX Runtime session, shared by the process's calls; `predict` blocks (run it off the loop). It
    runs the rewritten graph (worker/speech/turn_graph.py); a model file it cannot rewrite runs as shipped,
    always on the whole window."""

    def __init__(self) -> None:
        graph = model_path().read_bytes()
        try:
            graph = any_length(graph)
            self.can_shorten = True
        except GraphChanged as exc:
            log.warning("smart turn model runs as shipped, on the whole window only (%s)", exc)
            self.can_shorten = False
        self._session = inference_session(graph)
        short = range(STEP_FRAMES, LONGEST_FRAMES + 1, STEP_FRAMES) if self.can_shorten else []
        for frames in [FRAMES, *short]:
            self._run(np.zeros((1, N_MELS, frames), dtype=np.float32))

    def predict(self, audio: np.ndarray, whole: bool = True) -> float:
        """Probability that the turn ended with this audio (16 kHz int16, its last 8 s count), heard in the
        model's whole window or (`whole=False`) the short one, whose answer is `shifted` to the whole's
        scale."""
        features = log_mel(audio)
        if whole or not self.can_shorten:
            return self._run(features[None, :, :])
        return shifted(self._run(np.ascontiguousarray(features[None, :, -window_frames(len(audio)) :])))

    def _run(self, features: np.ndarray) -> float:
        (out,) = self._session.run(None, {"input_features": features})
        return float(np.asarray(out).reshape(-1)[0])


@dataclass(slots=True)
class _Request:
    owner: object
    audio: np.ndarray
    done: Callable[[float | None, str | None], None]
    queued: float = field(default_factory=time.monotonic)
    cancelled: bool = False


class TurnBatcher:
    """Every call's requests, run on the process's turn thread in one hand-off, each reported when done;
    `window` is SMART_TURN_WINDOW (`WINDOWS`)."""

    def __init__(self, run_off_loop: Callable[..., Any], window: str = "turn") -> None:
        if window not in WINDOWS:
            raise ValueError(f"smart turn window: one of {', '.join(WINDOWS)}, got {window!r}")
        self._run_off_loop = run_off_loop
        self._window = window
        self._model: TurnModel | None = None
        self._queue: list[_Request] = []
        self._wake = asyncio.Event()
        self.decisions = 0
        self.shortened = 0  # decisions heard in the short window
        self.late = 0
        self._ready_at = 0.0  # when the model was loaded
        self._wanted = False
        self._running = False

    def submit(
        self, owner: object, audio: np.ndarray, done: Callable[[float | None, str | None], None]
    ) -> None:
        """`done(probability, None)` once judged, `done(None, reason)` if it could not be."""
        for request in self._queue:
            if request.owner is owner:
                request.cancelled = True  # a newer pause of the same call replaces it
        self._queue.append(_Request(owner, audio, done))
        self._wake.set()

    @property
    def confident(self) -> float:
        """How sure an early answer must be to end a turn before the VAD's pause (an idle model's answer:
        in the 8-s window unless the window is "turn")."""
        return CONFIDENT_SHORT if self._window == "turn" else CONFIDENT

    def idle(self) -> bool:
        """Whether the model is loaded and neither runs nor has a request waiting."""
        return self._model is not None and not self._running and not any(not r.cancelled for r in self._queue)

    def forget(self, owner: object) -> None:
        for request in self._queue:
            if request.owner is owner:
                request.cancelled = True
        self._queue = [r for r in self._queue if r.owner is not owner]

    async def warm_up(self) -> None:
        if self._model is None:
            self._model = await self._run_off_loop(TurnModel)  # warmed up as it loads
            self._ready_at = time.monotonic()

    def prepare(self) -> None:
        """A call will ask: load the model now (off the loop), not at its first pause."""
        self._wanted = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._model is None and (self._wanted or self._queue):
                try:
                    self._model = await self._run_off_loop(TurnModel)
                    self._ready_at = time.monotonic()
                except Exception as exc:
                    log.exception("smart turn model failed to load")
                    batch, self._queue = self._queue, []
                    for request in batch:
                        request.done(None, f"model failed to load: {exc}")
                    continue
            while self._queue and self._model is not None:
                batch, self._queue = self._queue, []
                self._running = True
                try:
                    await self._run_off_loop(self._judge, self._model, batch, asyncio.get_running_loop())
                finally:
                    self._running = False

    def _judge(self, model: TurnModel, batch: list[_Request], loop: asyncio.AbstractEventLoop) -> None:
        """On the turn thread: each request in turn, its answer posted to the loop as soon as it is known."""
        for request in batch:
            if request.cancelled:
                continue
            # How long it waited behind other questions (a wait for the model to load is no backlog).
            behind = time.monotonic() - max(request.queued, self._ready_at)
            if behind > MAX_WAIT_S:
                self.late += 1
                loop.call_soon_threadsafe(request.done, None, "late")
                continue
            whole = self._window == "whole" or (self._window == "auto" and behind < SHORTEN_AFTER_S)
            self.shortened += not whole
            try:
                prob: float | None = model.predict(request.audio, whole)
                reason = None
            except Exception as exc:  # reported to the call; the timer decides
                log.exception("smart turn inference failed")
                prob, reason = None, f"inference failed: {exc}"
            self.decisions += 1
            loop.call_soon_threadsafe(request.done, prob, reason)


@dataclass(frozen=True, slots=True)
class Ask:
    """Judge the audio up to now; the answer goes back with `generation`."""

    generation: int


@dataclass(frozen=True, slots=True)
class Decision:
    """An `eou` to send."""

    completed: bool
    probability: float | None


class TurnRule:
    """When to ask the model, and what its answers mean, on the caller's audio clock (ms).

    - each pause (the VAD closed an utterance) asks the model; speech before the answer makes it moot;
    - probability ≥ threshold: `eou{completed:true}`, the turn is over;
    - below: `eou{completed:false}` at once, and if the caller stays silent `incomplete_timeout` ms from
      the pause's start, `eou{completed:true}` (same probability: the timer ended it, not the model);
    - no answer (model failed, or too late for it): no `completed:false`; the turn ends as the `local` rule
      ends it, `silence_fallback` ms after the pause's start (an overloaded process degrades to the silence
      timer, not to the long wait meant for turns the model heard as unfinished).
    """

    def __init__(self, threshold: float, incomplete_timeout: int) -> None:
        self.threshold = threshold
        self.incomplete_timeout = incomplete_timeout
        self.silence_fallback = min(SILENCE_FALLBACK_MS, incomplete_timeout)
        self.generation = 0
        self.turn_start: int | None = None
        self._pause_start: int | None = None
        self._deadline: int | None = None
        self._probability: float | None = None

    def speech(self, ts_ms: int) -> None:
        self.generation += 1
        self._deadline = None
        self._pause_start = None
        if self.turn_start is None:
            self.turn_start = ts_ms

    @property
    def speaking(self) -> bool:
        """In a turn, and no pause since its last speech."""
        return self.turn_start is not None and self._pause_start is None

    def pause(self, pause_start_ms: int) -> Ask | None:
        if self.turn_start is None:
            return None
        self._pause_start = pause_start_ms
        return Ask(self.generation)

    def answer(self, generation: int, probability: float | None, now_ms: int) -> list[Decision]:
        if generation != self.generation or self._pause_start is None:
            return []
        wait = self.incomplete_timeout if probability is not None else self.silence_fallback
        self._deadline = self._pause_start + wait
        self._probability = probability
        if probability is not None and probability >= self.threshold:
            return [self._end(probability)]
        out = [Decision(False, probability)] if probability is not None else []
        return out + self.tick(now_ms)

    def tick(self, now_ms: int) -> list[Decision]:
        if self._deadline is not None and now_ms >= self._deadline:
            return [self._end(self._probability)]
        return []

    def _end(self, probability: float | None) -> Decision:
        self.turn_start = None
        self._pause_start = None
        self._deadline = None
        return Decision(True, probability)


@dataclass(slots=True)
class _Early:
    """A question put to the model before the VAD called the pause (see `SmartTurn`)."""

    generation: int
    audio: np.ndarray
    answered: bool = False
    probability: float | None = None
    reason: str | None = None
    pause: Ask | None = None  # the pause that waits for this answer


def _same_input(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the model hears `a` and `b` alike: the same last 8 s (or the same audio, if shorter)."""
    if len(a) != len(b) and min(len(a), len(b)) < SAMPLES:
        return False
    return bool(np.array_equal(a[-SAMPLES:], b[-SAMPLES:]))


class SmartTurn:
    """One call's semantic EOU: fed the caller's frames, told of speech and pauses by the call's VAD.

    The model hears a turn cut TRAILING_MS after its last loud frame, so its question is known that long
    after the words, while the VAD often calls the pause later (its hangover, then `silencePadding`). When
    the caller has been quiet TRAILING_MS inside an utterance and the model is idle (nothing running or
    waiting: a busy process spends no CPU on guesses), the question is put at once (an early question). An
    answer at least the batcher's `confident` (CONFIDENT, or CONFIDENT_SHORT in the short window) ends the
    turn then, without waiting for the VAD; any other answer waits for
    the VAD's pause, and if that comes on the same audio it is the pause's answer, sent at once instead of
    after a model run. Speech first makes the early question moot, as it does a pause's. The price is a run
    for each quiet stretch that the VAD does not call a pause (`early_unused`), and a confident verdict on
    a stretch it would not have called one. `early=False` asks at the VAD's pauses only.
    """

    def __init__(
        self,
        option: EouOption,
        emit: Callable[[bool, float | None, str | None], None],
        on_error: Callable[[str], None],
        batcher: TurnBatcher,
        early: bool = True,
    ) -> None:
        threshold = DEFAULT_THRESHOLD if option.threshold is None else option.threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("option.eou.threshold: must be between 0 and 1")
        timeout = option.timeout if option.timeout and option.timeout > 0 else DEFAULT_INCOMPLETE_TIMEOUT_MS
        self.rule = TurnRule(threshold, timeout)
        self._emit = emit
        self._on_error = on_error
        self._batcher = batcher
        batcher.prepare()
        self._frames: collections.deque[tuple[int, np.ndarray]] = collections.deque(
            maxlen=SAMPLES // (RATE // 1000 * FRAME_MS)
        )
        self._texts: list[str] = []
        self._now = 0
        self._errors = 0
        self._asks_early = early
        self._loud_end: int | None = None  # the end (ms) of the last loud frame of the current utterance
        self._early: _Early | None = None
        self.early_used = 0
        self.early_unused = 0
        self.closed = False

    def feed(self, frame: np.ndarray, ts_ms: int) -> None:
        """A 20 ms frame of the caller (after denoise): kept for the model, and the clock of the timer."""
        if self.closed:
            return
        self._frames.append((ts_ms, frame))
        self._now = ts_ms + len(frame) * 1000 // RATE
        if self._asks_early and self.rule.speaking:
            if is_loud(frame):
                self._loud_end = self._now
                if self._early is not None:  # the caller went on: that question is moot
                    self._drop_early()
            elif (
                self._loud_end is not None
                and self._early is None
                and self._now - self._loud_end >= TRAILING_MS
                and self._batcher.idle()
            ):
                self._ask_early()
        self._send(self.rule.tick(self._now))

    def speech_started(self, ts_ms: int) -> None:
        self.rule.speech(ts_ms)
        # A question not yet put to the model is moot: it is not put (the model is the scarce CPU).
        self._batcher.forget(self)
        if self._early is not None:
            self._drop_early()
        self._loud_end = None

    def transcript(self, text: str) -> None:
        self._texts.append(text)

    def _turn_audio(self) -> np.ndarray | None:
        if self.rule.turn_start is None:
            return None
        since = self.rule.turn_start - PRE_SPEECH_MS
        frames = [f for ts, f in self._frames if ts >= since]
        return trim_trailing(np.concatenate(frames)) if frames else None

    def _ask_early(self) -> None:
        audio = self._turn_audio()
        if audio is None:
            return
        early = self._early = _Early(self.rule.generation, audio)

        def done(probability: float | None, reason: str | None) -> None:
            early.answered, early.probability, early.reason = True, probability, reason
            if early.pause is not None and not self.closed:
                self._answered(early.pause, probability, reason)
            elif (
                self._early is early
                and not self.closed
                and probability is not None
                and probability >= max(self.rule.threshold, self._batcher.confident)
                and self.rule.speaking
            ):
                # Sure enough not to wait for the VAD: the pause began with the last loud frame's end.
                self._early = None
                self.early_used += 1
                ask = self.rule.pause(self._loud_end if self._loud_end is not None else self._now)
                if ask is not None:
                    self._answered(ask, probability, reason)

        self._batcher.submit(self, audio, done)

    def _drop_early(self) -> None:
        self.early_unused += 1
        self._early = None
        self._batcher.forget(self)

    def paused(self, pause_start_ms: int) -> None:
        ask = self.rule.pause(pause_start_ms)
        if ask is None:
            return
        audio = self._turn_audio()
        if audio is None:
            return
        early, self._early = self._early, None
        if early is not None and early.generation == ask.generation and _same_input(early.audio, audio):
            self.early_used += 1
            if early.answered:
                self._answered(ask, early.probability, early.reason)
            else:
                early.pause = ask
            return
        if early is not None:
            self.early_unused += 1

        def done(probability: float | None, reason: str | None) -> None:
            if not self.closed:
                self._answered(ask, probability, reason)

        self._batcher.submit(self, audio, done)

    def _answered(self, ask: Ask, probability: float | None, reason: str | None) -> None:
        if reason is not None and reason != "late":
            self._errors += 1
            if self._errors == 1:  # once a call: the same failure would come at every pause
                self._on_error(f"smart_turn {reason}; the silence timer decides")
        self._send(self.rule.answer(ask.generation, probability, self._now))

    def _send(self, decisions: list[Decision]) -> None:
        for d in decisions:
            text = " ".join(self._texts) or None
            if d.completed:
                self._texts.clear()
            self._emit(d.completed, d.probability, text)

    def close(self) -> None:
        self.closed = True
        self._batcher.forget(self)
