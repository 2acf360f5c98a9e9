"""Bot-served calls (`option.mediaPass`): how many one media process carries, and what the bot leg adds.

    .venv/bin/python -m bench.bot --dialect raw --steps 50,100,200,300 --seconds 15
    .venv/bin/python -m bench.bot --dialect twilio --steps 50,100,200,300 --seconds 15

Starts a stack of its own (one frontend, one media process) unless --base names one (which must run with
ALLOW_PRIVATE_URLS=1 or list 127.0.0.1 in ALLOWED_URL_HOSTS), and an echo bot in a
process of its own on 127.0.0.1 (raw: every binary packet is sent straight back; twilio: every `media` event
is answered with a `media` event carrying the same payload). For each step, N WebSocket calls (`pcm`) arrive
at --rate, each with `mediaPass` pointing at the bot; when all are answered every call streams 20 ms frames
in real time for --seconds: silence, and once a second (at a per-call offset) a "click", a 20 ms 1 kHz burst
at amplitude 16000. The caller hears the bot's echo; the first loud frame of each echo is matched to the click
it answers, and latency = its arrival - the click's send time (caller frame in -> media process -> bot ->
media process -> the next media tick -> caller frame out). The bot notes when each click reached it, which
splits the latency into caller -> bot and bot -> caller (one monotonic clock: same machine).

Stepping stops at the first N where fewer than 99 % of the clicks come back or p99 > 200 ms (or a call
could not be set up); the last N before it is printed as the last sustained. The load generator (this
process), the bot and the stack share the machine's cores: the CPU of each is printed. Not a test: it only
reports.

--lift-pool-limit starts the stack with aiohttp's default limit of 100 connections per client session
lifted (a sitecustomize.py on its PYTHONPATH, written to the run's temporary directory): a media process
opens all its bot sockets from one session, so without it no more than 100 bot calls run on one media
process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import uvloop
from aiohttp import web

from bench.stackutil import pct, start_stack
from common.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
FRAME_SAMPLES = 320  # 20 ms at 16 kHz
ZERO = bytes(FRAME_SAMPLES * 2)
CLICK = (np.sin(2 * np.pi * 1000 * np.arange(FRAME_SAMPLES) / 16000) * 16000).astype("<i2").tobytes()
LOUD = 8000  # a frame whose peak is above this is (part of) an echoed click; silence echoes as ~0
SLOTS = 4  # callers are spread over four phase slots of the 20 ms period, as independent phones would be
MAX_P99_MS = 200.0
MIN_CLICKS = 0.99


def _ulaw_table() -> np.ndarray:
    """G.711 μ-law code -> linear sample (the classic reference decoder)."""
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    sample = ((((code & 0x0F) << 3) + 0x84) << ((code >> 4) & 0x07)) - 0x84
    return np.where(code & 0x80, -sample, sample).astype(np.int32)


ULAW = _ulaw_table()


def pcm_peak(data: bytes) -> int:
    return int(np.abs(np.frombuffer(data, dtype="<i2").astype(np.int32)).max()) if data else 0


# --- the echo bot (a process of its own) ----------------------------------------------------------------


class EchoBot:
    """Echoes every call's audio; notes when each click (a loud packet after quiet ones) reached it."""

    def __init__(self) -> None:
        self.onsets: dict[str, list[float]] = {}
        self.connections = 0

    async def raw(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 22)
        await ws.prepare(request)
        self.connections += 1
        onsets = self.onsets.setdefault(request.query.get("call", "?"), [])
        prev = False
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            data = msg.data
            now = time.monotonic()
            await ws.send_bytes(data)
            loud = data != ZERO and pcm_peak(data) > LOUD
            if loud and not prev:
                onsets.append(now)
            prev = loud
        return ws

    async def twilio(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 22)
        await ws.prepare(request)
        self.connections += 1
        onsets = self.onsets.setdefault(request.query.get("call", "?"), [])
        prev = False
        sid = ""
        quiet = ""  # the payload of a silent chunk, learnt from the first one
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.monotonic()
            message = json.loads(msg.data)
            event = message.get("event")
            if event == "media":
                payload = message["media"]["payload"]
                await ws.send_str(
                    '{"event":"media","streamSid":"%s","media":{"payload":"%s"}}' % (sid, payload)  # noqa: UP031
                )
                loud = False
                if payload != quiet:
                    peak = int(np.abs(ULAW[np.frombuffer(base64.b64decode(payload), np.uint8)]).max())
                    loud = peak > LOUD
                    if not quiet and peak == 0:
                        quiet = payload
                if loud and not prev:
                    onsets.append(now)
                prev = loud
            elif event == "start":
                sid = message.get("streamSid", "")
        return ws

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"connections": self.connections, "onsets": self.onsets})

    async def reset(self, request: web.Request) -> web.Response:
        self.onsets = {}
        self.connections = 0
        return web.json_response({})


