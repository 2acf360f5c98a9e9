"""Turn-taking on a labelled set: the figures in docs/performance.md, "Turn-taking on a labelled set".

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.turn_eval

The set is generated: the one Piper voice shipped in the venv (en_US joe), in five variants (speaking rate
0.85 / 1.0 / 1.2 of the voice's, and at rate 1.0 a voice shifted ~8 % lower or higher by resampling), and
four espeak-ng voices where Debian's espeak-ng is installed (`ESPEAK`), each clip between stretches of a
-45 dBFS white floor. Labels: complete turns, incomplete turns (a pause
after a cut-off sentence), backchannels, noise bursts (white and cough-like), real interruptions.

End of turn: each turn clip (0.5 s floor, the speech, 1.5 s floor) goes through the call's parts as a
call runs them (webrtc VAD, default paddings; `SmartTurn` with the real model) frame by frame on the audio
clock. smart_turn "fires" on its first `eou{completed:true}` from the model; the `local` silence timer
(timeout 600 ms) fires at every pause that lasts 600 ms. A complete turn counts as found when the detector
fires at its end and not before; an incomplete one as a false end of turn when it fires at all.

Barge-in: each caller clip (0.5 s floor, the sound, 2 s floor) is judged as if the bot were speaking
throughout: `speaking`-based barge-in interrupts at every VAD `speaking`; `vad.bargeIn` (defaults) with
local ASR decides from the words, the Whisper final arriving at the utterance's end plus its measured
transcription time (no interim results: every clip here is shorter than the server's 1 s interim pass).
"""

from __future__ import annotations

import argparse
import functools
import io
import shutil
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from common.protocol import BargeInOption, EouOption
from tests.audio_util import noise
from worker.call.bargein import BargeInRule, Verdict
from worker.media.vad import Discarded, Silence, Speaking, VadEvent, VadProcessor
from worker.speech.smart_turn import CONFIDENT, CONFIDENT_SHORT, SmartTurn, TurnModel, trim_trailing

COMPLETE = [
    "I would like to book a table for two at seven tonight.",
    "Can you tell me when my order will arrive?",
    "My account number is four five six seven.",
    "What time do you close on Sundays?",
    "I need to change my delivery address.",
    "That's all, thank you very much.",
    "Could you send me the invoice by email?",
    "I'd like to cancel my subscription.",
    "Is there a pharmacy near the station?",
    "The package arrived damaged yesterday.",
]
INCOMPLETE = [
    "I would like to",
    "Can you tell me when",
    "My account number is",
    "I was wondering if",
    "I need to change my",
    "The problem is that",
    "Could you send it to",
    "I'd like to cancel the",
    "Is there a",
    "So what I really want is",
]
BACKCHANNELS = ["yeah", "uh-huh", "okay", "mm-hmm", "right", "yes", "sure"]
INTERRUPTIONS = [
    "wait",
    "stop, stop",
    "hold on a second",
    "can you repeat that?",
    "no, I said tomorrow",
    "sorry, what was that?",
]
NOISES = ["white 150 ms", "white 400 ms", "cough", "double cough"]
# (length scale: >1 is slower; pitch factor: the clip is read as if recorded at this times the rate)
VOICES = {"joe": (1.0, 1.0), "joe fast": (0.85, 1.0), "joe slow": (1.2, 1.0), "joe low": (1.0, 0.92),
          "joe high": (1.0, 1.08)}  # fmt: skip
# Other speakers, from Debian's espeak-ng (a formant synthesiser, `setup.sh dev` installs it): voice
# variant and words per minute. Robotic next to Piper, but other pitch, timbre, accent and rhythm.
ESPEAK = {"espeak us m3": ("en-us+m3", 160), "espeak us f2": ("en-us+f2", 175),
          "espeak gb m1": ("en-gb+m1", 150), "espeak us f4 fast": ("en-us+f4", 200)}  # fmt: skip
FLOOR_DBFS = -45


def voices_here() -> list[str]:
    """Every voice of the set this machine can speak (espeak-ng's only where it is installed)."""
    return list(VOICES) + (list(ESPEAK) if shutil.which("espeak-ng") else [])


@functools.cache
def _voice() -> object:
    from tests.speech import _voice

    return _voice()


