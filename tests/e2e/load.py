"""Background call load for the fault and drain tests: many WebSocket calls, each receiving a played file.

Every call records when each audio frame arrived and every event, so a test can ask which calls were hung
up (and how fast) and how long the longest silence of the others was.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from common.keys import Keys
from common.redisconn import connect_sync
from tests.audio_util import tone
from tests.e2e.test_playback import write_wav


@dataclass
class LoadCall:
    call_id: str
    ws: aiohttp.ClientWebSocketResponse
    frontend: str
    arrivals: list[float] = field(default_factory=list)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    closed_at: float | None = None
    owner: str = ""

    async def read(self) -> None:
        try:
            async for msg in self.ws:
                now = time.monotonic()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.arrivals.append(now)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    self.events.append((now, json.loads(msg.data)))
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.closed_at = time.monotonic()

    def first(self, name: str, **match: Any) -> tuple[float, dict[str, Any]] | None:
        for t, ev in self.events:
            if ev.get("event") == name and all(ev.get(k) == v for k, v in match.items()):
                return t, ev
        return None

    def names(self) -> list[str]:
        return [str(ev.get("event")) for _, ev in self.events]

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time (s) without an audio frame between `start` and `end`, the edges included."""
        inside = [t for t in self.arrivals if start <= t <= end]
        points = [start, *inside, end]
        return max(b - a for a, b in zip(points, points[1:], strict=False))


def gap_report(calls: list[LoadCall], start: float, end: float) -> tuple[float, float]:
    """Median and longest (ms), over `calls`, of each call's longest silence between `start` and `end`."""
    gaps = sorted(c.longest_gap(start, end) * 1000 for c in calls)
    return gaps[len(gaps) // 2], gaps[-1]


class CallLoad:
    """N concurrent calls on one stack, each playing a long tone back to its client."""

    def __init__(self, ws_base: str, redis_url: str, root: Path, prefix: str = "pbx:") -> None:
        self.ws_base = ws_base
        self.redis = connect_sync(redis_url)
        self.prefix = prefix
        self.wav = root / "load-tone.wav"
        write_wav(self.wav, tone(440, 120.0))
        self.calls: list[LoadCall] = []
        self._session: aiohttp.ClientSession | None = None
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, count: int, tag: str, path: str = "/call", **option: Any) -> list[LoadCall]:
        """Open `count` calls (at most 20 handshakes at a time), invite, play a 2-minute tone; returns them
        once every one has received audio."""
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        gate = asyncio.Semaphore(20)

        async def one(i: int) -> LoadCall:
            async with gate:
                assert self._session is not None
                ws = await self._session.ws_connect(
                    f"{self.ws_base}{path}", params={"id": f"{tag}-{i}", "dump": "false"}, max_msg_size=0
                )
                call = LoadCall(f"{tag}-{i}", ws, ws._response.headers.get("X-Pbx-Proc", ""))
                self._readers.append(asyncio.create_task(call.read()))
                await ws.send_str(json.dumps({"command": "invite", "option": {"codec": "pcm", **option}}))
                await ws.send_str(json.dumps({"command": "play", "url": str(self.wav)}))
                return call

        opened = list(await asyncio.gather(*(one(i) for i in range(count))))
        self.calls += opened
        deadline = time.monotonic() + 30
        while any(not c.arrivals for c in opened):
            if time.monotonic() > deadline:
                silent = [c.call_id for c in opened if not c.arrivals]
                raise AssertionError(f"{len(silent)} calls never got audio: {silent[:5]}")
            await asyncio.sleep(0.1)
        for c in opened:
            owner: Any = self.redis.hget(f"{self.prefix}call:{c.call_id}", "owner")
            c.owner = (owner or b"").decode()
        return opened

    def listed(self) -> set[str]:
        ids: Any = self.redis.zrange(f"{self.prefix}calls", 0, -1)
        return {raw.decode() for raw in ids}

    async def close(self) -> None:
        for c in self.calls:
            if c.closed_at is None:
                await c.ws.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self.redis.close()


def media_pids(redis_url: str, prefix: str = "pbx:") -> dict[str, int]:
    """proc id → pid of every live media process, from their heartbeats."""
    r = connect_sync(redis_url)
    try:
        out = {}
        for key in r.scan_iter(match=Keys(prefix).proc_pattern("media-*")):
            beat = r.get(key)
            if beat:
                info = json.loads(beat)
                out[str(info["proc"])] = int(info["pid"])
        return out
    finally:
        r.close()
