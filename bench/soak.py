"""Soak: steady call churn for a long time, with the memory and open files of every process sampled.

    .venv/bin/python -m bench.soak --minutes 30 --calls 40

Keeps `--calls` calls up at all times, each lasting 10-60 s: WebSocket calls (caller audio streamed in real
time, a file played back, a command every few seconds, a third of them recorded) and, one in five, SIP calls
to a SIP phone in this process. When a call ends the next one starts. Every 15 s it samples RSS and open
file descriptors of each stack process; at the end it prints, per process, the figures at the end of the
warm-up and at the end of the run. Not a test: it only reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from bench.calls import make_wav, stack_processes
from bench.stackutil import start_stack
from tests.e2e.sip_peer import SipPeer

FRAME = (np.sin(2 * np.pi * 300 * np.arange(320) / 16000) * 3000).astype("<i2").tobytes()
SAMPLE_EVERY = 15.0


@dataclass
class Sample:
    at: float
    rss: dict[str, float] = field(default_factory=dict)  # MiB per process label
    fds: dict[str, int] = field(default_factory=dict)


class Soak:
    def __init__(self, base: str, wav: Path, peer: SipPeer, calls: int) -> None:
        self.ws_base = base.replace("http", "ws", 1)
        self.wav = wav
        self.peer = peer
        self.target = calls
        self.outcomes: Counter[str] = Counter()
        self.started = 0
        self.rng = random.Random(7)

    async def call(self, session: aiohttp.ClientSession, n: int) -> None:
        sip = n % 5 == 4
        seconds = self.rng.uniform(10, 60)
        option: dict[str, object] = {"codec": "pcm"}
        if n % 3 == 0:
            option["recorder"] = {}
        if sip:
            option.update(callee=self.peer.uri, caller="sip:soak@127.0.0.1")
        path = "/call/sip" if sip else "/call"
        try:
            async with session.ws_connect(
                f"{self.ws_base}{path}", params={"id": f"soak-{n}", "dump": "false"}, max_msg_size=0
            ) as ws:
                await ws.send_str(json.dumps({"command": "invite", "option": option}))
                await ws.send_str(json.dumps({"command": "play", "url": str(self.wav)}))
                outcome = await self._drive(ws, seconds, uplink=not sip)
        except (aiohttp.ClientError, OSError) as exc:
            outcome = f"socket error: {type(exc).__name__}"
        self.outcomes[outcome] += 1

    async def _drive(self, ws: aiohttp.ClientWebSocketResponse, seconds: float, uplink: bool) -> str:
        end = time.monotonic() + seconds
        errors: list[str] = []

        async def read() -> str:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                ev = json.loads(msg.data)
                if ev.get("event") == "error":
                    errors.append(str(ev.get("error")))
                elif ev.get("event") == "hangup":
                    return str(ev.get("reason"))
            return "closed without hangup"

        reader = asyncio.create_task(read())
        next_command = time.monotonic() + 5
        while time.monotonic() < end and not reader.done():
            if uplink:
                await ws.send_bytes(FRAME)
            if time.monotonic() > next_command:
                next_command += 5
                await ws.send_str(json.dumps({"command": "history", "speaker": "user", "text": "still here"}))
            await asyncio.sleep(0.02)
        if not reader.done():
            await ws.send_str(json.dumps({"command": "hangup", "reason": "soak"}))
        try:
            reason = await asyncio.wait_for(reader, 10)
        except TimeoutError:
            reason = "no hangup within 10 s"
        if errors:
            return f"error events: {errors[0]}"
        return "ok" if reason == "soak" else f"ended: {reason}"

    async def run(self, minutes: float) -> None:
        end = time.monotonic() + minutes * 60
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            live: set[asyncio.Task[None]] = set()
            while time.monotonic() < end:
                while len(live) < self.target:
                    task = asyncio.create_task(self.call(session, self.started))
                    self.started += 1
                    live.add(task)
                    task.add_done_callback(live.discard)
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.2)
            await asyncio.gather(*live)


def label(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    if "worker.child" in cmd:
        return f"media[{p.pid}]"
    if "gunicorn" in cmd:
        return f"{'gunicorn master' if 'gunicorn' not in ' '.join(p.parent().cmdline()) else 'web'}[{p.pid}]"
    if "redis-server" in cmd:
        return f"redis[{p.pid}]"
    return f"supervisor[{p.pid}]" if "-m worker" in cmd else f"{p.name()}[{p.pid}]"


async def sample_loop(procs: list[psutil.Process], samples: list[Sample], t0: float) -> None:
    while True:
        s = Sample(time.monotonic() - t0)
        for p in procs:
            try:
                s.rss[label(p)] = p.memory_info().rss / 2**20
                s.fds[label(p)] = p.num_fds()
            except psutil.NoSuchProcess:
                continue
        samples.append(s)
        await asyncio.sleep(SAMPLE_EVERY)


def report(samples: list[Sample], warmup_s: float, soak: Soak) -> None:
    warm = next((s for s in samples if s.at >= warmup_s), samples[0])
    last = samples[-1]
    print(f"\ncalls started {soak.started}; outcomes: {dict(soak.outcomes)}")
    head = ("process", "RSS MiB warm", "end", "max", "growth", "fds warm", "end", "max")
    print("{:<24} {:>12} {:>8} {:>8} {:>8}  {:>8} {:>5} {:>5}".format(*head))
    for name in sorted(last.rss):
        rss = [s.rss[name] for s in samples if name in s.rss and s.at >= warmup_s]
        fds = [s.fds[name] for s in samples if name in s.fds and s.at >= warmup_s]
        w_rss, w_fds = warm.rss.get(name, float("nan")), warm.fds.get(name, 0)
        end_rss = last.rss[name]
        print(
            f"{name:<24} {w_rss:>12.1f} {end_rss:>8.1f} {max(rss):>8.1f} {end_rss - w_rss:>+8.1f}"
            f"  {w_fds:>8} {last.fds[name]:>5} {max(fds):>5}"
        )


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pbx-soak-"))
    wav = tmp / "play.wav"
    make_wav(wav, 65)
    # A third of the calls record (64 kB/s each): a long soak would reach the default recorder quota, and the
    # soak measures growth, not the quota.
    base, stack = await start_stack(
        args.web, args.media, 200, tmp, SIP_ADDR="127.0.0.1", RECORDER_QUOTA_MB="0"
    )
    peer = await SipPeer().start()
    try:
        roots = [p.pid for p in (stack.web, stack.worker) if p is not None]
        if stack.redis is not None and stack.redis.proc is not None:
            roots.append(stack.redis.proc.pid)
        procs = stack_processes(roots)
        samples: list[Sample] = []
        t0 = time.monotonic()
        sampler = asyncio.create_task(sample_loop(procs, samples, t0))
        soak = Soak(base, wav, peer, args.calls)
        printer = asyncio.create_task(progress(samples, soak))
        await soak.run(args.minutes)
        await asyncio.sleep(SAMPLE_EVERY)  # one sample after the last calls ended
        sampler.cancel()
        printer.cancel()
        report(samples, args.warmup * 60, soak)
    finally:
        await peer.close()
        stack.stop()


async def progress(samples: list[Sample], soak: Soak) -> None:
    while True:
        await asyncio.sleep(60)
        s = samples[-1]
        total_rss = sum(s.rss.values())
        print(f"{s.at / 60:5.1f} min: {soak.started} calls started, outcomes {dict(soak.outcomes)}, "
              f"RSS total {total_rss:.0f} MiB, fds {sum(s.fds.values())}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=5, help="minutes before growth is measured")
    parser.add_argument("--calls", type=int, default=40, help="calls kept up at all times")
    parser.add_argument("--web", type=int, default=2)
    parser.add_argument("--media", type=int, default=2)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
