"""Load benchmark: N concurrent WebSocket calls, each streaming caller audio while a file plays back.

    .venv/bin/python -m bench.calls --calls 200 --seconds 20

Without --base it starts its own stack (embedded Redis, gunicorn, media pool) with the settings given.
Prints calls held, frames sent/received/lost, setup and command round-trip latency, outgoing frame jitter,
and CPU / RSS per stack process. Not a test: it only reports.
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
import wave
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import uvloop

from bench.stackutil import pct, start_stack
from common.keys import Keys

FRAME = 640  # 20 ms of s16le at 16 kHz


@dataclass
class CallStats:
    setup_ms: float = 0.0
    answered: bool = False
    sent: int = 0
    received: int = 0
    arrivals: list[float] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)
    uplink: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ended_early: bool = False


def make_wav(path: Path, seconds: float) -> None:
    t = np.arange(int(seconds * 16000)) / 16000
    samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())


class Call:
    def __init__(self, base: str, session: aiohttp.ClientSession, wav: str, seconds: float) -> None:
        self.base = base
        self.session = session
        self.wav = wav
        self.seconds = seconds
        self.stats = CallStats()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.pending_rtt: dict[str, tuple[float, float]] = {}
        self.done = asyncio.Event()

    async def run(self, start_gate: asyncio.Event) -> None:
        call_id = f"b.{uuid.uuid4()}"
        t0 = time.perf_counter()
        try:
            self.ws = await self.session.ws_connect(f"{self.base}/call", params={"id": call_id})
            await self.ws.send_str(
                json.dumps({"command": "invite", "option": {"codec": "pcm", "recorder": {}}})
            )
            reader = asyncio.create_task(self._read(t0))
            await start_gate.wait()
            await self.ws.send_str(json.dumps({"command": "play", "url": self.wav}))
            await reader
        except Exception as exc:
            self.stats.errors.append(repr(exc))
        finally:
            self.done.set()

    async def _read(self, t0: float) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            now = time.perf_counter()
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.stats.received += 1
                self.stats.arrivals.append(now)
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            ev = json.loads(msg.data)
            name = ev.get("event")
            if name == "answer":
                self.stats.answered = True
                self.stats.setup_ms = (now - t0) * 1000
            elif name == "addHistory":
                sent = self.pending_rtt.pop(ev.get("text", ""), None)
                if sent is not None:
                    self.stats.rtts.append((now - sent[0]) * 1000)
                    # The worker stamps the event: the part of the round trip spent getting there.
                    self.stats.uplink.append(ev["timestamp"] - sent[1])
            elif name == "trackEnd" and ev.get("trackId") == "server-side-track":
                await self.ws.send_str(json.dumps({"command": "hangup"}))
            elif name == "error":
                self.stats.errors.append(ev.get("error", ""))
            elif name == "hangup":
                break

    async def send_frame(self, frame: bytes) -> None:
        if self.ws is not None and not self.ws.closed and self.stats.answered:
            try:
                await self.ws.send_bytes(frame)
            except aiohttp.ClientConnectionResetError:
                return  # the call ended (its file played out) a moment before the stream did
            self.stats.sent += 1

    async def ping(self) -> None:
        if self.ws is not None and not self.ws.closed and self.stats.answered:
            token = uuid.uuid4().hex
            self.pending_rtt[token] = (time.perf_counter(), time.time() * 1000)
            await self.ws.send_str(json.dumps({"command": "history", "speaker": "bench", "text": token}))


async def watch_ticks(redis_url: str, prefix: str, out: dict[str, float]) -> None:
    """Track the longest media-clock tick each media process reports in its heartbeat."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    try:
        while True:
            async for key in r.scan_iter(match=Keys(prefix).proc("media-*")):
                raw = await r.get(key)
                if raw:
                    info = json.loads(raw)
                    out[info["proc"]] = max(out.get(info["proc"], 0.0), float(info.get("tick_max_ms", 0)))
            await asyncio.sleep(0.5)
    finally:
        await r.aclose()


# Callers are spread over the 20 ms frame period, as independent phones would be.
SLOTS = 4


def caller_frames() -> list[bytes]:
    """The caller audio: speech with pauses (a Piper sentence between silences), looped, as a caller's is."""
    return caller_speech()[0]


def caller_speech() -> tuple[list[bytes], int]:
    """`caller_frames`, and the index of the frame in which the words end."""
    from tests.speech import speech, with_silence

    audio, spans = with_silence(0.5, speech("Hello, I would like to book a table for two tonight."), 1.0)
    frames = [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]
    return frames, (spans[-1][1] - 1) // 20


