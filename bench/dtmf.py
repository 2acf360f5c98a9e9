"""In-band DTMF cost: CPU per caller frame of the listener's framing plus the process's DTMF bank.

    .venv/bin/python -m bench.dtmf
    .venv/bin/python -m bench.dtmf --calls 50 200 400 --ticks 3000 --kinds speech silence noise mix
    .venv/bin/python -m bench.dtmf --before /tmp/dtmf_before   # also the modules copied there (a baseline)

Runs the media process's DTMF path on one uvloop loop, without sockets: each tick every call's listener gets
one 20 ms frame (`CallerListener.feed`: framing on the audio clock, queueing into the bank), then the clock's
`kick()` does the bank's work (the bank before issue 16: its `run` task, classifying on a thread). The
audio kinds: `speech` (Piper sentences with pauses, each call at its own offset), `silence`, `noise` (white
noise at -55 dBFS, line hiss), `mix` (speech, and one call in five pressing keys between and over the words).
Prints CPU µs per call-frame (all threads of this process, over all ticks; the least of `--repeat` runs, as
other work on the machine only adds) and ms per call-second (= µs per frame × 50 / 1000), and the digits
found, which must be the same for every implementation.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import inspect
import os
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from worker.supervisor import SINGLE_THREADED

FRAME = 320
RATE = 16000
SENTENCES = (
    "Thank you for calling. Please press one for sales, or two for support.",
    "My account number is four five six, and I would like to talk to someone about my bill.",
    "Hmm, let me think about that. Okay, nine o'clock on Monday morning works for me.",
)
KINDS = ("speech", "silence", "noise", "mix")
ROWS, COLS = (697.0, 770.0, 852.0, 941.0), (1209.0, 1336.0, 1477.0, 1633.0)
LAYOUT = {d: (r, c) for r, row in enumerate(("123A", "456B", "789C", "*0#D")) for c, d in enumerate(row)}


def _keys(digits: str, level_dbfs: float = -12.0, on: float = 0.08, off: float = 0.08) -> np.ndarray:
    t = np.arange(int(on * RATE)) / RATE
    amp = 32767 * 10 ** (level_dbfs / 20)
    parts = []
    for d in digits:
        r, c = LAYOUT[d]
        parts += [
            amp * (np.sin(2 * np.pi * ROWS[r] * t) + np.sin(2 * np.pi * COLS[c] * t)),
            np.zeros(int(off * RATE)),
        ]
    return np.concatenate(parts)


def _frames(audio: np.ndarray) -> np.ndarray:
    """`audio` as int16 frames (count × 320), padded with silence to whole frames."""
    audio = np.clip(np.round(audio), -32768, 32767).astype(np.int16)
    audio = np.concatenate([audio, np.zeros(-len(audio) % FRAME, dtype=np.int16)])
    frames = audio.reshape(-1, FRAME)
    # Read-only, as a PCM call's decoder hands frames over (a view of the message's bytes).
    frames.flags.writeable = False
    return frames


def audio_kinds() -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Per kind: the frames every call loops over, and the frames of the calls pressing keys (or None)."""
    from tests.speech import speech, with_silence

    words = [speech(s) for s in SENTENCES]
    talk, _spans = with_silence(0.6, words[0], 1.2, words[1], 0.9, words[2], 1.5)
    rng = np.random.default_rng(1)
    noise = rng.normal(0.0, 32768 * 10 ** (-55 / 20), 10 * RATE)
    # Keys in a pause (one digit quieter, -27 dBFS per tone, just above the detector's threshold) and over
    # the words (12 dB above their RMS), then the talk.
    first = words[0].astype(np.float64)
    over = _keys("47", level_dbfs=20 * np.log10(np.sqrt(np.mean(first**2)) * 4 / 32767 / np.sqrt(2)))
    pressed = np.concatenate(
        [
            np.zeros(RATE // 2),
            _keys("159#"),
            _keys("0", level_dbfs=-27.0),
            np.zeros(RATE // 2),
            first[: len(over)] + over,
            first[len(over) :],
            talk.astype(np.float64),
        ]
    )
    return {
        "speech": (_frames(talk), None),
        "silence": (_frames(np.zeros(10 * RATE)), None),
        "noise": (_frames(noise), None),
        "mix": (_frames(talk), _frames(pressed)),
    }


def load_impl(where: Path | None) -> tuple[Any, Any]:
    """The dtmf and listener modules: the working tree's, or copies of them in `where` (a baseline)."""
    if where is None:
        import worker.call.listening
        import worker.media.dtmf

        return worker.media.dtmf, worker.call.listening
    mods: list[Any] = []
    for name in ("dtmf", "listener"):
        spec = importlib.util.spec_from_file_location(f"bench_baseline_{name}", where / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods.append(mod)
    dtmf, listener = mods
    listener.DtmfDetector = dtmf.DtmfDetector  # the copy's detector, not the working tree's
    return dtmf, listener


class _Session:
    """What `CallerListener` needs of a session (no VAD, ASR or denoise: a call only listening for DTMF)."""

    def __init__(self, call_id: str, proc: Any) -> None:
        self.call_id = call_id
        self.proc = proc
        self.ending = False
        self.bot = None
        self.digits: list[str] = []

    def input_detected(self) -> None:
        pass

    def emit(self, ev: Any) -> None:
        self.digits.append(ev["digit"])


def _listener(listener_mod: Any, s: _Session) -> Any:
    """A listener of either shape: built from the session (before issue 19) or from hooks and services."""
    if "services" not in inspect.signature(listener_mod.CallerListener).parameters:
        return listener_mod.CallerListener(s)
    hooks = types.SimpleNamespace(
        call_id=s.call_id, emit=s.emit, error=print, spawn=None, hangup=None, ending=lambda: s.ending
    )
    return listener_mod.CallerListener(hooks, s.proc, s.input_detected, lambda digit: None)


async def run_one(
    impl: tuple[Any, Any], calls: int, ticks: int, frames: np.ndarray, pressing: np.ndarray | None
) -> tuple[float, int]:
    """CPU seconds for `ticks` ticks of `calls` calls, and the digits found."""
    dtmf, listener_mod = impl
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1, thread_name_prefix="dtmf")
    bank = dtmf.DtmfBank()
    proc = types.SimpleNamespace(dtmf=bank)
    sessions = [_Session(f"c{i}", proc) for i in range(calls)]
    listeners = [_listener(listener_mod, s) for s in sessions]
    # Each call at its own place in the audio; one call in five presses keys in the mix.
    sources = [pressing if pressing is not None and i % 5 == 0 else frames for i in range(calls)]
    offsets = [(i * 7919) % len(src) for i, src in enumerate(sources)]
    busy = 0
    idle = asyncio.Event()

    async def off_loop(fn: Any, *args: Any) -> Any:
        nonlocal busy
        busy += 1
        idle.clear()
        try:
            return await loop.run_in_executor(pool, fn, *args)
        finally:
            busy -= 1
            if not busy:
                idle.set()

    # The bank before issue 16 classified on a thread of its own, from a task that kick() woke.
    task = asyncio.create_task(bank.run(off_loop)) if hasattr(bank, "run") else None
    await asyncio.sleep(0)
    gc.collect()
    gc.disable()
    began = time.process_time()
    for tick in range(ticks):
        for lis, src, at in zip(listeners, sources, offsets, strict=True):
            lis.feed(src[(at + tick) % len(src)])
        bank.kick()
        # Wait for the bank to finish this tick's audio, as the 20 ms between ticks would.
        await asyncio.sleep(0)
        while busy or getattr(bank, "_pending", None):
            if busy:
                await idle.wait()
            else:
                await asyncio.sleep(0)
    cpu = time.process_time() - began
    gc.enable()
    if task is not None:
        task.cancel()
    pool.shutdown()
    return cpu, sum(len(s.digits) for s in sessions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[50, 200, 400])
    parser.add_argument("--ticks", type=int, default=3000)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--before", type=Path, help="a directory with copies of dtmf.py and listener.py")
    args = parser.parse_args()
    if any(os.environ.get(k) != v for k, v in SINGLE_THREADED.items()):
        # As in a media process: numeric libraries on one thread (they must be told before they load).
        env = dict(os.environ, **SINGLE_THREADED)
        os.execve(sys.executable, [sys.executable, "-m", "bench.dtmf", *sys.argv[1:]], env)
    audio = audio_kinds()
    impls = [("now", load_impl(None))]
    if args.before is not None:
        impls.insert(0, ("before", load_impl(args.before)))
    print(
        f"{args.ticks} ticks of 20 ms, least CPU of {args.repeat} runs (all threads of this process); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'audio':<8} {'calls':>5}  {'impl':<7} {'µs/frame':>9} {'ms/call-s':>9} {'digits':>7}")
    for kind in args.kinds:
        frames, pressing = audio[kind]
        for calls in args.calls:
            best: dict[str, float] = {}
            found: set[int] = set()
            for _ in range(args.repeat):
                for name, impl in impls:
                    cpu, digits = uvloop.run(run_one(impl, calls, args.ticks, frames, pressing))
                    best[name] = min(best.get(name, cpu), cpu)
                    found.add(digits)
            for name, cpu in best.items():
                us = cpu / (calls * args.ticks) * 1e6
                print(f"{kind:<8} {calls:>5}  {name:<7} {us:9.2f} {us * 50 / 1000:9.3f} {max(found):7d}")
            if len(found) > 1:
                print(f"  different digit counts: {sorted(found)}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
