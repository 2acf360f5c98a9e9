"""SIP load with sipp as the load generator.

    .venv/bin/python -m bench.sip setup --rate 50 --calls 500     # inbound call setups per second
    .venv/bin/python -m bench.sip rtp --calls 50,100,200          # concurrent G.711 calls, RTP loss

`setup`: sipp calls the server at `--rate` calls/s (each call held `--hold` s). The server's webhook is this
process: for each INVITE it opens `/call/sip?id=<dialogId>` and sends `accept`, as an app would. Reported:
calls sipp completed and failed, and the setup time sipp measured (INVITE sent → 200 OK), p50/p99.

`rtp`: the server dials N calls to one sipp UAS that echoes RTP (`-rtp_echo`), all on one media process;
every call sends a 20 ms PCMU packet per tick and counts what comes back. Reported per step: packets sent
and received, packets lost (sequence gaps), the media process's CPU and its longest tick.
Not a test: it only reports.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import psutil
import uvloop
from aiohttp import web

from bench.stackutil import pct, start_stack
from common.embedded import free_port

_RTP_LINE = re.compile(r"rtp port \d+: sent (\d+), received (\d+), lost (-?\d+)")


def media_process() -> psutil.Process | None:
    for p in psutil.Process().children(recursive=True):
        if "worker.child" in p.cmdline():
            return p
    return None


# --- setup rate ----------------------------------------------------------------------------------------


class App:
    """The webhook and the app behind it: accepts every inbound call."""

    def __init__(self) -> None:
        self.base = ""
        self.accepted = 0
        self.failed = 0
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def hook(self, request: web.Request) -> web.Response:
        payload = await request.json()
        task = asyncio.create_task(self.answer(payload["dialogId"]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response({"ok": True})

    async def answer(self, dialog_id: str) -> None:
        assert self.session is not None
        try:
            async with self.session.ws_connect(f"{self.base}/call/sip", params={"id": dialog_id}) as ws:
                await ws.send_str(json.dumps({"command": "accept", "option": {}}))
                async for msg in ws:
                    ev = json.loads(msg.data)
                    if ev.get("event") == "answer":
                        self.accepted += 1
        except aiohttp.ClientError:
            self.failed += 1


async def setup_rate(rate: int, calls: int, hold: float, media: int) -> None:
    app = App()
    hook_port = free_port()
    server = web.Application()
    server.router.add_post("/hook", app.hook)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    with tempfile.TemporaryDirectory() as tmp:
        sip_port = free_port()
        base, stack = await start_stack(
            web=2,
            media=media,
            max_calls=2000,
            root=Path(tmp),
            SIP_ADDR="127.0.0.1",
            SIP_PORT=str(sip_port),
            SIP_WEBHOOK_URL=f"http://127.0.0.1:{hook_port}/hook",
        )
        app.base = base.replace("http", "ws")
        app.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            began = time.monotonic()
            sipp = await asyncio.create_subprocess_exec(
                "sipp", "-sn", "uac", "-i", "127.0.0.1", "-p", str(free_port()), "-r", str(rate),
                "-m", str(calls), "-l", str(int(rate * (hold + 5))), "-d", str(int(hold * 1000)),
                "-trace_rtt", "-rtt_freq", "1", "-timeout", str(int(calls / rate + hold + 60)),
                "-nostdin", f"127.0.0.1:{sip_port}",
                cwd=tmp, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            code = await sipp.wait()
            took = time.monotonic() - began
            setup = read_rtts(Path(tmp))
            print(
                f"setup rate={rate}/s calls={calls} hold={hold:.0f}s media={media}: sipp exit {code}, "
                f"answered {app.accepted}, app failures {app.failed}, "
                f"{calls / (took - hold):.1f} setups/s sustained; "
                f"setup p50={pct(setup, 50):.1f} p99={pct(setup, 99):.1f} max={max(setup or [0]):.1f} ms "
                f"({len(setup)} samples)"
            )
        finally:
            await app.session.close()
            stack.stop()
            await runner.cleanup()


# --- concurrent RTP ------------------------------------------------------------------------------------


def read_rtts(folder: Path) -> list[float]:
    """The INVITE → 200 times sipp wrote (`-trace_rtt`), in ms."""
    out: list[float] = []
    for path in folder.glob("*_rtt.csv"):
        with path.open() as f:
            out += [
                float(v) for row in csv.DictReader(f, delimiter=";") if (v := row.get("response_time_ms"))
            ]
    return out


def read_rtp_lines(log: Path, mark: int) -> list[tuple[int, ...]]:
    """(sent, received, lost) of each RTP stream that closed after offset `mark` of the stack's log."""
    with log.open() as f:
        f.seek(mark)
        return [tuple(int(x) for x in m.groups()) for m in _RTP_LINE.finditer(f.read())]


