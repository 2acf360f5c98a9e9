"""Start a private stack for a benchmark run, and pick percentiles."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from common.embedded import free_port
from scripts.stack import Stack


async def start_stack(
    web: int, media: int, max_calls: int, root: Path, log: Path | None = None, **extra: str
) -> tuple[str, Stack]:
    """A stack of its own (embedded Redis on a free port) with `web` frontends and `media` processes; `play`
    reads local files under `root` (MEDIA_PATH; `extra` may name another)."""
    port = free_port()
    env = dict(
        os.environ,
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY=str(web),
        WORKER_PROCESSES=str(media),
        MAX_CALLS=str(max_calls),
        RECORDER_PATH=str(root / "rec"),
        MEDIA_CACHE_PATH=str(root / "cache"),
        MEDIA_PATH=str(root),
        LOG_LEVEL="WARNING",
        # A benchmark opens hundreds of calls from one address: far more than a real client.
        CALLS_PER_IP_PER_MIN="0",
        # The benchmarks' bots and media servers listen on 127.0.0.1.
        ALLOW_PRIVATE_URLS="1",
    )
    env.update(extra)
    env.pop("REDIS_URL", None)
    stack = Stack(env, quiet=True, log=log).start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            async with aiohttp.ClientSession() as s, s.get(f"{base}/health") as r:
                health = await r.json()
                # Every media process warm (its models loaded): the first calls measured are no slower.
                if health.get("media_processes") == media and health.get("media_warm", media) == media:
                    break
        except (aiohttp.ClientError, ValueError):
            pass
        await asyncio.sleep(0.2)
    return base, stack


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
