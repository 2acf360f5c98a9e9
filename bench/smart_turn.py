"""The smart_turn EOU's cost and latency: the figures in docs/performance.md, "Semantic end of turn".

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.smart_turn
    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.smart_turn --callers 1 10 100 --seconds 20

(`OPENBLAS_NUM_THREADS=1` as the supervisor sets it for media processes: numpy's matrix products then stay
on the turn thread.)

1. CPU per decision on one thread (`time.thread_time`): the features and the model, for turns of 1 to 8 s,
   in the model's whole 8-s window and in the short one (the turn and 0.5 s before it, at most 4 s); the
   model file as shipped; and the whole window alone in batches of 1, 4 and 16 (why requests are run one by
   one).
2. Latency at N concurrent callers (--window: SMART_TURN_WINDOW, default turn), in one process as a media
   process runs them, or split over --processes processes: each caller's audio (a
   Piper sentence then 1.5 s of silence, over a -45 dBFS white floor, each caller starting at a random
   offset) is fed in 20 ms frames on a real-time tick to its own webrtc VAD and `SmartTurn`, all sharing one
   `TurnBatcher` on one turn thread. For each `eou`: the time from the pause's start (the end of speech as
   the VAD reports it, mapped to the wall clock) and from the true end of the words, to the event; and how
   many questions were put before the VAD called the pause (`SmartTurn`'s early questions; --no-early:
   none).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.protocol import EouOption
from tests.audio_util import noise
from tests.speech import speech, with_silence
from worker.media.vad import Silence, Speaking, VadEvent, VadProcessor
from worker.speech.smart_turn import (
    WINDOWS,
    SmartTurn,
    TurnBatcher,
    TurnModel,
    inference_session,
    model_path,
    trim_trailing,
    window_frames,
)
from worker.speech.turn_features import log_mel
from worker.speech.turn_graph import any_length

SENTENCES = [
    "I would like to book a table for two at seven tonight.",
    "Can you tell me when my order will arrive?",
    "My account number is four five six.",
    "What time do you close on Sundays?",
]


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) if values else float("nan")


def cost() -> None:
    model = TurnModel()
    for seconds in (1, 2, 3, 5, 8):
        audio = (np.random.default_rng(1).standard_normal(int(seconds * 16000)) * 3000).astype(np.int16)
        n = 20
        began = time.thread_time()
        for _ in range(n):
            log_mel(audio)
        feat = (time.thread_time() - began) / n * 1000
        row = []
        for whole in (True, False):
            model.predict(audio, whole)
            began = time.thread_time()
            for _ in range(n):
                model.predict(audio, whole)
            row.append((time.thread_time() - began) / n * 1000)
        print(
            f"turn of {seconds} s: {row[0]:.1f} ms CPU per decision (features {feat:.1f} ms); "
            f"the short window {row[1]:.1f} ms ({window_frames(len(audio))} frames)"
        )
    shipped = inference_session(model_path().read_bytes())
    features = log_mel(np.zeros(16000, dtype=np.int16))[None]
    shipped.run(None, {"input_features": features})
    began = time.thread_time()
    for _ in range(20):
        shipped.run(None, {"input_features": features})
    spent = (time.thread_time() - began) / 20 * 1000
    print(f"the model file as shipped (GELUs not fused, int8 softmax): {spent:.1f} ms")
    features = log_mel(np.zeros(16000, dtype=np.int16))
    for size in (1, 4, 16):
        batch = np.repeat(features[None], size, axis=0)
        model._session.run(None, {"input_features": batch})
        reps = max(2, 32 // size)
        began = time.thread_time()
        for _ in range(reps):
            model._session.run(None, {"input_features": batch})
        each = (time.thread_time() - began) / reps / size * 1000
        print(f"the whole window alone, batch of {size}: {each:.1f} ms CPU each")


class Caller:
    def __init__(
        self,
        batcher: TurnBatcher,
        audio: np.ndarray,
        ends: list[int],
        offset_ms: int,
        padding: int,
        early: bool = True,
    ) -> None:
        self.audio = audio
        self.ends = ends  # true ends of the words, ms into the audio
        self.offset_ms = offset_ms
        self.pause_ms: int | None = None
        self.paused = False  # the VAD called a pause since the last speech
        self.pending: tuple[float, bool] | None = None  # an eou that came before the VAD's pause
        self.latencies: list[tuple[float, float, bool]] = []
        self.wall0 = 0.0
        self.vad = VadProcessor("webrtc", self._on_vad, silence_padding=padding)
        self.turn = SmartTurn(EouOption(type="smart_turn"), self._on_eou, print, batcher, early)
        self.pos = 0

    def _on_vad(self, ev: VadEvent) -> None:
        if isinstance(ev, Speaking):
            self.paused = False
            self.turn.speech_started(ev.start_ms)
        elif isinstance(ev, Silence) and not ev.idle:
            self.pause_ms = ev.start_ms + ev.duration_ms
            self.paused = True
            if self.pending is not None:  # the eou came first (a confident early answer)
                self._record(self.pending)
                self.pending = None
            self.turn.paused(self.pause_ms)

    def _on_eou(self, completed: bool, probability: float | None, text: str | None) -> None:
        if self.paused:
            self._record((time.monotonic(), probability is None))
        else:
            self.pending = (time.monotonic(), probability is None)

    def _record(self, eou: tuple[float, bool]) -> None:
        """An eou's latency from this utterance's pause (negative when it came first) and words' end."""
        at, timer = eou
        assert self.pause_ms is not None
        vad_pause = self.wall0 + self.pause_ms / 1000
        length = len(self.audio) // 16
        loop_start = self.pause_ms - self.pause_ms % length
        words = [loop_start + e for e in self.ends if loop_start + e <= self.pause_ms]
        true_end = self.wall0 + (words[-1] if words else self.pause_ms) / 1000
        self.latencies.append(((at - vad_pause) * 1000, (at - true_end) * 1000, timer))

    def tick(self, ts: int) -> None:
        if ts < self.offset_ms:
            return
        i = self.pos % (len(self.audio) // 320)
        frame = self.audio[i * 320 : (i + 1) * 320]
        self.pos += 1
        local = ts - self.offset_ms
        self.vad.feed(frame, local)
        self.turn.feed(frame, local)


@dataclass
class Run:
    """One process's share: each `eou`'s latency (after the VAD's pause start, after the words' end, ms, and
    whether it came without a verdict), the model's decisions, requests too late for it, process CPU, and
    the questions put before the VAD's pause: answers a pause took, and wasted."""

    rows: list[tuple[float, float, bool]]
    decisions: int
    late: int
    shortened: int
    cpu: float
    early_used: int = 0
    early_unused: int = 0


async def callers_in_a_process(
    callers: int, seconds: float, padding: int, seed: int, window: str, early: bool = True
) -> Run:
    pool = ThreadPoolExecutor(1, thread_name_prefix="turn")
    loop = asyncio.get_running_loop()
    batcher = TurnBatcher(lambda fn, *a: loop.run_in_executor(pool, fn, *a), window)
    await batcher.warm_up()
    runner = asyncio.create_task(batcher.run())
    rng = random.Random(seed)
    clips = []
    for k, text in enumerate(SENTENCES):
        voice, spans = with_silence(0.4, speech(text), 1.5)
        audio = np.clip(voice + noise("white", len(voice) / 16000, -45, seed=k), -32768, 32767).astype(
            np.int16
        )
        clips.append((audio, [end for _, end in spans]))
    group = [
        Caller(batcher, *clips[k % len(clips)], rng.randrange(0, 3000), padding, early)
        for k in range(callers)
    ]
    began_cpu = time.process_time()
    wall0 = time.monotonic()
    for c in group:
        c.wall0 = wall0 + c.offset_ms / 1000
    ticks = int(seconds * 50)
    for k in range(ticks):
        # A frame is sent when its 20 ms have been spoken, as a phone sends it.
        delay = wall0 + (k + 1) * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for c in group:
            c.tick(k * 20)
    await asyncio.sleep(1.5)
    cpu = (time.process_time() - began_cpu) / (time.monotonic() - wall0)
    runner.cancel()
    pool.shutdown()
    rows = [x for c in group for x in c.latencies]
    used, unused = sum(c.turn.early_used for c in group), sum(c.turn.early_unused for c in group)
    return Run(rows, batcher.decisions, batcher.late, batcher.shortened, cpu, used, unused)


def _share(callers: int, seconds: float, padding: int, seed: int, window: str, early: bool) -> Run:
    return asyncio.run(callers_in_a_process(callers, seconds, padding, seed, window, early))


def latency(
    callers: int, seconds: float, padding: int, processes: int, window: str, early: bool = True
) -> None:
    """`callers` split over `processes` media processes (each its own turn thread), started together."""
    shares = [callers // processes + (1 if k < callers % processes else 0) for k in range(processes)]
    if processes == 1:
        runs = [_share(callers, seconds, padding, 5, window, early)]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            args = [(n, seconds, padding, 5 + k, window, early) for k, n in enumerate(shares)]
            runs = pool.starmap(_share, args)
    rows = [x for r in runs for x in r.rows]
    judged = [r for r in rows if not r[2]]
    print(
        f"{callers} callers in {processes} process{'es' if processes > 1 else ''}, window {window}, "
        f"{seconds:.0f} s, "
        f"silencePadding {padding}: {len(rows)} eou ({sum(r.decisions for r in runs)} model decisions, "
        f"{sum(r.shortened for r in runs)} in the short window, {sum(r.late for r in runs)} too late for "
        f"the model; asked before the VAD's pause: {sum(r.early_used for r in runs)} answers a pause took, "
        f"{sum(r.early_unused for r in runs)} wasted), process CPU "
        f"{' + '.join(f'{r.cpu * 100:.0f} %' for r in runs)}; "
        f"eou after the VAD's pause start p50 {pct([r[0] for r in judged], 50):.0f} / "
        f"p99 {pct([r[0] for r in judged], 99):.0f} ms, after the words' end p50 "
        f"{pct([r[1] for r in judged], 50):.0f} / p99 {pct([r[1] for r in judged], 99):.0f} ms"
    )


def profile(graph: bytes, frames: int = 800, runs: int = 30) -> None:
    """Where a decision's time goes: ONNX Runtime's own profile of `runs` inferences, by operator type."""
    import collections
    import json
    import tempfile

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "turn")
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 80, frames)).astype(np.float32)
    for _ in range(runs):
        session.run(None, {"input_features": x})
    spent: collections.Counter[str] = collections.Counter()
    for e in json.loads(Path(session.end_profiling()).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            spent[e["args"]["op_name"]] += e["dur"]
    total = sum(spent.values())
    print(f"{frames} frames, {total / runs / 1000:.1f} ms of kernels a decision:")
    for op, us in spent.most_common(10):
        print(f"  {op:24} {us / runs / 1000:5.2f} ms  {us / total * 100:3.0f} %")


def sweep() -> None:
    """The model's verdict against the trailing silence it hears (TRAILING_MS's choice)."""
    model = TurnModel()
    for text in ("I would like to", "I would like to book a table for two.", "My name is"):
        voice, spans = with_silence(0.5, speech(text), 1.0)
        audio = np.clip(voice + noise("white", len(voice) / 16000, -45, seed=3), -32768, 32767).astype(
            np.int16
        )
        end = spans[0][1]
        row = [model.predict(audio[: (end + ms) * 16]) for ms in range(40, 420, 40)]
        print(f"{text!r:42} trailing 40..400 ms: {' '.join(f'{p:.2f}' for p in row)}")
        print(f"{'':42} as sent (trimmed): {model.predict(trim_trailing(audio[: (end + 400) * 16])):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--callers", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--padding", type=int, default=100, help="the VAD's silencePadding (ms)")
    parser.add_argument(
        "--processes", type=int, default=1, help="split the callers over this many (media) processes"
    )
    parser.add_argument("--window", choices=WINDOWS, default=WINDOWS[0], help="SMART_TURN_WINDOW")
    parser.add_argument("--sweep", action="store_true", help="only the verdict against trailing silence")
    parser.add_argument("--no-early", action="store_true", help="ask only when the VAD calls the pause")
    parser.add_argument(
        "--profile", action="store_true", help="only where a decision's time goes, by operator"
    )
    args = parser.parse_args()
    if args.sweep:
        sweep()
        return
    if args.profile:
        shipped = model_path().read_bytes()
        for name, graph in (
            ("as shipped", shipped),
            ("rewritten (GELUs fused, attention logits in float)", any_length(shipped)),
        ):
            print(f"the model {name}, its 8-s window:")
            profile(graph)
        return
    cost()
    for n in args.callers:
        latency(n, args.seconds, args.padding, args.processes, args.window, not args.no_early)


if __name__ == "__main__":
    main()
