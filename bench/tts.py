"""Speaking load: time to first audio of `tts` (local Piper and a cached phrase) and interrupt latency.

    .venv/bin/python -m bench.tts --calls 1 --rounds 10
    .venv/bin/python -m bench.tts --calls 100 --rounds 3
    .venv/bin/python -m bench.tts --calls 100 --rounds 3 --gap 10   # a bot that speaks every ~10 s

Every call, in rounds spread at random: a `tts` of a new sentence (local synthesis), interrupted after
~0.5 s of audio, then a `tts` of a phrase already in the cache, interrupted the same way. Prints, at the
client: time to first audio (`tts` sent → first audio frame), interrupt latency (`interrupt` sent → the
last audio frame received), and the time to the `interruption` event. Not a test: it only reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.stackutil import pct, start_stack

CACHED = "Thank you for calling. Please hold while I look that up."
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar".split()


def fresh_sentence(rng: random.Random) -> str:
    """A sentence never spoken before in this run, so it cannot come from the cache."""
    return f"Your booking code is {' '.join(rng.sample(WORDS, 4))}, and the table is ready."


class Talker:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base, self.session = base, session
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.frames: list[float] = []
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.ws = await self.session.ws_connect(f"{self.base}/call", params={"id": f"b.{uuid.uuid4()}"})
        self.reader = asyncio.create_task(self._read())
        await self.send({"command": "invite", "option": {"codec": "pcm"}})
        await self.wait_event("answer", 0)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            now = time.monotonic()
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(now)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self.events.append((now, json.loads(msg.data)))
            self.changed.set()

    async def send(self, cmd: dict[str, Any]) -> float:
        assert self.ws is not None
        t = time.monotonic()
        await self.ws.send_str(json.dumps(cmd))
        return t

    async def wait_for(self, check: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass

    async def wait_event(self, name: str, after: int, **match: Any) -> tuple[float, dict[str, Any]]:
        def find() -> tuple[float, dict[str, Any]] | None:
            for t, ev in self.events[after:]:
                if ev.get("event") == name and all(ev.get(k) == v for k, v in match.items()):
                    return t, ev
            return None

        await self.wait_for(lambda: find() is not None)
        found = find()
        assert found is not None
        return found

    async def round(self, text: str, play_id: str) -> tuple[float, float, float]:
        """(time to first audio, interrupt latency, time to the interruption event), in ms."""
        frames, events = len(self.frames), len(self.events)
        sent = await self.send({"command": "tts", "text": text, "playId": play_id})
        await self.wait_for(lambda: len(self.frames) > frames)
        first = self.frames[frames]
        await self.wait_for(lambda: len(self.frames) >= frames + 25)  # ~0.5 s heard
        cut = await self.send({"command": "interrupt"})
        t_event, _ = await self.wait_event("interruption", events, playId=play_id)
        await self.wait_event("trackEnd", events, playId=play_id)
        await asyncio.sleep(0.1)
        last = max((t for t in self.frames[frames:]), default=cut)
        return (first - sent) * 1000, max(0.0, last - cut) * 1000, (t_event - cut) * 1000

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()


async def run(calls: int, rounds: int, media: int, gap: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base, stack = await start_stack(web=2, media=media, max_calls=max(200, calls), root=Path(tmp))
        results: dict[str, list[float]] = {k: [] for k in ("local", "cached", "cut", "cut_event")}
        failures = 0
        try:
            async with aiohttp.ClientSession() as session:
                # Put the cached phrase in every media process's cache (they share the cache directory).
                warm = Talker(base, session)
                await warm.open()
                await warm.round(CACHED, "warm")
                await warm.close()
                await asyncio.sleep(2.0)  # let each process's Piper voice load and warm up
                talkers = [Talker(base, session) for _ in range(calls)]
                await asyncio.gather(*(t.open() for t in talkers))

                async def drive(i: int, t: Talker) -> None:
                    nonlocal failures
                    rng = random.Random(i)
                    await asyncio.sleep(rng.uniform(0, max(3.0, gap)) if calls > 1 else 0)
                    for r in range(rounds):
                        try:
                            ttfa, cut, cut_event = await t.round(fresh_sentence(rng), f"l{r}")
                            results["local"].append(ttfa)
                            results["cut"].append(cut)
                            results["cut_event"].append(cut_event)
                            ttfa, cut, cut_event = await t.round(CACHED, f"c{r}")
                            results["cached"].append(ttfa)
                            results["cut"].append(cut)
                            results["cut_event"].append(cut_event)
                        except TimeoutError:
                            failures += 1
                        await asyncio.sleep(rng.uniform(0.5 * gap, 1.5 * gap))

                began = time.monotonic()
                await asyncio.gather(*(drive(i, t) for i, t in enumerate(talkers)))
                took = time.monotonic() - began
                await asyncio.gather(*(t.close() for t in talkers))
        finally:
            stack.stop()
    print(f"calls={calls} rounds={rounds} media={media} gap={gap}s took={took:.1f}s timeouts={failures}")
    for key, label in (
        ("local", "TTFA local (tts sent -> first frame)"),
        ("cached", "TTFA cached phrase"),
        ("cut", "interrupt latency (sent -> last frame)"),
        ("cut_event", "interrupt -> interruption event"),
    ):
        v = results[key]
        print(
            f"  {label:42s} n={len(v):4d} p50={pct(v, 50):7.1f} ms  p99={pct(v, 99):7.1f} ms"
            f"  max={max(v):7.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--media", type=int, default=2)
    ap.add_argument("--gap", type=float, default=0.6, help="mean seconds between a call's rounds")
    args = ap.parse_args()
    uvloop.run(run(args.calls, args.rounds, args.media, args.gap))


if __name__ == "__main__":
    main()
