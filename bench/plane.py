"""Call-plane load benchmark: steps of N calls, each set up while the calls before it already stream.

    .venv/bin/python -m bench.plane                                    # steps 50,100,200,300,400; 20 s each
    .venv/bin/python -m bench.plane --steps 20,50 --seconds 8
    .venv/bin/python -m bench.plane --steps 100 --seconds 15 --profile /tmp/prof  # py-spy, top functions
    .venv/bin/python -m bench.plane --steps 400,500 --procs 2 --json plane.json   # two generator processes
    .venv/bin/python -m bench.plane --base http://127.0.0.1:8080 --redis redis://127.0.0.1:6379/0
    .venv/bin/python -m bench.plane --top /tmp/prof/plane-100-media.txt          # summarize a raw profile
    .venv/bin/python -m bench.plane --steps 100 --eou smart_turn                   # end of turn under load

Each step starts a fresh stack (embedded Redis, --web frontends, --media media processes) unless --base names
a running one. N `/call` sockets (pcm) open at --rate per second. From its own `answer` on, each call sends
`play` (a WAV of --seconds of 440 Hz), streams caller speech in 20 ms frames on its own clock (the calls'
clocks spread over the 20 ms period; one pacing loop sends every call's frame at its slot) and sends
`history` every 2 s, timing the `addHistory` that comes back. A played frame is on time if it arrives
within [play sent, play sent + seconds + 0.5 s]; on time % = on time / (answered x seconds x 50). Setup is
socket open -> `answer`. CPU (% of a core) and RSS are per role, over the steady window: from the last answer
(or the end of the ramp) to the end of the first call's stream; "ms per call-s" is server CPU per second of a
call; "others" is the machine's CPU not used by the stack or the generator: the kernel's network softirq,
this script's own bookkeeping, and whatever else runs on the machine.

With --eou TYPE each call's `invite` asks for that end-of-turn detection; the caller's sentence ends in a
known frame, and "eou after the words" is the time from that frame's sending to the first `eou` event after
it (model verdicts and timer fallbacks counted apart), as the bot sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import heapq
import itertools
import json
import multiprocessing as mp
import os
import queue
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import uvloop

from bench.calls import caller_speech, make_wav, stack_processes
from bench.stackutil import pct, start_stack
from common.config import default_web_concurrency
from common.keys import Keys

PERIOD = 0.02
GRACE = 0.5  # a played frame arriving later than this after its call's audio should have ended is late
HISTORY_EVERY = 100  # frames: one `history` round trip every 2 s
BACKLOG = 32 * 1024  # bytes unsent on a caller socket at which its frames are skipped rather than queued
LATE_SEND = 0.010  # a caller frame sent this long after its slot counts against the generator
END_WAIT = 10.0  # how long past its window a call waits for its played file's `trackEnd`
ANSWER_WAIT = 30.0  # a call not answered by then is given up
ROLES = ("frontend", "media", "redis", "other")


@dataclass(slots=True)
class Call:
    """One call's state and counts, kept by its reader task and the shared pacing loop (monotonic times)."""

    idx: int
    ws: aiohttp.ClientWebSocketResponse | None = None
    t_open: float = 0.0
    t_answer: float = 0.0
    t_play: float = 0.0
    deadline: float = 0.0  # played frames arriving later than this are late
    track_end: float = 0.0
    setup_ms: float = 0.0
    n: int = 0  # caller frames due so far
    sent: int = 0
    skipped: int = 0
    received: int = 0
    on_time: int = 0
    pending: dict[str, float] = field(default_factory=dict)
    rtts: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # `error` events: code and message
    hung_up: bool = False  # by the client, at the end
    over: bool = False
    refused: bool = False
    reason: str = ""  # the server's hangup reason
    failure: str = ""  # why the client gave up: connect error, no answer, time limit
    words_end: float = 0.0  # when the frame with the end of the caller's words was sent (0: answered)
    eou: list[tuple[float, bool]] = field(default_factory=list)  # ms after the words, with a probability

    def record(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("ws", "pending")}
        return out | {"unanswered": len(self.pending)}  # `history` sent, no `addHistory` back


