"""What one reaper pass costs (common/reaper.py): the client CPU of `reap_once` over N live calls, each
with an option like a listening, speaking call's, on the embedded Redis.

    .venv/bin/python -m bench.reaper                 # 50 and 300 calls
    .venv/bin/python -m bench.reaper --calls 50 400 --passes 100

Every frontend runs a pass every 0.5 s and every media process every 1 s: at the default layout's four
passes a second, a pass of P ms costs 4 P ms of CPU a second, 4 P / N ms per call-second at N calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import redis.asyncio as aioredis

from common import reaper
from common.bus import Outbox
from common.embedded import EmbeddedRedis
from common.keys import Keys
from common.registry import Registry

OPTION = {
    "codec": "pcm",
    "vad": {"type": "silero"},
    "asr": {"provider": "local"},
    "tts": {"provider": "local", "speaker": "x"},
    "recorder": {"recorderFile": "call.wav"},
    "extra": {"campaign": "c" * 50},
}


async def measure(calls: int, passes: int) -> None:
    with EmbeddedRedis() as server:
        redis = aioredis.from_url(server.url)
        keys = Keys("pbx:")
        registry = Registry(redis, keys)
        await redis.set(keys.proc("media-1"), "{}")
        await redis.set(keys.proc("web-1"), "{}")
        for i in range(calls):
            await registry.register_pending(f"c{i}", "websocket", "web-1")
            await registry.claim(f"c{i}", "media-1")
            await registry.update(f"c{i}", option=json.dumps(OPTION), state="active", answered_at=1)
        outbox = Outbox(redis, keys)
        for _ in range(5):
            await reaper.reap_once(registry, outbox, 10.0)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(passes):
            assert await reaper.reap_once(registry, outbox, 10.0) == 0
        per_pass = (time.process_time() - cpu) / passes * 1000
        print(
            f"{calls} calls: {per_pass:.2f} ms of client CPU per pass "
            f"(wall {(time.perf_counter() - wall) / passes * 1000:.2f} ms); at 4 passes a second "
            f"{4 * per_pass / 10:.2f} % of a core, {4 * per_pass / calls:.3f} ms per call-second"
        )
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[50, 300])
    parser.add_argument("--passes", type=int, default=50)
    args = parser.parse_args()
    for n in args.calls:
        asyncio.run(measure(n, args.passes))


if __name__ == "__main__":
    main()