async def pace(calls: list[Call], seconds: float, frames: list[bytes]) -> None:
    """One clock for every caller stream: each call sends one frame per 20 ms, in its own phase slot."""
    groups = [calls[i::SLOTS] for i in range(SLOTS)]
    start = time.perf_counter()
    for n in range(int(seconds * 50) * SLOTS):
        frame = frames[(n // SLOTS) % len(frames)]
        for c in groups[n % SLOTS]:
            await c.send_frame(frame)
        delay = start + (n + 1) * 0.02 / SLOTS - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


async def probe(calls: list[Call], seconds: float, rate: float) -> None:
    """Command round-trip probes at random (Poisson) moments on random calls."""
    rng = random.Random(7)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        await asyncio.sleep(rng.expovariate(rate))
        await rng.choice(calls).ping()


def stack_processes(root_pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in root_pids:
        try:
            p = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        procs.append(p)
        procs.extend(p.children(recursive=True))
    return procs


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pbx-bench-"))
    wav = tmp / "play.wav"
    make_wav(wav, args.seconds)
    frames = caller_frames()
    stack = None
    base = args.base
    if base is None:
        base, stack = await start_stack(args.web, args.media, args.calls, tmp)
    ws_base = base.replace("http", "ws", 1)
    root_pids = [p.pid for p in (stack.web, stack.worker) if p is not None] if stack else []
    if stack and stack.redis and stack.redis.proc:
        root_pids.append(stack.redis.proc.pid)
    procs = stack_processes(root_pids)
    for p in procs:
        p.cpu_percent(None)
    me = psutil.Process()
    me.cpu_percent(None)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            calls = [Call(ws_base, session, str(wav), args.seconds) for _ in range(args.calls)]
            gate = asyncio.Event()
            tasks = []
            for c in calls:  # calls arrive at --rate per second, as a real load would
                tasks.append(asyncio.create_task(c.run(gate)))
                await asyncio.sleep(1 / args.rate)
            t_setup = time.perf_counter()
            while sum(c.stats.answered for c in calls) < args.calls and time.perf_counter() - t_setup < 30:
                await asyncio.sleep(0.05)
            held = sum(c.stats.answered for c in calls)
            gate.set()
            # The load generator's own collector pauses would show up as server jitter: keep them out.
            gc.freeze()
            gc.disable()
            t_run = time.perf_counter()
            ticks: dict[str, float] = {}
            redis_url = stack.env["REDIS_URL"] if stack else args.redis
            watcher = asyncio.create_task(watch_ticks(redis_url, args.prefix, ticks)) if redis_url else None
            streaming = pace(calls, args.seconds, frames)
            await asyncio.gather(streaming, probe(calls, args.seconds - 1, args.probes))
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=args.seconds + 30)
            elapsed = time.perf_counter() - t_run
            if watcher:
                watcher.cancel()
        cpu = {
            p.pid: (p.name(), " ".join(p.cmdline()[1:4]), p.cpu_percent(None), p.memory_info().rss)
            for p in procs
            if p.is_running()
        }
        gen_cpu = me.cpu_percent(None)
    finally:
        if stack:
            stack.stop()

    expected = int(args.seconds * 50)
    received = sum(c.stats.received for c in calls)
    sent = sum(c.stats.sent for c in calls)
    lost = sum(max(0, expected - c.stats.received) for c in calls if c.stats.answered)
    setups = [c.stats.setup_ms for c in calls if c.stats.answered]
    rtts = [r for c in calls for r in c.stats.rtts]
    uplink = [r for c in calls for r in c.stats.uplink]
    jitter = []
    for c in calls:
        gaps = np.diff(np.array(c.stats.arrivals)) * 1000
        jitter.extend(np.abs(gaps - 20).tolist())
    errors = [e for c in calls for e in c.stats.errors]
    print(f"calls requested {args.calls}, held {held}, run {elapsed:.1f}s for {args.seconds:.0f}s of audio")
    print(f"frames sent {sent}, received {received} of {expected * held} expected, lost {lost}")
    print(f"setup ms  p50 {pct(setups, 50):.1f}  p99 {pct(setups, 99):.1f}  max {max(setups, default=0):.1f}")
    print(
        f"rtt ms    p50 {pct(rtts, 50):.1f}  p99 {pct(rtts, 99):.1f}  (history -> addHistory, n={len(rtts)})"
    )
    print(f"  of which client -> worker p50 {pct(uplink, 50):.1f}  p99 {pct(uplink, 99):.1f}")
    print(f"jitter ms p50 {pct(jitter, 50):.2f}  p99 {pct(jitter, 99):.2f}  (|inter-arrival - 20 ms|)")
    if ticks:
        print("media clock: longest tick ms per process " + ", ".join(f"{v:.1f}" for v in ticks.values()))
    print(f"errors {len(errors)}" + (f": {errors[:3]}" if errors else ""))
    print(f"load generator cpu {gen_cpu:.0f}%")
    for _pid, (name, cmd, c, rss) in sorted(cpu.items(), key=lambda kv: -kv[1][2]):
        print(f"  {name:<16} {cmd[:40]:<40} cpu {c:5.1f}%  rss {rss / 2**20:6.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=50.0, help="new calls per second while ramping up")
    parser.add_argument("--probes", type=float, default=20.0, help="history round-trip probes per second")
    parser.add_argument("--base", help="a running stack, e.g. http://127.0.0.1:8080 (default: start one)")
    parser.add_argument("--redis", help="with --base: its REDIS_URL, to read media clock figures")
    parser.add_argument("--prefix", default="pbx:", help="with --base: its REDIS_PREFIX")
    parser.add_argument("--web", type=int, default=2, help="frontend processes when starting a stack")
    parser.add_argument("--media", type=int, default=2, help="media processes when starting a stack")
    uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