class Generator:
    """One process's share of the calls: a reader task per call, one pacing loop for all caller streams."""

    def __init__(self, spec: dict[str, Any], frames: list[bytes], words_end: int) -> None:
        self.spec = spec
        self.frames = frames
        self.words_end = words_end
        self.total = int(spec["seconds"] * 50)
        self.heap: list[tuple[float, int, Call]] = []
        self.sends = self.late_sends = 0
        option: dict[str, Any] = {"codec": "pcm"} | ({"recorder": {}} if spec["recorder"] else {})
        if spec["eou"]:
            option["eou"] = {"type": spec["eou"]}
        self.invite = json.dumps({"command": "invite", "option": option})
        self.play = json.dumps({"command": "play", "url": spec["wav"]})

    async def run(self, t0: float) -> dict[str, Any]:
        calls = [Call(i) for i in self.spec["indices"]]
        limit = ANSWER_WAIT + self.spec["seconds"] + GRACE + END_WAIT + 5
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks: list[asyncio.Task] = []
            pacer, watchdog = asyncio.create_task(self.pace()), asyncio.create_task(self.watch(calls, tasks))
            for c in calls:  # on an absolute schedule: a slow moment does not shift the later calls
                await asyncio.sleep(max(0.0, t0 + c.idx / self.spec["rate"] - time.monotonic()))
                tasks.append(asyncio.create_task(asyncio.wait_for(self.call(session, c), limit)))
            ramp_end = time.monotonic()
            await asyncio.wait(tasks, timeout=limit + 5)
            for c, task in zip(calls, tasks, strict=True):
                if not task.done():  # stuck even in its own time limit's cancellation: leave it
                    c.failure = c.failure or "stuck"
                    task.cancel()
                elif not task.cancelled() and (exc := task.exception()) is not None and not c.failure:
                    c.failure = "time limit" if isinstance(exc, TimeoutError) else repr(exc)
            pacer.cancel()
            watchdog.cancel()
        records = [c.record() for c in calls]
        return dict(calls=records, ramp_end=ramp_end, sends=self.sends, late_sends=self.late_sends)

    async def watch(self, calls: list[Call], tasks: list[asyncio.Task]) -> None:
        """Give up the calls not answered within ANSWER_WAIT (their tasks were started in `calls` order)."""
        while True:
            await asyncio.sleep(1.0)
            for c, task in zip(calls, tasks, strict=False):
                if (
                    c.t_open
                    and not c.t_answer
                    and time.monotonic() - c.t_open > ANSWER_WAIT
                    and not task.done()
                ):
                    c.failure = f"no answer in {ANSWER_WAIT:g} s"
                    task.cancel()

    async def call(self, session: aiohttp.ClientSession, c: Call) -> None:
        c.t_open = time.monotonic()
        try:
            ws = await session.ws_connect(
                self.spec["url"],
                params={"id": f"plane.{uuid.uuid4().hex}"},
                timeout=aiohttp.ClientWSTimeout(ws_close=2),
            )
        except aiohttp.WSServerHandshakeError as exc:
            c.refused, c.reason = exc.status == 503, f"http {exc.status}"
            c.failure = "" if c.refused else c.reason
            return
        except (aiohttp.ClientError, OSError) as exc:
            c.failure = repr(exc)
            return
        c.ws = ws
        try:
            await ws.send_str(self.invite)
            await self.read(c, ws)
        finally:
            c.over = True
            with contextlib.suppress(Exception):  # a server that stopped reading must not hold us here
                await asyncio.wait_for(ws.close(), 3)

    async def read(self, c: Call, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                c.received += 1
                if time.monotonic() <= c.deadline:
                    c.on_time += 1
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            ev = json.loads(msg.data)
            name = ev.get("event")
            if name == "answer":
                c.t_answer = time.monotonic()
                c.setup_ms = (c.t_answer - c.t_open) * 1000
                await ws.send_str(self.play)
                c.t_play = time.monotonic()
                c.deadline = c.t_play + self.spec["seconds"] + GRACE
                # The golden-ratio phase spreads any number of calls evenly over the 20 ms period.
                heapq.heappush(self.heap, (c.t_play + (c.idx * 0.618034 % 1) * PERIOD, c.idx, c))
            elif name == "addHistory":
                sent = c.pending.pop(ev.get("text", ""), None)
                if sent is not None:
                    c.rtts.append((time.monotonic() - sent) * 1000)
            elif name == "eou" and c.words_end:
                c.eou.append(((time.monotonic() - c.words_end) * 1000, ev.get("probability") is not None))
                c.words_end = 0.0
            elif name == "trackEnd" and ev.get("trackId") == "server-side-track":
                c.track_end = time.monotonic()
            elif name == "error":
                c.errors.append(f"{ev.get('code')} {str(ev.get('error'))[:60]}")
                c.refused |= not c.t_answer and ev.get("code") == 503
            elif name == "hangup":
                if not c.hung_up:
                    c.reason = ev.get("reason") or "?"
                    c.refused |= c.reason == "no_capacity"
                return

    async def pace(self) -> None:
        """Every call's frame at its slot (due times never drift: a late loop catches up), `history` every
        2 s, and the client's hangup once the call's played file has ended."""
        heap, frames, total = self.heap, self.frames, self.total
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now + 0.001:
                due, idx, c = heapq.heappop(heap)
                ws = c.ws
                if c.over or ws is None:
                    continue
                try:
                    if c.n < total:
                        self.sends += 1
                        self.late_sends += now - due > LATE_SEND
                        if c.n and c.n % HISTORY_EVERY == 0:
                            token = f"{idx}.{c.n}"
                            c.pending[token] = time.monotonic()
                            await ws.send_str(
                                json.dumps({"command": "history", "speaker": "bench", "text": token})
                            )
                        # A phone does not wait for a congested network: skip rather than block the loop.
                        if ws._writer.transport.get_write_buffer_size() < BACKLOG:
                            k = (idx * 53 + c.n) % len(frames)
                            await ws.send_bytes(frames[k])
                            c.sent += 1
                            if k == self.words_end:
                                c.words_end = time.monotonic()
                        else:
                            c.skipped += 1
                        c.n += 1
                        heapq.heappush(heap, (due + PERIOD, idx, c))
                    elif (c.track_end and now - c.track_end > 0.2) or now > c.deadline + END_WAIT:
                        c.hung_up = True
                        await ws.send_str('{"command":"hangup"}')
                    else:  # the stream is done: wait for the played file to end, checking every 50 ms
                        heapq.heappush(heap, (now + 0.05, idx, c))
                except (aiohttp.ClientError, ConnectionError):
                    c.over = True
            # Never below 1 ms: uvloop's timers count whole milliseconds, and a shorter sleep would spin.
            delay = heap[0][0] - time.monotonic() if heap else PERIOD
            await asyncio.sleep(min(max(delay, 0.001), 0.002))


def generate(
    spec: dict[str, Any], frames: list[bytes], words_end: int, ready: Any, start: Any, results: Any
) -> None:
    """A generator process: report ready, wait for the common start time, run, send back the records."""
    gen = Generator(spec, frames, words_end)
    ready.put(os.getpid())
    t0 = start.get()
    # Its own collector pauses would show up as server latency: keep them out.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        out = uvloop.run(gen.run(t0))
    except BaseException as exc:
        results.put({"error": repr(exc)})
        raise
    results.put(out)


def role(p: psutil.Process) -> str:
    cmd = " ".join(p.cmdline())
    if "redis-server" in cmd:
        return "redis"
    if "gunicorn" in cmd:
        return "frontend"
    return "media" if "worker.child" in cmd else "other"  # other: the media supervisor


class Sampler:
    """CPU time and RSS per role every 0.25 s, to cut any window out of afterwards. The stack's process
    tree is re-read every second (a media process may be replaced); one that exits keeps its CPU time."""

    def __init__(self, roots: list[int], generators: list[int], rss_limit: float) -> None:
        self.roots, self.generators, self.rss_limit = roots, generators, rss_limit
        self.over_rss = False
        self.procs: dict[int, tuple[str, psutil.Process]] = {}
        self.last: dict[int, tuple[str, float, int]] = {}
        self.samples: list[tuple[float, dict[str, list[float]]]] = []
        self.by_pid: list[tuple[float, dict[int, tuple[str, float]]]] = []

    def pids(self, name: str) -> list[int]:
        return [pid for pid, (r, _) in self.procs.items() if r == name]

    def refresh(self) -> None:
        for p in stack_processes(self.roots + self.generators):
            with contextlib.suppress(psutil.Error):
                self.procs.setdefault(p.pid, ("generator" if p.pid in self.generators else role(p), p))

    async def run(self) -> None:
        for i in itertools.count():
            if i % 4 == 0:
                self.refresh()
            for pid, (name, p) in self.procs.items():
                try:
                    with p.oneshot():
                        t = p.cpu_times()
                        self.last[pid] = (name, t.user + t.system, p.memory_info().rss)
                except psutil.Error:
                    self.last[pid] = (name, self.last.get(pid, (name, 0.0, 0))[1], 0)
            row = {r: [0.0, 0.0] for r in (*ROLES, "generator", "machine")}
            ct = psutil.cpu_times()  # the whole machine: others work on it too
            row["machine"][0] = ct.user + ct.nice + ct.system + ct.irq + ct.softirq + ct.steal
            for name, cpu, rss in self.last.values():
                row[name][0] += cpu
                row[name][1] += rss
            self.samples.append((time.monotonic(), row))
            self.by_pid.append((time.monotonic(), {pid: (n, cpu) for pid, (n, cpu, _) in self.last.items()}))
            self.over_rss |= sum(row[r][1] for r in ROLES) > self.rss_limit
            await asyncio.sleep(0.25)

    def processes(self, a: float, b: float) -> dict[str, list[float]]:
        """Per role, each process's CPU as % of a core between the samples nearest a and b."""
        inside = [s for s in self.by_pid if a <= s[0] <= b]
        out: dict[str, list[float]] = {}
        if len(inside) < 2:
            return out
        (ta, first), (tb, final) = inside[0], inside[-1]
        for pid, (name, cpu) in final.items():
            if pid in first:
                out.setdefault(name, []).append(round((cpu - first[pid][1]) / (tb - ta) * 100, 1))
        return out

    def window(self, a: float, b: float) -> dict[str, tuple[float, float]]:
        """Per role: CPU as % of a core, and the largest RSS in MiB, between the samples nearest a and b."""
        inside = [s for s in self.samples if a <= s[0] <= b]
        if len(inside) < 2:
            return {r: (float("nan"), float("nan")) for r in (*ROLES, "generator", "machine")}
        (ta, first), (tb, final) = inside[0], inside[-1]
        return {
            r: ((final[r][0] - first[r][0]) / (tb - ta) * 100, max(s[r][1] for _, s in inside) / 2**20)
            for r in first
        }


async def settle(roots: list[int], limit: float = 10.0) -> None:
    """Let a fresh stack finish its start-up work (imports, warm-ups), which admission control would take
    for load: wait until no process of it uses 10 % of a core, at most `limit` seconds."""
    procs = stack_processes(roots)
    for _ in range(int(limit / 0.5)):
        with contextlib.suppress(psutil.Error):
            busy = [p.cpu_percent(None) for p in procs]
            if busy and max(busy) < 10:
                return
        await asyncio.sleep(0.5)


def discover(redis_url: str, prefix: str) -> list[int]:
    """The root processes of a running stack on this machine: its Redis, and the gunicorn arbiter and the
    media supervisor (or, run otherwise, the processes themselves) of the heartbeats kept in Redis."""
    import redis

    r = redis.Redis.from_url(redis_url)
    roots = set()
    for key in r.scan_iter(match=Keys(prefix).proc_pattern()):
        with contextlib.suppress(ValueError, TypeError, psutil.Error):
            info = json.loads(r.get(key) or "{}")
            pid = int(info.get("pid") or key.decode().rsplit("-", 2)[-2])  # web ids: web-host-pid-nonce
            parent = psutil.Process(pid).parent()
            ours = parent is not None and re.search(r"gunicorn|-m worker\b", " ".join(parent.cmdline()))
            roots.add(parent.pid if parent and ours else pid)
    with contextlib.suppress(psutil.Error):
        if "redis" in (p := psutil.Process(int(r.info("server")["process_id"]))).name():
            roots.add(p.pid)
    return sorted(roots)


async def spy(pid: int, out: Path, seconds: int, fmt: str) -> None:
    """py-spy on one process: a raw collapsed-stack file for `top`, and a flamegraph/speedscope to look at."""
    ext = {"flamegraph": "svg", "speedscope": "json"}[fmt]
    runs = [("raw", out.with_suffix(".txt")), (fmt, out.with_suffix(f".{ext}"))]
    exe = str(Path(sys.executable).parent / "py-spy")
    args = ["record", "-p", str(pid), "-d", str(seconds), "-r", "100", "--nonblocking", "-f"]
    quiet = asyncio.subprocess.DEVNULL
    procs = [
        await asyncio.create_subprocess_exec(exe, *args, f, "-o", str(path), stdout=quiet, stderr=quiet)
        for f, path in runs
    ]
    for p in procs:
        await p.wait()


def top(path: Path, k: int = 15) -> tuple[int, list[tuple[str, int]]]:
    """All samples, and the k functions with the most own samples (the leaf of a stack), in a py-spy raw
    file. A leaf that is an event loop's run frame (`Runner.run`, `GunicornWebWorker.run`) stands for
    time in the loop's own C code: uvloop's polling and socket I/O."""
    own: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            own[re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])] += int(count)
    return sum(own.values()), own.most_common(k)


