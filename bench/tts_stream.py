"""Streaming `tts` at LLM speed, and command floods: what one call socket gets through and what it costs.

    .venv/bin/python -m bench.tts_stream --tokens 1000 --rate 1000     # an LLM at 1,000 tokens a second
    .venv/bin/python -m bench.tts_stream --tokens 20000 --rate 0       # as fast as this client can send
    .venv/bin/python -m bench.tts_stream --tokens 20000 --rate 0 --kind history   # a flood of plain commands
    .venv/bin/python -m bench.tts_stream --tokens 10000 --rate 0 --unended  # one sentence that never ends
    .venv/bin/python -m bench.tts_stream --tokens 25000 --rate 5000 --silent  # the command path alone
    .venv/bin/python -m bench.tts_stream --tokens 1000 --rate 1000 --env WS_MAX_TTS_PIECES_PER_SEC=100

A private stack (1 frontend, 1 media process, its own Redis on a free port) and one call. `--tokens`
one-token commands are sent at `--rate` a second (0: back to back), then a `history` marker: when its
`addHistory` comes back, the media process has handled every command before it (commands run in order).
Prints the client's send rate, the server's rate (first command sent → marker answered), the errors per
code, and the CPU of the frontend and media processes over that window (% of one core). The streamed
text is not spoken to the end: the call hangs up after the marker. Not a test: it only reports.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.calls import stack_processes
from bench.plane import role
from bench.stackutil import start_stack

WORDS = "one two three four five six seven eight nine ten".split()
LONG = " ".join(["The probe call keeps talking while the other call sends its commands."] * 12)


def commands(kind: str, n: int, unended: bool = False, silent: bool = False) -> list[str]:
    out = []
    for i in range(n):
        if kind == "tts":
            text = " \U0001f642" if silent else f" {WORDS[i % 10]}"
            body: dict[str, Any] = {"command": "tts", "text": text, "playId": "llm"}
            body["streaming"] = True
            if i % 10 == 9 and not unended:
                body["text"] += "."
        else:
            body = {"command": "history", "speaker": "bench", "text": str(i)}
        out.append(json.dumps(body))
    return out


def cpu(procs: list[psutil.Process]) -> dict[str, float]:
    total: dict[str, float] = collections.defaultdict(float)
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total[role(p)] += t.user + t.system
    return total


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pbx-bench-"))
    extra = dict(e.split("=", 1) for e in args.env)
    base, stack = await start_stack(args.web, 1, 10, tmp, **extra)
    try:
        assert stack.web is not None and stack.worker is not None
        procs = stack_processes([stack.web.pid, stack.worker.pid])
        await asyncio.sleep(3)  # the voice loads and warms up
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{base.replace('http', 'ws')}/call?id=b.{uuid.uuid4()}")
            codes: collections.Counter[int] = collections.Counter()
            done = asyncio.Event()

            async def read() -> None:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    ev = json.loads(msg.data)
                    if ev["event"] == "error":
                        codes[int(ev.get("code") or 0)] += 1
                    elif ev["event"] == "addHistory" and ev["text"] == "marker":
                        done.set()

            reader = asyncio.create_task(read())
            await ws.send_str(json.dumps({"command": "invite", "option": {"codec": "pcm"}}))
            # Another call on the same media process speaks all along: the gaps between its frames show
            # whether the flood holds up the media clock.
            flood_proc = ws._response.headers.get("X-Pbx-Proc", "")
            for _ in range(20):  # with --web 2, the probe on the other frontend when one takes it
                probe = await session.ws_connect(f"{base.replace('http', 'ws')}/call?id=p.{uuid.uuid4()}")
                if args.web == 1 or probe._response.headers.get("X-Pbx-Proc", "") != flood_proc:
                    break
                await probe.close()
            heard: list[float] = []
            synthesized = asyncio.Event()

            async def listen() -> None:
                async for msg in probe:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        heard.append(time.perf_counter())
                    elif '"metrics"' in msg.data:
                        synthesized.set()

            listener = asyncio.create_task(listen())
            await probe.send_str(json.dumps({"command": "invite", "option": {"codec": "pcm"}}))
            await asyncio.sleep(0.5)
            await probe.send_str(json.dumps({"command": "tts", "text": LONG, "playId": "probe"}))
            # Its synthesis done before the window opens: the media CPU is then the flood's.
            await asyncio.wait_for(synthesized.wait(), 60)
            frames = commands(args.kind, args.tokens, args.unended, args.silent)
            before = cpu(procs)
            start = time.perf_counter()
            for i, frame in enumerate(frames):
                await ws.send_str(frame)
                if args.rate > 0:
                    delay = start + (i + 1) / args.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
            sent = time.perf_counter() - start
            await ws.send_str(json.dumps({"command": "history", "speaker": "bench", "text": "marker"}))
            await asyncio.wait_for(done.wait(), 120)
            served = time.perf_counter() - start
            after = cpu(procs)
            await asyncio.sleep(0.5)
            window = [t for t in heard if start <= t <= start + served + 0.1]
            gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
            n = args.tokens
            print(f"{n} {args.kind} commands, rate {args.rate or 'unpaced'}, env {extra or '-'}")
            print(f"  client sent them in {sent:.3f} s: {n / sent:,.0f}/s")
            print(f"  server handled them in {served:.3f} s: {n / served:,.0f}/s")
            print(f"  errors by code: {dict(codes) or 'none'}")
            for name in ("frontend", "media"):
                used = after[name] - before[name]
                print(
                    f"  {name}: {used:.2f} s CPU, {used / served * 100:.0f} % of a core, "
                    f"{used / n * 1e6:.1f} µs per command"
                )
            print(
                f"  another call's audio meanwhile: {len(window)} frames, largest gap "
                f"{max(gaps, default=float('nan')) * 1000:.0f} ms"
            )
            await ws.send_str(json.dumps({"command": "hangup"}))
            await asyncio.sleep(0.3)
            await ws.close()
            reader.cancel()
            await probe.close()
            listener.cancel()
    finally:
        stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1000.0, help="commands a second; 0 = back to back")
    ap.add_argument("--kind", choices=("tts", "history"), default="tts")
    ap.add_argument("--unended", action="store_true", help="tts pieces with no sentence end at all")
    ap.add_argument("--silent", action="store_true", help="emoji pieces: no synthesis, the command path only")
    ap.add_argument("--web", type=int, default=1, help="frontends (2: the probe call on the other one)")
    ap.add_argument("--env", action="append", default=[], help="NAME=value for the stack")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
