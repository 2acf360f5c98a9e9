"""Listening load: N concurrent calls streaming real speech in real time with VAD (or local ASR) on.

    .venv/bin/python -m bench.listen --mode webrtc --calls 200 --seconds 20
    .venv/bin/python -m bench.listen --mode silero --calls 100
    .venv/bin/python -m bench.listen --mode local-asr --calls 4

Each call streams the same pattern: 0.6 s of silence, a ~2.5-3 s sentence (Piper voice), 1.4 s of silence,
repeated. Prints utterances detected against those spoken, `speaking` latency after the speech onset, and
(for local-asr) `asrFinal` latency after the end of the speech, plus CPU per process and the longest media
tick. Not a test: it only reports.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import uvloop

from bench.stackutil import pct, start_stack

SENTENCE = "Please book a table for two people tonight at eight."


def pattern(seconds: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    from tests.speech import speech, with_silence

    words = speech(SENTENCE)
    parts: list[np.ndarray | float] = []
    total = 0.0
    while total + 0.6 + len(words) / 16000 + 1.4 <= seconds:
        parts += [0.6, words, 1.4]
        total += 2.0 + len(words) / 16000
    return with_silence(*parts)


class Listener:
    def __init__(self, base: str, session: aiohttp.ClientSession, mode: str) -> None:
        self.base, self.session, self.mode = base, session, mode
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.t0 = 0.0
        self.speaking: list[float] = []  # wall ms at arrival, startTime pairs
        self.onsets: list[tuple[float, int]] = []
        self.finals: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self.ready = asyncio.Event()

    async def open(self) -> None:
        self.ws = await self.session.ws_connect(f"{self.base}/call", params={"id": f"l.{uuid.uuid4()}"})
        option: dict[str, object] = {"codec": "pcm"}
        if self.mode == "local-asr":
            option["asr"] = {"provider": "local", "language": "en"}
        else:
            option["vad"] = {"type": self.mode}
        await self.ws.send_str(json.dumps({"command": "invite", "option": option}))
        asyncio.create_task(self._read())  # noqa: RUF006 - ends with the socket

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            ev = json.loads(msg.data)
            now = time.time() * 1000
            name = ev.get("event")
            if name == "answer":
                self.ready.set()
            elif name == "speaking":
                self.onsets.append((now, ev["startTime"]))
            elif name == "asrFinal":
                self.finals.append((now, ev["text"]))
            elif name == "error":
                self.errors.append(ev.get("error", ""))


async def main_async(args: argparse.Namespace) -> None:
    audio, spans = pattern(args.seconds)
    frames = [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]
    tmp = Path(tempfile.mkdtemp(prefix="pbx-listen-"))
    base, stack = await start_stack(args.web, args.media, args.calls, tmp)
    procs = [psutil.Process(p.pid) for p in (stack.web, stack.worker) if p is not None]
    procs += [c for p in list(procs) for c in p.children(recursive=True)]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            calls = [Listener(base.replace("http", "ws", 1), session, args.mode) for _ in range(args.calls)]
            for c in calls:
                await c.open()
                await asyncio.sleep(0.02)
            await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in calls)), 30)
            for p in procs:
                p.cpu_percent(None)
            gc.freeze()
            gc.disable()
            slots = 4
            groups = [calls[i::slots] for i in range(slots)]
            start = time.perf_counter()
            wall0 = time.time() * 1000
            for c in calls:
                c.t0 = wall0
            # Each slot starts 5 ms after the previous one: its speech times shift by that much.
            offsets = {id(c): (i % slots) * 5 for i, c in enumerate(calls)}
            for n in range(len(frames) * slots):
                frame = frames[n // slots]
                for c in groups[n % slots]:
                    assert c.ws is not None
                    await c.ws.send_bytes(frame)
                delay = start + (n + 1) * 0.02 / slots - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.sleep(3.0)
            cpu = [(p.pid, " ".join(p.cmdline()[1:3]), p.cpu_percent(None)) for p in procs if p.is_running()]
            for c in calls:
                assert c.ws is not None
                await c.ws.close()
    finally:
        stack.stop()
    expected = len(spans) * len(calls)
    onset_lat, final_lat, detected = [], [], 0
    for c in calls:
        shift = offsets[id(c)]
        for start_ms, _end_ms in spans:
            spoken = c.t0 + shift + start_ms
            hits = [arr for arr, st in c.onsets if abs(st - spoken) <= 300]
            if hits:
                detected += 1
                onset_lat.append(hits[0] - spoken)
        for _start_ms, end_ms in spans:
            done = c.t0 + shift + end_ms
            after = [arr for arr, _t in c.finals if arr >= done]
            if after:
                final_lat.append(after[0] - done)
    print(f"mode {args.mode}: {len(calls)} calls, {len(spans)} utterances each, {args.seconds:.0f}s")
    if args.mode != "local-asr":
        print(f"utterances detected {detected} of {expected}")
        print(f"speaking latency after onset ms  p50 {pct(onset_lat, 50):.0f}  p99 {pct(onset_lat, 99):.0f}")
    else:
        print(
            f"finals {sum(len(c.finals) for c in calls)} for {expected} utterances; sample: "
            f"{random.choice(calls).finals[:1]}"
        )
        print(
            f"asrFinal latency after end of speech ms  p50 {pct(final_lat, 50):.0f}"
            f"  p99 {pct(final_lat, 99):.0f}"
        )
    errors = [e for c in calls for e in c.errors]
    print(f"errors {len(errors)}" + (f": {errors[:2]}" if errors else ""))
    for pid, cmd, load in sorted(cpu, key=lambda x: -x[2]):
        if load > 0.5:
            print(f"  pid {pid} {cmd:<30} cpu {load:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["webrtc", "silero", "ten", "local-asr"], default="webrtc")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--web", type=int, default=2)
    parser.add_argument("--media", type=int, default=2)
    uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