def _espeak(text: str, voice: str) -> tuple[np.ndarray, int]:
    name, wpm = ESPEAK[voice]
    wav = subprocess.run(
        ["espeak-ng", "-v", name, "-s", str(wpm), "--stdout", text], check=True, capture_output=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16), w.getframerate()


@functools.cache
def say(text: str, voice: str) -> np.ndarray:
    """`text` in a voice variant, 16 kHz int16, trimmed to the speech."""
    from piper import SynthesisConfig

    from tests.speech import trimmed_16k

    if voice in ESPEAK:
        audio, rate = _espeak(text, voice)
    else:
        length, pitch = VOICES[voice]
        config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, length_scale=length)
        chunks = list(_voice().synthesize(text, syn_config=config))  # type: ignore[attr-defined]
        audio = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.int16)
        # Read as if recorded at `pitch` times the rate: higher or lower, same length in samples.
        rate = int(round(chunks[0].sample_rate * pitch))
    return trimmed_16k(audio, rate)


def burst(kind: str, seed: int) -> np.ndarray:
    """A noise burst at about -20 dBFS: white, or cough-like (noise under a fast-attack, decaying envelope,
    low-passed)."""
    rng = np.random.default_rng(seed)
    if kind.startswith("white"):
        n = int(kind.split()[1]) * 16
        return (rng.standard_normal(n) * 3300).astype(np.int16)
    one = rng.standard_normal(4800) * np.exp(-np.arange(4800) / 1100) * 9000
    one = np.convolve(one, np.ones(6) / 6, mode="same")
    parts = [one] if kind == "cough" else [one, np.zeros(2400), one * 0.8]
    return np.concatenate(parts).astype(np.int16)


def on_floor(sound: np.ndarray, before: float, after: float, seed: int) -> tuple[np.ndarray, int, int]:
    """The sound between two stretches of floor; with its start and end (ms)."""
    lead, tail = int(before * 16000), int(after * 16000)
    clip = np.concatenate([np.zeros(lead), sound.astype(np.float64), np.zeros(tail)])
    clip = np.clip(clip + noise("white", len(clip) / 16000, FLOOR_DBFS, seed=seed), -32768, 32767)
    return clip.astype(np.int16), lead // 16, (lead + len(sound)) // 16