def print_top(path: Path) -> None:
    total, rows = top(path)
    print(f"{path}: top functions by own samples, of {total}")
    for fn, n in rows:
        print(f"  {n / max(total, 1) * 100:5.1f}% {n:6d}  {fn}")


async def run_step(
    n: int, args: argparse.Namespace, speech: tuple[list[bytes], int], wav: Path, tmp: Path
) -> dict:
    stack, base = None, args.base
    frames, words_end = speech
    if base is None:
        base, stack = await start_stack(
            args.web,
            args.media,
            args.max_calls,
            tmp / f"step-{n}",
            MEDIA_PATH=str(wav.parent),
            SMART_TURN_WINDOW=args.turn_window,
        )
    load = os.getloadavg()[0]
    ctx = mp.get_context("spawn")
    ready, start, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    gens: list[Any] = []
    sampling = None
    try:
        if stack is not None:
            roots = [p.pid for p in (stack.web, stack.worker, stack.redis and stack.redis.proc) if p]
            await settle(roots)
        else:
            roots = discover(args.redis, args.prefix) if args.redis else []
        url = base.replace("http", "ws", 1) + "/call"
        spec = dict(
            url=url, wav=str(wav), seconds=args.seconds, rate=args.rate, recorder=args.recorder, eou=args.eou
        )
        k = max(1, min(args.procs, n))
        for j in range(k):
            gen_spec = spec | {"indices": list(range(j, n, k))}
            gens.append(
                ctx.Process(target=generate, args=(gen_spec, frames, words_end, ready, start, results))
            )
            gens[-1].start()
        for _ in gens:
            await asyncio.to_thread(ready.get, True, 120)
        sampler = Sampler(roots, [g.pid for g in gens if g.pid], args.max_rss * 2**30)
        sampling = asyncio.create_task(sampler.run())
        t0 = time.monotonic() + 0.5
        for _ in gens:
            start.put(t0)
        profiling = None
        ramp = (n - 1) / args.rate
        secs = int(min(10.0, args.seconds - ramp - 2))
        if args.profile and secs >= 1:  # 10 s of the steady window: after the ramp, before a call ends
            await asyncio.sleep(max(0.0, t0 + ramp + 1 - time.monotonic()))
            roots_fe = set(roots)  # the gunicorn arbiter is a root; its workers serve the calls
            fe = [pid for pid in sampler.pids("frontend") if pid not in roots_fe]
            targets = [
                (r, pids[0]) for r, pids in (("frontend", fe), ("media", sampler.pids("media"))) if pids
            ]
            out = Path(args.profile)
            profiling = asyncio.gather(
                *(spy(pid, out / f"plane-{n}-{r}", secs, args.format) for r, pid in targets)
            )
        outs: list[dict] = []
        deadline = t0 + n / args.rate + ANSWER_WAIT + args.seconds + END_WAIT + 30
        while len(outs) < len(gens) and time.monotonic() < deadline:
            if sampler.over_rss and stack is not None and stack.alive():
                # A server whose memory runs away would take the shared machine down with it: stop it.
                print(f"  stack RSS over {args.max_rss:g} GiB: stopping it", flush=True)
                await asyncio.to_thread(stack.stop)
            with contextlib.suppress(queue.Empty):
                outs.append(await asyncio.to_thread(results.get, True, 0.5))
        if len(outs) < len(gens) or any("error" in o for o in outs):
            raise RuntimeError(f"load generator failed or did not finish: {[o.get('error') for o in outs]}")
        if profiling is not None:
            await profiling
    finally:
        if sampling is not None:
            sampling.cancel()
        for g in gens:
            g.join(10)
            if g.is_alive():
                g.kill()
        if stack is not None:
            stack.stop()
        else:
            await asyncio.sleep(3)  # a running stack: let this step's calls end before the next
    return summarize(n, outs, sampler, args, load) | {"stopped_over_rss": sampler.over_rss}