def log_size(log: Path) -> int:
    return log.stat().st_size


async def rtp_step(base: str, n: int, uas_port: int, window: float, log: Path) -> None:
    mark = log_size(log)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        setup: list[float] = []
        for _ in range(n):
            ws = await session.ws_connect(f"{base}/call/sip", params={"id": f"b.{uuid.uuid4()}", "ping": "0"})
            sockets.append(ws)
        sent_at = time.monotonic()
        for ws in sockets:
            await ws.send_str(
                json.dumps({"command": "invite", "option": {"callee": f"sip:echo@127.0.0.1:{uas_port}"}})
            )

        async def answered(ws: aiohttp.ClientWebSocketResponse) -> None:
            async for msg in ws:
                ev = json.loads(msg.data)
                if ev.get("event") == "answer":
                    setup.append((time.monotonic() - sent_at) * 1000)
                    return
                if ev.get("event") in ("reject", "hangup"):
                    raise RuntimeError(ev)

        await asyncio.wait_for(asyncio.gather(*(answered(ws) for ws in sockets)), 60)
        proc = media_process()
        if proc is not None:
            proc.cpu_percent()
        await asyncio.sleep(window)
        cpu = proc.cpu_percent() if proc is not None else float("nan")
        for ws in sockets:
            await ws.send_str(json.dumps({"command": "hangup"}))
        for ws in sockets:
            async for _msg in ws:
                pass
    await asyncio.sleep(1.0)
    rows = read_rtp_lines(log, mark)
    sent = sum(r[0] for r in rows)
    received = sum(r[1] for r in rows)
    lost = sum(max(0, r[2]) for r in rows)
    lossy = sum(1 for r in rows if r[2] > 0)
    print(
        f"rtp calls={n:3d}: answered in p50={pct(setup, 50):.0f} p99={pct(setup, 99):.0f} ms; "
        f"{len(rows)} legs, sent {sent}, echoed back {received} ({received / max(sent, 1):.4f}), "
        f"lost {lost} in {lossy} calls; media CPU {cpu:.0f}% ({cpu / n:.2f}% a call)"
    )


async def rtp(steps: list[int], window: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "stack.log"
        log.touch()
        uas_port = free_port()
        uas = await asyncio.create_subprocess_exec(
            "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-mp", str(free_port()),
            "-rtp_echo", "-nostdin", "-timeout", "3600",
            cwd=tmp, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        base, stack = await start_stack(
            web=1,
            media=1,
            max_calls=max(steps) + 10,
            root=Path(tmp),
            log=log,
            LOG_LEVEL="INFO",
            SIP_ADDR="127.0.0.1",
            SIP_PORT=str(free_port()),
        )
        base = base.replace("http", "ws")
        try:
            for n in steps:
                await rtp_step(base, n, uas_port, window, log)
                await asyncio.sleep(2.0)
        finally:
            stack.stop()
            uas.terminate()
            await uas.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--rate", type=int, default=50)
    s.add_argument("--calls", type=int, default=500)
    s.add_argument("--hold", type=float, default=2.0)
    s.add_argument("--media", type=int, default=2)
    r = sub.add_parser("rtp")
    r.add_argument("--calls", default="50,100,200")
    r.add_argument("--window", type=float, default=20.0)
    args = ap.parse_args()
    if args.mode == "setup":
        uvloop.run(setup_rate(args.rate, args.calls, args.hold, args.media))
    else:
        uvloop.run(rtp([int(x) for x in args.calls.split(",")], args.window))


if __name__ == "__main__":
    main()