def frames(audio: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for i in range(0, len(audio) - 319, 320):
        yield i // 16, audio[i : i + 320]


# --- end of turn ------------------------------------------------------------------------------------------


@dataclass
class TurnResult:
    label: str  # complete | incomplete
    fired: bool  # the detector said the turn ended
    early: bool  # ... before the speech's end
    latency_ms: int | None  # from the VAD's pause start at the end, to the decision (complete turns)


class Heard:
    """The model in one window: its whole 8-s window, or the short one (the server's default)."""

    def __init__(self, model: TurnModel, whole: bool) -> None:
        self.model = model
        self.whole = whole

    def predict(self, audio: np.ndarray) -> float:
        return self.model.predict(audio, self.whole)


class _Now:
    """The model run at once, its CPU time added to the audio clock (as on an idle turn thread): `ready_ms`
    is when the last answer would be known (`clock` gives the audio clock's ms)."""

    def __init__(self, model: TurnModel | Heard, clock: Callable[[], int]) -> None:
        self.model = model
        self.clock = clock
        self.ready_ms = 0
        self.costs: list[float] = []

    def submit(self, owner: object, audio: np.ndarray, done: object) -> None:
        began = time.thread_time()
        p = self.model.predict(audio)
        cost_ms = (time.thread_time() - began) * 1000
        self.costs.append(cost_ms)
        self.ready_ms = self.clock() + 20 + int(cost_ms)
        done(p, None)  # type: ignore[operator]

    def idle(self) -> bool:
        return True

    @property
    def confident(self) -> float:
        return CONFIDENT if getattr(self.model, "whole", True) else CONFIDENT_SHORT

    def forget(self, owner: object) -> None:
        pass

    def prepare(self) -> None:
        pass


def smart_turn_on(
    model: TurnModel | Heard,
    audio: np.ndarray,
    end_ms: int,
    label: str,
    costs: list[float] | None = None,
    early: bool = True,
    asked: list[int] | None = None,
) -> TurnResult:
    """`costs` gets the CPU time (ms) of each decision; `early`: the call asks before the VAD's pause
    (SmartTurn); `asked` gets [early questions whose answer a pause took, early questions wasted]."""
    now = [0]
    runner = _Now(model, lambda: now[0])
    decisions: list[tuple[int, bool]] = []
    pauses: list[int] = []

    def emit(completed: bool, probability: float | None, text: str | None) -> None:
        decisions.append((max(now[0] + 20, runner.ready_ms), completed))

    turn = SmartTurn(EouOption(type="smart_turn"), emit, print, runner, early)  # type: ignore[arg-type]

    def on(ev: VadEvent) -> None:
        if isinstance(ev, Speaking):
            turn.speech_started(ev.start_ms)
        elif isinstance(ev, Silence) and not ev.idle:
            pauses.append(ev.start_ms + ev.duration_ms)
            turn.paused(ev.start_ms + ev.duration_ms)

    vad = VadProcessor("webrtc", on)
    for ts, frame in frames(audio):
        now[0] = ts
        vad.feed(frame, ts)
        turn.feed(frame, ts)
    if costs is not None:
        costs.extend(runner.costs)
    if asked is not None:
        asked[0] += turn.early_used
        asked[1] += turn.early_unused
    fires = [at for at, completed in decisions if completed]
    if not fires:
        return TurnResult(label, False, False, None)
    early = fires[0] < end_ms
    latency = fires[0] - pauses[-1] if pauses and not early else None
    return TurnResult(label, True, early, latency)


def local_on(audio: np.ndarray, end_ms: int, label: str, timeout: int = 600) -> TurnResult:
    """The `local` EOU without ASR: at every VAD pause, fires after `timeout` ms of silence."""
    pause: list[int | None] = [None]
    fires: list[tuple[int, int]] = []

    def on(ev: VadEvent) -> None:
        if isinstance(ev, Speaking):
            pause[0] = None
        elif isinstance(ev, Silence) and not ev.idle:
            pause[0] = ev.start_ms + ev.duration_ms

    vad = VadProcessor("webrtc", on)
    for ts, frame in frames(audio):
        vad.feed(frame, ts)
        p = pause[0]
        if p is not None and ts + 20 - p >= timeout:
            fires.append((ts + 20, p))
            pause[0] = None
    if not fires:
        return TurnResult(label, False, False, None)
    early = fires[0][0] < end_ms
    return TurnResult(label, True, early, None if early else fires[0][0] - fires[0][1])


def turn_scores(results: list[TurnResult]) -> tuple[float, float, int, int, int]:
    """(precision, recall, true ends found, false ends, complete turns)."""
    complete = [r for r in results if r.label == "complete"]
    found = sum(1 for r in complete if r.fired and not r.early)
    false = sum(1 for r in results if r.fired and (r.label == "incomplete" or r.early))
    precision = found / (found + false) if found + false else 0.0
    return precision, found / len(complete) if complete else 0.0, found, false, len(complete)


# --- barge-in ---------------------------------------------------------------------------------------------


@dataclass
class BargeResult:
    label: str  # backchannel | noise | interruption
    speaking_at: int | None  # the first VAD speaking after the sound's start, ms after it
    verdict: Verdict | None
    decided_at: int | None  # ms after the sound's start
    text: str | None


@functools.cache
def _whisper() -> object:
    from worker.speech.local_asr import _load_model

    return _load_model(1)


def barge_on(audio: np.ndarray, start_ms: int, label: str) -> BargeResult:
    """The `bargeIn` rule on one clip, fed as a call feeds it: the webrtc VAD's events, and local ASR results
    as LocalAsr gives them (interims on its schedule while the utterance lasts, one at a time; the final at
    the utterance's end), each delivered when Whisper would have finished it (its CPU time, measured)."""
    from worker.speech.local_asr import POST_ROLL_MS, PRE_ROLL_MS, _transcribe, interim_due

    option = BargeInOption()
    from worker.call.bargein import BACKCHANNELS, DEFAULT_MIN_SPEECH_MS, DEFAULT_RESUME_AFTER_MS

    rule = BargeInRule(
        option.min_speech_ms or DEFAULT_MIN_SPEECH_MS,
        option.resume_after_ms or DEFAULT_RESUME_AFTER_MS,
        BACKCHANNELS,
        asr=True,
    )
    first_speaking: list[int] = []
    verdicts: list[tuple[int, Verdict]] = []
    results: list[tuple[int, str, bool]] = []  # (due on the audio clock, text, final)
    texts: list[str] = []
    now = [0]
    onset: list[int | None] = [None]  # the utterance under way
    interims: list[int] = []  # when each of its interims was asked

    def whisper(a_ms: int, b_ms: int, final: bool) -> None:
        a, b = max(0, (a_ms - PRE_ROLL_MS) * 16), min(len(audio), (b_ms + POST_ROLL_MS) * 16)
        began = time.thread_time()
        text = _transcribe(_whisper(), audio[a:b], "en")
        results.append((now[0] + int((time.thread_time() - began) * 1000), text, final))

    def on(ev: VadEvent) -> None:
        v: Verdict | None = None
        if isinstance(ev, Speaking):
            first_speaking.append(ev.start_ms)
            onset[0] = ev.start_ms
            interims.clear()
            rule.speech(ev.start_ms, bot_playing=True, pause=True)
        elif isinstance(ev, Silence) and not ev.idle:
            onset[0] = None
            for r in [r for r in results if not r[2]]:
                results.remove(r)  # the final cancels an interim under way
            end = ev.start_ms + ev.duration_ms
            whisper(ev.start_ms, end, True)
            v = rule.ended(end, ev.duration_ms)
        elif isinstance(ev, Discarded):
            onset[0] = None
            v = rule.ended(ev.start_ms, None)
        if v is not None:
            verdicts.append((now[0], v))

    vad = VadProcessor("webrtc", on)
    for ts, frame in frames(audio):
        now[0] = ts
        vad.feed(frame, ts)
        start = onset[0]
        if start is not None and interim_due(start, interims[-1] if interims else None, ts):
            interims.append(ts)
            if not any(not r[2] for r in results):  # one interim at a time, as LocalAsr
                whisper(start, ts + 20, False)
        for due, text, final in [r for r in results if r[0] <= ts]:
            results.remove((due, text, final))
            if final:
                texts.append(text)
            if text or final:
                v = rule.heard(text, final=final)
                if v is not None:
                    verdicts.append((ts, v))
        v = rule.tick(ts)
        if v is not None:
            verdicts.append((ts, v))
    heard = [s for s in first_speaking if s >= start_ms - 100]
    first = verdicts[0] if verdicts else None
    return BargeResult(
        label,
        heard[0] - start_ms if heard else None,
        first[1] if first else None,
        first[0] - start_ms if first else None,
        " | ".join(texts) or None,
    )


def barge_set(voices: list[str]) -> Iterator[tuple[str, str, np.ndarray, int]]:
    for v, voice in enumerate(voices):
        for k, text in enumerate(BACKCHANNELS):
            audio, start, _ = on_floor(say(text, voice), 0.5, 2.0, seed=100 * v + k)
            yield "backchannel", f"{voice}: {text}", audio, start
        for k, text in enumerate(INTERRUPTIONS):
            audio, start, _ = on_floor(say(text, voice), 0.5, 2.0, seed=100 * v + 50 + k)
            yield "interruption", f"{voice}: {text}", audio, start
    for k, kind in enumerate(NOISES):
        for seed in range(3):
            audio, start, _ = on_floor(burst(kind, seed), 0.5, 2.0, seed=900 + 10 * k + seed)
            yield "noise", f"{kind} #{seed}", audio, start


def turn_set(voices: list[str]) -> Iterator[tuple[str, str, np.ndarray, int]]:
    for v, voice in enumerate(voices):
        for label, texts in (("complete", COMPLETE), ("incomplete", INCOMPLETE)):
            for k, text in enumerate(texts):
                audio, _, end = on_floor(say(text, voice), 0.5, 1.5, seed=1000 + 100 * v + k)
                yield label, f"{voice}: {text}", audio, end


def long_turns(voices: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Two sentences with a 350 ms pause between them: a complete one then a complete or a cut-off one,
    as the model hears it at the end (0.5 s of floor before, cut 120 ms after the last loud frame)."""
    gap = np.zeros(int(0.35 * 16000), dtype=np.int16)
    for v, voice in enumerate(voices):
        for k, first in enumerate(COMPLETE):
            pairs = (("complete", COMPLETE[(k + 3) % 10]), ("incomplete", INCOMPLETE[(k + 5) % 10]))
            for label, second in pairs:
                sound = np.concatenate([say(first, voice), gap, say(second, voice)])
                audio, _, end = on_floor(sound, 0.5, 0.3, seed=100 * v + k)
                yield label, trim_trailing(audio[: (end + 200) * 16])


def verdicts(model: Heard, clips: list[tuple[str, np.ndarray]]) -> str:
    """Accuracy at 0.5, the mean probability by label, and the AUC of complete over incomplete."""
    y = np.array([label == "complete" for label, _ in clips])
    p = np.array([model.predict(audio) for _, audio in clips])
    pos, neg = p[y], p[~y]
    auc = float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))
    return (
        f"accuracy at 0.5 {np.mean((p >= 0.5) == y):.2f}, mean probability complete {pos.mean():.2f} / "
        f"incomplete {neg.mean():.2f}, AUC {auc:.3f}"
    )


def pct(values: list[int], p: float) -> str:
    return f"{np.percentile(values, p):.0f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", nargs="+", default=voices_here())
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--window", choices=["turn", "whole"], default="turn", help="the model's window (SMART_TURN_WINDOW)"
    )
    parser.add_argument(
        "--no-early", action="store_true", help="ask the model only when the VAD calls the pause"
    )
    args = parser.parse_args()
    model = Heard(TurnModel(), args.window == "whole")
    smart: list[TurnResult] = []
    local: list[TurnResult] = []
    costs: list[float] = []
    asked = [0, 0]
    for label, name, audio, end in turn_set(args.voices):
        smart.append(smart_turn_on(model, audio, end, label, costs, not args.no_early, asked))
        local.append(local_on(audio, end, label))
        if args.verbose:
            print(f"{label:10} {name:55} smart {smart[-1]}  local {local[-1].fired}")
    for name, turns in (("smart_turn", smart), ("local (600 ms)", local)):
        precision, recall, found, false, n = turn_scores(turns)
        lat = [r.latency_ms for r in turns if r.label == "complete" and r.latency_ms is not None]
        print(
            f"end of turn, {name}: precision {precision:.2f}, recall {recall:.2f} ({found}/{n} complete "
            f"turns ended on time; {false} false ends: incomplete turns of {len(turns) - n}, and early "
            f"fires); after the VAD's pause start p50 {pct(lat, 50)} / p90 {pct(lat, 90)} ms"
        )
    print(
        f"smart_turn CPU per decision ({len(costs)} decisions): mean {np.mean(costs):.1f}, "
        f"p90 {np.percentile(costs, 90):.1f}, max {max(costs):.1f} ms; asked before the VAD's pause: "
        f"{asked[0]} answers a pause took, {asked[1]} wasted"
    )
    clips = list(long_turns(args.voices))
    lengths = [len(audio) / 16000 for _, audio in clips]
    print(
        f"two-sentence turns ({len(clips)}, {min(lengths):.1f}-{max(lengths):.1f} s), whole window: "
        f"{verdicts(Heard(model.model, True), clips)}; short window: "
        f"{verdicts(Heard(model.model, False), clips)}"
    )
    rows: dict[str, list[BargeResult]] = {}
    for label, name, audio, start in barge_set(args.voices):
        r = barge_on(audio, start, label)
        rows.setdefault(label, []).append(r)
        if args.verbose:
            d = r.verdict.decision if r.verdict else None
            heard = (r.text or "")[:60]
            print(f"{label:12} {name:40} speaking {r.speaking_at} -> {d} @ {r.decided_at} {heard!r}")
    for label, results in rows.items():
        plain = sum(1 for r in results if r.speaking_at is not None)
        smart_int = [r for r in results if r.verdict is not None and r.verdict.decision == "interrupt"]
        print(
            f"barge-in, {label} ({len(results)}): speaking-based interrupts {plain}, "
            f"bargeIn interrupts {len(smart_int)}"
        )
        if label == "interruption":
            plain_lat = [r.speaking_at for r in results if r.speaking_at is not None]
            smart_lat = [r.decided_at for r in smart_int if r.decided_at is not None]
            print(
                f"  interruption latency from the sound's start: speaking-based p50 {pct(plain_lat, 50)} / "
                f"p90 {pct(plain_lat, 90)} ms; bargeIn p50 {pct(smart_lat, 50)} / p90 {pct(smart_lat, 90)} ms"
            )


if __name__ == "__main__":
    main()