def summarize(n: int, outs: list[dict], sampler: Sampler, args: argparse.Namespace, load: float) -> dict:
    calls = [c for o in outs for c in o["calls"]]
    answered = [c for c in calls if c["t_answer"]]
    early = Counter(c["reason"] for c in answered if c["reason"] and not c["hung_up"] and not c["failure"])
    gone = [c for c in calls if c["failure"] or not (c["t_answer"] or c["refused"])]
    failed = Counter(c["failure"] or f"closed ({c['reason'] or 'no reason'})" for c in gone)
    expected = int(args.seconds * 50)
    on_time = sum(min(c["on_time"], expected) for c in answered)
    received = sum(c["received"] for c in answered)
    setups = [c["setup_ms"] for c in answered]
    rtts = [r for c in calls for r in c["rtts"]]
    judged = [ms for c in calls for ms, verdict in c["eou"] if verdict]
    # Steady window: every call that will stream is streaming, and none has finished yet. When calls were
    # answered so late that less than 2 s of it is left (an overload), it starts at the end of the ramp.
    ramp_end = max(o["ramp_end"] for o in outs)
    a = max([ramp_end] + [c["t_answer"] for c in answered])
    b = min((c["t_play"] + args.seconds for c in answered), default=a)
    a = a if b - a >= 2 else ramp_end
    usage = sampler.window(a, b)
    server = sum(usage[r][0] for r in ROLES)
    sends = sum(o["sends"] for o in outs)
    return {
        "calls": n,
        "answered": len(answered),
        "refused": sum(c["refused"] for c in calls),
        "refused_why": dict(Counter(c["reason"] for c in calls if c["refused"])),
        "failed": dict(failed),
        "early": dict(early),
        "on_time_pct": on_time / (len(answered) * expected) * 100 if answered else float("nan"),
        "frames_expected": len(answered) * expected,
        "frames_lost": sum(max(0, expected - c["received"]) for c in answered),
        "frames_late": received - on_time,
        "uplink_skipped": sum(c["skipped"] for c in calls),
        "errors": dict(Counter(e for c in answered for e in c["errors"])),
        "setup_p50": pct(setups, 50),
        "setup_p99": pct(setups, 99),
        "rtt_p50": pct(rtts, 50),
        "rtt_p99": pct(rtts, 99),
        "rtt_n": len(rtts),
        "eou_judged": len(judged),
        "eou_timer": sum(1 for c in calls for _, verdict in c["eou"] if not verdict),
        "eou_p50": pct(judged, 50),
        "eou_p99": pct(judged, 99),
        "history_unanswered": sum(c["unanswered"] for c in calls),
        "window_s": b - a,
        "window_from": "ramp end" if a == ramp_end else "last answer",
        "cpu": {r: usage[r][0] for r in ROLES},
        "cpu_by_process": sampler.processes(a, b),
        "rss_mib": {r: usage[r][1] for r in ROLES},
        "ms_per_call_s": server / 100 / len(answered) * 1000 if answered else float("nan"),
        "generator_cpu": usage["generator"][0],
        "generator_procs": len(outs),
        "generator_late_pct": sum(o["late_sends"] for o in outs) / max(1, sends) * 100,
        "machine_cpu": usage["machine"][0],
        "others_cpu": usage["machine"][0] - server - usage["generator"][0],
        "load_before": load,
    }