async def serve_bot() -> None:
    bot = EchoBot()
    app = web.Application()
    app.router.add_get("/raw", bot.raw)
    app.router.add_get("/twilio", bot.twilio)
    app.router.add_get("/stats", bot.stats)
    app.router.add_post("/reset", bot.reset)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    gc.freeze()
    # Until the parent closes our stdin (it ended, however it ended).
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    await runner.cleanup()


class BotProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bot", "--serve-bot"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches us only; we stop it
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "PORT":
            self.stop()
            raise RuntimeError(f"the bot did not start: {line}")
        self.url = f"ws://127.0.0.1:{line[1]}"
        self.http = f"http://127.0.0.1:{line[1]}"
        self.ps = psutil.Process(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


# --- the callers -------------------------------------------------------------------------------------------


@dataclass
class Call:
    offset: int  # the frame of each second that carries this call's click
    id: str = field(default_factory=lambda: f"bot.{uuid.uuid4()}")
    ws: aiohttp.ClientWebSocketResponse | None = None
    answered: bool = False
    setup_ms: float = 0.0
    error: str = ""
    sent: int = 0
    received: int = 0
    first_rx: float = 0.0
    clicks: list[float] = field(default_factory=list)  # send time of each click
    onsets: list[float] = field(default_factory=list)  # arrival of each echoed click's first loud frame
    prev_loud: bool = False

    async def run(self, session: aiohttp.ClientSession, base: str, option: dict[str, Any]) -> None:
        t0 = time.monotonic()
        try:
            self.ws = ws = await session.ws_connect(f"{base}/call", params={"id": self.id})
            await ws.send_str(json.dumps({"command": "invite", "option": option}))
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    now = time.monotonic()
                    data = msg.data
                    if not self.received:
                        self.first_rx = now
                    self.received += 1
                    loud = data != ZERO and pcm_peak(data) > LOUD
                    if loud and not self.prev_loud:
                        self.onsets.append(now)
                    self.prev_loud = loud
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    ev = json.loads(msg.data)
                    name = ev.get("event")
                    if name == "answer":
                        self.answered = True
                        self.setup_ms = (time.monotonic() - t0) * 1000
                    elif name == "error" and not self.error:
                        self.error = str(ev.get("error", ""))[:120]
                    elif name == "hangup":
                        if not self.error and self.answered and ev.get("reason") != "normal_clearing":
                            self.error = f"hangup {ev.get('reason')}"
                        break
                else:
                    break
        except Exception as exc:
            self.error = self.error or repr(exc)[:120]

    async def hangup(self) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.send_str(json.dumps({"command": "hangup"}))


async def pace(calls: list[Call], seconds: float) -> None:
    """One clock for every caller stream: each call sends one frame per 20 ms, in its own phase slot."""
    groups = [[c for c in calls[i::SLOTS] if c.answered and c.ws is not None] for i in range(SLOTS)]
    start = time.monotonic()
    for n in range(int(seconds * 50) * SLOTS):
        second_frame = (n // SLOTS) % 50
        for c in groups[n % SLOTS]:
            ws = c.ws
            assert ws is not None
            if ws.closed:
                continue
            try:
                if c.offset == second_frame:
                    c.clicks.append(time.monotonic())
                    await ws.send_bytes(CLICK)
                else:
                    await ws.send_bytes(ZERO)
            except (aiohttp.ClientError, ConnectionError):
                continue
            c.sent += 1
        delay = start + (n + 1) * 0.02 / SLOTS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def match(sent: list[float], arrived: list[float]) -> tuple[list[tuple[float, float]], int, set[int]]:
    """Each arrival answers the latest send before it: (send time, latency ms) pairs, arrivals answering an
    answered send again (duplicates), and the indexes of the sends answered."""
    lat: list[tuple[float, float]] = []
    dups = 0
    seen: set[int] = set()
    for a in arrived:
        i = bisect.bisect_right(sent, a) - 1
        if i < 0:
            continue
        if i in seen:
            dups += 1
            continue
        seen.add(i)
        lat.append((sent[i], (a - sent[i]) * 1000))
    return lat, dups, seen


# --- the stack's figures -----------------------------------------------------------------------------------


class MediaWatch:
    """The media processes' heartbeats: pid, calls, longest tick and late ticks."""

    def __init__(self, redis_url: str | None, prefix: str) -> None:
        self.redis_url, self.prefix = redis_url, prefix
        self.procs: dict[str, dict[str, Any]] = {}
        self.tick_max: dict[str, float] = {}

    async def read(self) -> dict[str, dict[str, Any]]:
        if not self.redis_url:
            return {}
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(self.redis_url)
        try:
            out = {}
            async for key in r.scan_iter(match=Keys(self.prefix).proc("media-*")):
                raw = await r.get(key)
                if raw:
                    info = json.loads(raw)
                    out[info["proc"]] = info
            self.procs = out
            return out
        finally:
            await r.aclose()

    async def watch(self) -> None:
        while True:
            for proc, info in (await self.read()).items():
                self.tick_max[proc] = max(self.tick_max.get(proc, 0.0), float(info.get("tick_max_ms", 0)))
            await asyncio.sleep(0.4)

    async def calls(self) -> int:
        return sum(int(i.get("calls", 0)) for i in (await self.read()).values())


async def slow_bot_drops(session: aiohttp.ClientSession, base: str) -> float:
    """pbx_audio_frames_dropped_total{reason="slow_bot"} from /metrics (nan when not there)."""
    try:
        async with session.get(f"{base}/metrics") as r:
            text = await r.text()
    except aiohttp.ClientError:
        return float("nan")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("pbx_audio_frames_dropped_total") and 'reason="slow_bot"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_start(procs: dict[str, list[psutil.Process]]) -> None:
    for ps in procs.values():
        for p in ps:
            with contextlib.suppress(psutil.Error):
                p.cpu_percent(None)
    psutil.cpu_percent(None)


def cpu_read(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    out = {}
    for name, ps in procs.items():
        total = 0.0
        for p in ps:
            with contextlib.suppress(psutil.Error):
                total += p.cpu_percent(None)
        out[name] = total
    out["machine"] = psutil.cpu_percent(None) * psutil.cpu_count()
    return out


# --- one step ----------------------------------------------------------------------------------------------


@dataclass
class Step:
    n: int
    answered: int = 0
    setup_p99: float = float("nan")
    clicks_sent: int = 0
    clicks_back: int = 0
    lat: list[float] = field(default_factory=list)
    lat_first: list[float] = field(default_factory=list)
    lat_last: list[float] = field(default_factory=list)
    up: list[float] = field(default_factory=list)
    down: list[float] = field(default_factory=list)
    dup_clicks: int = 0
    sent: int = 0
    received: int = 0
    rate_min: float = float("nan")
    rate_mean: float = float("nan")
    backlog_max: int = 0
    crept: int = 0
    down_bins: dict[int, int] = field(default_factory=dict)
    slow_bot: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)
    tick_max: float = float("nan")
    clock_restarts: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def frac(self) -> float:
        return self.clicks_back / self.clicks_sent if self.clicks_sent else 0.0

    @property
    def sustained(self) -> bool:
        return self.answered == self.n and self.frac >= MIN_CLICKS and pct(self.lat, 99) <= MAX_P99_MS


def invite_option(dialect: str, bot_url: str, call_id: str) -> dict[str, Any]:
    if dialect == "twilio":
        media_pass: dict[str, Any] = {"url": f"{bot_url}/twilio?call={call_id}", "dialect": "twilio"}
    else:
        media_pass = {
            "url": f"{bot_url}/raw?call={call_id}",
            "dialect": "raw",
            "packetSize": 640,
            "inputSampleRate": 16000,
            "outputSampleRate": 16000,
        }
    return {"codec": "pcm", "mediaPass": media_pass}


async def run_step(
    n: int,
    args: argparse.Namespace,
    base: str,
    bot: BotProcess,
    watch: MediaWatch,
    procs: dict[str, list[psutil.Process]],
) -> Step:
    st = Step(n)
    ws_base = base.replace("http", "ws", 1)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(f"{bot.http}/reset") as r:
            await r.read()
        drops_before = await slow_bot_drops(session, base)
        # Click offsets spread evenly over the second (and over the phase slots).
        calls = [Call(offset=(i * 7) % 50) for i in range(n)]
        tasks = []
        for c in calls:
            tasks.append(
                asyncio.create_task(c.run(session, ws_base, invite_option(args.dialect, bot.url, c.id)))
            )
            await asyncio.sleep(1 / args.rate)
        t_setup = time.monotonic()
        while time.monotonic() - t_setup < 30:
            if all(c.answered or c.error or t.done() for c, t in zip(calls, tasks, strict=True)):
                break
            await asyncio.sleep(0.05)
        st.answered = sum(c.answered for c in calls)
        st.setup_p99 = pct([c.setup_ms for c in calls if c.answered], 99)
        await asyncio.sleep(0.5)

        late_before = {p: int(i.get("clock_restarts", 0)) for p, i in (await watch.read()).items()}
        watch.tick_max = {}
        watcher = asyncio.create_task(watch.watch())
        spy = None
        media_pids = [p.pid for p in procs.get("media", [])]
        if args.profile and media_pids:
            out = Path(args.profile) / f"bot-{args.dialect}-{n}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            spy = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "-p",
                str(media_pids[0]),
                "-d",
                str(max(1, int(args.seconds) - 2)),
                "-r",
                "100",
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        # The load generator's own collector pauses would show up as latency: keep them out.
        gc.collect()
        gc.freeze()
        gc.disable()
        cpu_start(procs)
        t_start = time.monotonic()
        try:
            await pace(calls, args.seconds)
            t_end = time.monotonic()
            st.cpu = cpu_read(procs)
            at_end = [c.received for c in calls]
        finally:
            gc.enable()
        # Let the echoes in flight arrive (until nothing more comes, at most 10 s).
        last = -1
        for _ in range(50):
            now_rx = sum(c.received for c in calls)
            if now_rx == last and now_rx >= sum(c.sent for c in calls):
                break
            last = now_rx
            await asyncio.sleep(0.2)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if spy is not None:
            await spy.wait()
        late_after = {p: int(i.get("clock_restarts", 0)) for p, i in (await watch.read()).items()}
        st.clock_restarts = sum(v - late_before.get(p, 0) for p, v in late_after.items())
        st.tick_max = max(watch.tick_max.values(), default=float("nan"))
        st.slow_bot = await slow_bot_drops(session, base) - drops_before
        async with session.get(f"{bot.http}/stats") as r:
            bot_onsets: dict[str, list[float]] = (await r.json())["onsets"]

        for c, rx_end in zip(calls, at_end, strict=True):
            if not c.answered:
                if c.error:
                    st.errors.append(c.error)
                continue
            if c.error:
                st.errors.append(c.error)
            st.sent += c.sent
            st.received += c.received
            st.clicks_sent += len(c.clicks)
            lat, dups, seen = match(c.clicks, c.onsets)
            st.lat.extend(ms for _, ms in lat)
            # Does the latency creep up during the run (bot audio queued behind earlier audio)?
            st.lat_first.extend(ms for t, ms in lat if t - t_start < 3)
            st.lat_last.extend(ms for t, ms in lat if t_end - t < 3)
            st.clicks_back += len(seen)
            st.dup_clicks += dups
            at_bot = bot_onsets.get(c.id, [])
            st.up.extend(ms for _, ms in match(c.clicks, at_bot)[0])
            down = [ms for _, ms in match(at_bot, c.onsets)[0]]
            st.down.extend(down)
            if down:  # 0: played at the first tick after the bot's audio came; k: k frames queued before it
                slot = min(int(sorted(down)[len(down) // 2] // 20), 4)
                st.down_bins[slot] = st.down_bins.get(slot, 0) + 1
            st.backlog_max = max(st.backlog_max, c.sent - rx_end)
            if len(lat) >= 6:
                first = sorted(ms for _, ms in lat[:3])[1]
                final = sorted(ms for _, ms in lat[-3:])[1]
                st.crept += final - first > 15  # a frame (20 ms) more queued at the end than at the start
        rates = [
            rx / (t_end - c.first_rx)
            for c, rx in zip(calls, at_end, strict=True)
            if c.answered and c.first_rx and t_end - c.first_rx > 1
        ]
        if rates:
            st.rate_min, st.rate_mean = min(rates), sum(rates) / len(rates)

        await asyncio.gather(*(c.hangup() for c in calls))
        await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            t.cancel()
        for c in calls:
            if c.ws is not None:
                with contextlib.suppress(Exception):
                    await c.ws.close()
    gc.collect()
    # The next step starts on an idle media process.
    t0 = time.monotonic()
    while await watch.calls() and time.monotonic() - t0 < 20:
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.0)
    return st


# --- output ------------------------------------------------------------------------------------------------

HEADER = (
    "| calls | set up | clicks back | bot leg p50 / p99 / max ms | caller→bot p50 / p99 "
    "| bot→caller p50 / p99 | frames/s per call min / mean | lost / dup | media CPU | tick max ms / late "
    "| bot CPU | generator CPU "
    "| frontend + redis CPU | machine |"
)


def row(st: Step) -> str:
    lost = max(0, st.sent - st.received)
    dup = max(0, st.received - st.sent)
    cpu = st.cpu
    return (
        f"| {st.n} | {st.answered} | {st.frac * 100:.2f} % ({st.clicks_back}/{st.clicks_sent}) "
        f"| {pct(st.lat, 50):.1f} / {pct(st.lat, 99):.1f} / {max(st.lat, default=float('nan')):.1f} "
        f"| {pct(st.up, 50):.1f} / {pct(st.up, 99):.1f} | {pct(st.down, 50):.1f} / {pct(st.down, 99):.1f} "
        f"| {st.rate_min:.1f} / {st.rate_mean:.1f} | {lost} / {dup} "
        f"| {cpu.get('media', float('nan')):.0f} % | {st.tick_max:.1f} / {st.clock_restarts} "
        f"| {cpu.get('bot', float('nan')):.0f} % | {cpu.get('generator', float('nan')):.0f} % "
        f"| {cpu.get('frontend', float('nan')):.0f} + {cpu.get('redis', float('nan')):.0f} % "
        f"| {cpu.get('machine', float('nan')):.0f} % |"
    )


def details(st: Step) -> str:
    lines = [
        f"  N={st.n}: setup p99 {st.setup_p99:.1f} ms; frames sent {st.sent}, echoed {st.received}; "
        f"echoes counted twice {st.dup_clicks}; most frames in flight when sending stopped "
        f"{st.backlog_max} ({st.backlog_max * 20} ms); caller audio dropped as slow_bot {st.slow_bot:.0f}; "
        f"bot leg p50 / p99 in the first 3 s {pct(st.lat_first, 50):.1f} / {pct(st.lat_first, 99):.1f}, "
        f"in the last 3 s {pct(st.lat_last, 50):.1f} / {pct(st.lat_last, 99):.1f} ms; calls whose echo came "
        f"back a frame later at the end than at the start {st.crept}; calls by their median bot→caller "
        f"latency: "
        + ", ".join(
            f"{k * 20}{'+' if k == 4 else f'-{k * 20 + 20}'} ms: {v}" for k, v in sorted(st.down_bins.items())
        )
    ]
    if st.errors:
        lines.append(f"  errors ({len(st.errors)}): {sorted(set(st.errors))[:3]}")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------------------


POOL_PATCH = """\
# Written by bench/bot.py --lift-pool-limit, for the stack it starts (never the project's own code):
# aiohttp's TCPConnector holds at most 100 connections by default, and a mediaPass WebSocket holds one for
# the whole call. Without a limit, the bench can see what one media process does beyond 100 bot calls.
import aiohttp

_init = aiohttp.TCPConnector.__init__


def _unlimited(self, *args, **kwargs):
    kwargs.setdefault("limit", 0)
    _init(self, *args, **kwargs)


aiohttp.TCPConnector.__init__ = _unlimited
"""


def lift_pool_limit(tmp: Path) -> Path:
    """A directory whose sitecustomize.py lifts aiohttp's connection limit in the stack's processes."""
    patch = tmp / "pool-patch"
    patch.mkdir(exist_ok=True)
    (patch / "sitecustomize.py").write_text(POOL_PATCH)
    return patch


def processes(
    stack: Any, watch_procs: dict[str, dict[str, Any]], bot: BotProcess
) -> dict[str, list[psutil.Process]]:
    out: dict[str, list[psutil.Process]] = {"bot": [bot.ps], "generator": [psutil.Process()]}
    media_pids = {int(i["pid"]) for i in watch_procs.values() if "pid" in i}
    with contextlib.suppress(psutil.Error):
        out["media"] = [psutil.Process(pid) for pid in media_pids]
    if stack is not None:
        if stack.web is not None:
            web_root = psutil.Process(stack.web.pid)
            out["frontend"] = [web_root, *web_root.children(recursive=True)]
        if stack.redis is not None and stack.redis.proc is not None:
            out["redis"] = [psutil.Process(stack.redis.proc.pid)]
    return out


async def main_async(args: argparse.Namespace) -> None:
    steps = [int(x) for x in (args.calls or args.steps).split(",")]
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM, main_task.cancel
    )  # cleans up as Ctrl-C does
    tmp = Path(tempfile.mkdtemp(prefix="pbx-bench-bot-"))
    stack = None
    bot: BotProcess | None = None
    base = args.base
    try:
        bot = BotProcess()
        if base is None:
            extra: dict[str, str] = {}
            if args.lift_pool_limit:
                extra["PYTHONPATH"] = os.pathsep.join(
                    x for x in (str(lift_pool_limit(tmp)), os.environ.get("PYTHONPATH", "")) if x
                )
            base, stack = await start_stack(
                web=1, media=1, max_calls=max(steps) + 10, root=tmp, log=None, **extra
            )
        redis_url = stack.env["REDIS_URL"] if stack else args.redis
        watch = MediaWatch(redis_url, args.prefix)
        info = await watch.read()
        procs = processes(stack, info, bot)
        load = os.getloadavg()
        print(
            f"dialect {args.dialect}, {len(info) or '?'} media process(es), {psutil.cpu_count()} cores "
            f"shared by the stack, the bot and this load generator; "
            f"load average before: {load[0]:.2f} {load[1]:.2f}",
            flush=True,
        )
        results: list[Step] = []
        for n in steps:
            st = await run_step(n, args, base, bot, watch, procs)
            results.append(st)
            print(row(st), flush=True)
            print(details(st), flush=True)
            if not st.sustained:
                break
        print()
        print(f"mediaPass dialect {args.dialect}, {args.seconds:.0f} s of audio per step")
        print(HEADER)
        print("|" + "---|" * (HEADER.count("|") - 1))
        for st in results:
            print(row(st))
        ok = [st.n for st in results if st.sustained]  # stepping stopped at the first one not sustained
        last = ok[-1] if ok else None
        first_bad = next((st for st in results if not st.sustained), None)
        if first_bad is None:
            print(f"last sustained: {last} calls (every step sustained; try more)")
        else:
            why = []
            if first_bad.answered < first_bad.n:
                why.append(f"{first_bad.n - first_bad.answered} calls not set up")
            if first_bad.frac < MIN_CLICKS:
                why.append(f"clicks back {first_bad.frac * 100:.1f} %")
            if pct(first_bad.lat, 99) > MAX_P99_MS:
                why.append(f"p99 {pct(first_bad.lat, 99):.0f} ms")
            shown = last if last is not None else "none"
            print(f"last sustained: {shown} calls ({first_bad.n}: {', '.join(why)})")
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f}")
    finally:
        if stack is not None:
            stack.stop()
        if bot is not None:
            bot.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", choices=["raw", "twilio"], default="raw")
    parser.add_argument("--steps", default="50,100,200,300", help="calls per step, comma-separated")
    parser.add_argument("--calls", help="same as --steps (e.g. --calls 100)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of caller audio per step")
    parser.add_argument("--rate", type=float, default=50.0, help="new calls per second while ramping up")
    parser.add_argument("--base", help="a running stack, e.g. http://127.0.0.1:8080 (default: start one)")
    parser.add_argument("--redis", help="with --base: its REDIS_URL, for the media process's figures")
    parser.add_argument("--prefix", default="pbx:", help="with --base: its REDIS_PREFIX")
    parser.add_argument("--profile", default="", help="a directory: py-spy the media process in each step")
    parser.add_argument(
        "--lift-pool-limit",
        action="store_true",
        help="start the stack with aiohttp's default 100-connection limit lifted (a sitecustomize.py on its "
        "PYTHONPATH): the media process opens every bot socket from one pool of that size",
    )
    parser.add_argument("--serve-bot", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bot:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (closes our stdin)
        uvloop.run(serve_bot())
        return
    # Ctrl-C cancels the run and the stack and the bot are stopped, even when started with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        uvloop.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; the stack and the bot are stopped", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
