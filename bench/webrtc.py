"""WebRTC load: how many calls one media process carries at real time, per codec.

    .venv/bin/python -m bench.webrtc --codec pcmu --calls 10,20,40
    .venv/bin/python -m bench.webrtc --codec opus --calls 10,20,40

This process is the load: aiortc peers on loopback, each sending a tone and receiving a file the server
plays. For each step: call setup time (`invite` sent → `answer`), the audio each peer received in a 10 s
window against 10 s of real time, and the media process's CPU (total and per call). Not a test: it only
reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
import wave
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import uvloop

from bench.stackutil import pct, start_stack
from tests.e2e.rtc_client import RtcCaller


class Call:
    def __init__(self, base: str, session: aiohttp.ClientSession, codec: str) -> None:
        self.base, self.session, self.codec = base, session, codec
        self.peer = RtcCaller(freq=440, seconds=3600)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.setup_ms = 0.0

    async def open(self, music: Path) -> None:
        self.ws = await self.session.ws_connect(
            f"{self.base}/call/webrtc", params={"id": f"w.{uuid.uuid4()}"}
        )
        offer = await self.peer.offer(codec=self.codec)
        sent = time.monotonic()
        await self.ws.send_str(json.dumps({"command": "invite", "option": {"offer": offer}}))
        async for msg in self.ws:
            ev = json.loads(msg.data)
            if ev.get("event") == "answer":
                self.setup_ms = (time.monotonic() - sent) * 1000
                await self.peer.accept(ev["sdp"])
                break
            if ev.get("event") in ("error", "hangup"):
                raise RuntimeError(ev)
        await self.ws.send_str(json.dumps({"command": "play", "url": str(music)}))
        asyncio.create_task(self._drain())  # noqa: RUF006 - ends with the socket

    async def _drain(self) -> None:
        assert self.ws is not None
        async for _msg in self.ws:
            pass

    def received_s(self, since: float, until: float) -> float:
        return sum(len(a) for t, a in self.peer.heard if since <= t < until) / 16000

    async def close(self) -> None:
        await self.peer.close()
        if self.ws is not None:
            await self.ws.close()


def media_process() -> psutil.Process | None:
    """This run's media process (a descendant of this process, not any other stack's)."""
    for p in psutil.Process().children(recursive=True):
        if "worker.child" in p.cmdline():
            return p
    return None


async def step(base: str, n: int, codec: str, music: Path, window: float, profile: str) -> None:
    async with aiohttp.ClientSession() as session:
        calls = [Call(base, session, codec) for _ in range(n)]
        sem = asyncio.Semaphore(5)

        refusals = 0

        async def open_one(i: int) -> None:
            # A setup burst can take a media process past its load limits for a moment: a call refused with
            # no_capacity is asked for again a second later (counted), as a dialler would.
            nonlocal refusals
            async with sem:
                for _ in range(30):
                    try:
                        await calls[i].open(music)
                        return
                    except RuntimeError as exc:
                        if "no_capacity" not in str(exc) and "503" not in str(exc):
                            raise
                        refusals += 1
                        await calls[i].close()
                        calls[i] = Call(base, session, codec)
                        await asyncio.sleep(1.0)
                raise RuntimeError("refused 30 times")

        await asyncio.gather(*(open_one(i) for i in range(n)))
        await asyncio.sleep(3.0)
        proc = media_process()
        if proc is not None:
            proc.cpu_percent()
        start = time.monotonic()
        spy = None
        if profile and proc is not None:
            spy = await asyncio.create_subprocess_exec(
                "py-spy",
                "record",
                "-p",
                str(proc.pid),
                "-d",
                str(int(window)),
                "-r",
                "100",
                "-f",
                "raw",
                "-o",
                f"{profile}.{codec}.{n}.txt",
                "--nonblocking",
                "--threads",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        await asyncio.sleep(window)
        if spy is not None:
            await spy.wait()
        end = time.monotonic()
        cpu = proc.cpu_percent() if proc is not None else float("nan")
        got = [c.received_s(start, end) / (end - start) for c in calls]
        setup = [c.setup_ms for c in calls]
        await asyncio.gather(*(c.close() for c in calls))
    print(
        f"{codec} calls={n:3d}  setup p50={pct(setup, 50):6.1f} p99={pct(setup, 99):6.1f} ms  "
        f"real-time audio min={min(got):.3f} p50={pct(got, 50):.3f}  "
        f"media CPU {cpu:5.1f}% ({cpu / n:4.2f}% a call)  refused and retried {refusals}"
    )


async def run(codec: str, steps: list[int], window: float, profile: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        music = Path(tmp) / "music.wav"
        t = np.arange(16000 * 60) / 16000
        with wave.open(str(music), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((np.sin(2 * np.pi * 600 * t) * 8000).astype("<i2").tobytes())
        base, stack = await start_stack(
            web=1, media=1, max_calls=max(steps) + 10, root=Path(tmp), RTC_ADDRESSES="127.0.0.1"
        )
        try:
            for n in steps:
                await step(base, n, codec, music, window, profile)
                await asyncio.sleep(2.0)
        finally:
            stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", default="pcmu", choices=["opus", "g722", "pcma", "pcmu"])
    ap.add_argument("--calls", default="10,20,40")
    ap.add_argument("--window", type=float, default=10.0, help="seconds of audio measured per step")
    ap.add_argument("--profile", default="", help="write a py-spy profile of the media process here")
    args = ap.parse_args()
    uvloop.run(run(args.codec, [int(x) for x in args.calls.split(",")], args.window, args.profile))


if __name__ == "__main__":
    main()