HEADER = (
    "| calls | answered | refused | hung up early | on time % | lost / late | setup p50/p99 ms "
    "| history p50/p99 ms | CPU % fe / media / redis / other | ms per call-s "
    "| RSS MiB fe / media / redis / other | generator CPU % (late sends %) | machine CPU % (others) |"
)


def row(st: dict) -> str:
    early = sum(st["early"].values())
    reasons = ", ".join(f"{r} {k}" for r, k in st["early"].items())
    cpu = " / ".join(f"{st['cpu'][r]:.0f}" for r in ROLES)
    rss = " / ".join(f"{st['rss_mib'][r]:.0f}" for r in ROLES)
    return (
        f"| {st['calls']} | {st['answered']} | {st['refused']} | {early}{f' ({reasons})' if early else ''} "
        f"| {st['on_time_pct']:.2f} | {st['frames_lost']} / {st['frames_late']} "
        f"| {st['setup_p50']:.1f} / {st['setup_p99']:.1f} | {st['rtt_p50']:.1f} / {st['rtt_p99']:.1f} "
        f"| {cpu} | {st['ms_per_call_s']:.2f} | {rss} "
        f"| {st['generator_cpu']:.0f} ({st['generator_late_pct']:.1f}) "
        f"| {st['machine_cpu']:.0f} ({st['others_cpu']:.0f}) |"
    )


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pbx-bench-plane-"))
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    try:
        wav = tmp / "play.wav"
        make_wav(wav, args.seconds)
        speech = caller_speech()
        print(
            f"{psutil.cpu_count()} cores shared by stack and load generator; "
            f"{args.seconds:g} s per call, {args.rate:g} calls/s, recorder {args.recorder}, "
            f"{args.procs} generator process(es)",
            flush=True,
        )
        results = []
        for n in [int(x) for x in args.steps.split(",")]:
            try:
                st = await run_step(n, args, speech, wav, tmp)
            except (RuntimeError, queue.Empty) as exc:
                print(f"step {n} failed, no more steps: {exc!r}", flush=True)
                break
            results.append(st)
            if len(results) == 1:
                print(HEADER)
            print(row(st))
            keys = (
                "refused_why",
                "failed",
                "errors",
                "uplink_skipped",
                "history_unanswered",
                "stopped_over_rss",
            )
            more = ", ".join(f"{k} {st[k]}" for k in keys if st[k])
            print(
                f"  window {st['window_s']:.1f} s from {st['window_from']}; load {st['load_before']:.2f}",
                more,
            )
            if args.eou:
                print(
                    f"  eou after the words ({args.eou}): {st['eou_judged']} model verdicts, p50 "
                    f"{st['eou_p50']:.0f} / p99 {st['eou_p99']:.0f} ms; {st['eou_timer']} by the timer"
                )
            procs = st["cpu_by_process"]
            print(
                "  CPU % by process:", "; ".join(f"{r} {sorted(v, reverse=True)}" for r, v in procs.items())
            )
            if args.profile:
                for r in ("frontend", "media"):
                    if (p := Path(args.profile) / f"plane-{n}-{r}.txt").exists():
                        print_top(p)
        print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n\n{HEADER}")
        print("|" + "---|" * (HEADER.count("|") - 1))
        for st in results:
            print(row(st))
        if args.json:
            with open(args.json, "w") as f:  # noqa: ASYNC230 (once, after the run)
                json.dump(results, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="50,100,200,300,400", help="calls per step, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per call")
    parser.add_argument("--rate", type=float, default=50.0, help="new calls per second")
    parser.add_argument("--recorder", action="store_true", help='invite with "recorder": {}')
    parser.add_argument("--procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--max-calls", type=int, default=1000, help="MAX_CALLS of the stack started")
    parser.add_argument(
        "--max-rss", type=float, default=4.0, help="GiB of stack RSS at which a step is stopped"
    )
    parser.add_argument(
        "--web",
        type=int,
        default=default_web_concurrency(os.cpu_count() or 1),
        help="frontend processes when starting a stack (default: the server's, one per two cores)",
    )
    parser.add_argument("--media", type=int, default=2, help="media processes when starting a stack")
    parser.add_argument("--base", help="a running stack, e.g. http://127.0.0.1:8080 (default: one per step)")
    parser.add_argument("--redis", help="with --base: its REDIS_URL, to find its processes for CPU figures")
    parser.add_argument("--prefix", default="pbx:", help="with --base: its REDIS_PREFIX")
    parser.add_argument("--json", help="write every step's figures to this file")
    parser.add_argument("--eou", help="each call's option.eou.type (e.g. smart_turn)")
    parser.add_argument(
        "--turn-window", choices=["turn", "whole", "auto"], default="turn", help="SMART_TURN_WINDOW"
    )
    parser.add_argument("--profile", help="a directory: py-spy one frontend and one media process per step")
    parser.add_argument("--format", default="flamegraph", choices=["flamegraph", "speedscope"])
    parser.add_argument(
        "--top", nargs="+", type=Path, help="only print the top functions of raw py-spy files"
    )
    args = parser.parse_args()
    if args.top:
        for path in args.top:
            print_top(path)
        return
    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
