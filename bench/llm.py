"""LLM proxy overhead: time to first byte through `/llm/v1` against straight to the service, and streamed
chunks per second through one frontend process.

    .venv/bin/python -m bench.llm
    .venv/bin/python -m bench.llm --requests 1000 --streams 20 --events 10000 --paced 500

A stand-in OpenAI-compatible service runs in a process of its own and answers streaming chat completions
(server-sent events of ~190 bytes, the first one at once). The proxy is the real stack (gunicorn, one
frontend, one media process, embedded Redis) with `OPENAI_BASE_URL` pointing at the stand-in. Printed:

- time to first byte (request sent -> first body bytes), one request at a time on a kept-alive connection,
  direct and through the proxy alternately, and the difference of the medians;
- saturation: `--streams` parallel streams of `--events` events each, as fast as the stand-in writes them,
  direct and through the proxy: events and client reads per second, and the frontend's CPU;
- paced: `--paced` parallel streams at `--rate` events a second each (a model's token rate) for
  `--seconds`: the frontend's CPU for that load.

Not a test: it only reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
import uvloop
from aiohttp import web

from bench.stackutil import pct, start_stack
from common.embedded import free_port

EVENT = (
    "data: "
    + json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-bench",
            "choices": [{"index": 0, "delta": {"content": " token"}, "finish_reason": None}],
        }
    )
    + "\n\n"
).encode()


# The stand-in service (`--serve-fake PORT`, in its own process).


async def _completions(request: web.Request) -> web.StreamResponse:
    ask = await request.json()
    events, rate = int(ask.get("events", 1)), float(ask.get("rate", 0))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    start = time.monotonic()
    for i in range(events):
        if rate and i:
            # Absolute deadlines, so a late wake-up does not slow the whole stream down.
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        await resp.write(EVENT)
        if not rate and i % 16 == 15:
            await asyncio.sleep(0)  # let the other streams of this process write too
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _serve_fake(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def start_fake() -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.llm", "--serve-fake", str(port)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return f"http://127.0.0.1:{port}/v1", proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the stand-in service did not start")


# The measurements.


async def stream(session: aiohttp.ClientSession, url: str, events: int, rate: float = 0) -> tuple[float, int]:
    """(ms to the first body bytes, client reads) for one streaming completion, read to its end."""
    body = {"model": "gpt-bench", "stream": True, "events": events, "rate": rate, "messages": []}
    sent = time.perf_counter()
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, resp.status
        first = 0.0
        reads = 0
        async for _ in resp.content.iter_any():
            if not reads:
                first = (time.perf_counter() - sent) * 1e3
            reads += 1
    return first, reads


async def ttfb(session: aiohttp.ClientSession, direct: str, proxied: str, n: int) -> None:
    for url in (direct, proxied) * 25:  # warm both connection pools and code paths
        await stream(session, url, 1)
    times: dict[str, list[float]] = {direct: [], proxied: []}
    for _ in range(n):
        for url in (direct, proxied):
            first, _ = await stream(session, url, 1)
            times[url].append(first)
    d, p = times[direct], times[proxied]
    print(f"time to first byte, {n} requests each, one at a time:")
    print(f"  direct  p50={pct(d, 50):6.2f} ms  p99={pct(d, 99):6.2f} ms")
    print(f"  proxied p50={pct(p, 50):6.2f} ms  p99={pct(p, 99):6.2f} ms")
    print(
        f"  added   p50={pct(p, 50) - pct(d, 50):6.2f} ms  p99={pct(p, 99) - pct(d, 99):6.2f} ms"
        "  (differences of the percentiles)"
    )


async def saturate(
    session: aiohttp.ClientSession, url: str, streams: int, events: int, frontend: psutil.Process | None
) -> None:
    if frontend is not None:
        frontend.cpu_percent(None)
    began = time.perf_counter()
    done = await asyncio.gather(*(stream(session, url, events) for _ in range(streams)))
    took = time.perf_counter() - began
    reads = sum(r for _, r in done)
    cpu = f", frontend CPU {frontend.cpu_percent(None):.0f} %" if frontend is not None else ""
    label = "proxied" if frontend is not None else "direct "
    print(
        f"  {label} {streams * events / took:8.0f} events/s  {reads / took:8.0f} client reads/s"
        f"  ({streams}x{events} events in {took:.2f} s{cpu})"
    )


async def paced(
    session: aiohttp.ClientSession,
    url: str,
    streams: int,
    rate: float,
    seconds: float,
    frontend: psutil.Process,
) -> None:
    events = int(rate * seconds)
    frontend.cpu_percent(None)
    began = time.perf_counter()
    done = await asyncio.gather(*(stream(session, url, events, rate) for _ in range(streams)))
    took = time.perf_counter() - began
    cpu = frontend.cpu_percent(None)
    reads = sum(r for _, r in done)
    print(
        f"paced: {streams} streams x {rate:g} events/s for {seconds:g} s through the proxy:"
        f" {streams * events / took:.0f} events/s, {reads / took:.0f} client reads/s,"
        f" frontend CPU {cpu:.0f} % ({cpu / (reads / took) * 1e4:.1f} µs per chunk)"
    )


def frontend_process(stack_web_pid: int) -> psutil.Process:
    children = psutil.Process(stack_web_pid).children()
    assert len(children) == 1, "expected one gunicorn worker"
    return children[0]


async def run(args: argparse.Namespace) -> None:
    fake_base, fake = start_fake()
    direct = f"{fake_base}/chat/completions"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base, stack = await start_stack(
                web=1,
                media=1,
                max_calls=10,
                root=Path(tmp),
                OPENAI_BASE_URL=fake_base,
                OPENAI_API_KEY="sk-bench",
                # The benchmark's requests bring no key and no API token: the proxy lends its key to anyone.
                LLM_PROXY_OPEN="1",
                LOG_LEVEL="WARNING",
            )
            try:
                assert stack.web is not None
                frontend = frontend_process(stack.web.pid)
                proxied = f"{base}/llm/v1/chat/completions"
                connector = aiohttp.TCPConnector(limit=0)
                async with aiohttp.ClientSession(connector=connector) as session:
                    await ttfb(session, direct, proxied, args.requests)
                    print(f"saturation, {args.streams} parallel streams (one frontend process):")
                    await saturate(session, direct, args.streams, args.events, None)
                    await saturate(session, proxied, args.streams, args.events, frontend)
                    await paced(session, proxied, args.paced, args.rate, args.seconds, frontend)
            finally:
                stack.stop()
    finally:
        fake.terminate()
        fake.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=500, help="time-to-first-byte samples per path")
    ap.add_argument("--streams", type=int, default=20, help="parallel streams at saturation")
    ap.add_argument("--events", type=int, default=10000, help="events per saturating stream")
    ap.add_argument("--paced", type=int, default=200, help="parallel paced streams")
    ap.add_argument("--rate", type=float, default=50.0, help="events a second per paced stream")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of a paced stream")
    ap.add_argument("--serve-fake", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_fake:
        uvloop.run(_serve_fake(args.serve_fake))
        return
    os.environ.pop("OPENAI_API_KEY", None)
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
