"""Client CPU of the bus's two stream commands: redis-py against the lean link (common/streamlink.py).

    .venv/bin/python -m bench.streamlink

Starts an embedded Redis on a free port, then times (process CPU, not wall time) N pipelines of two 16 KB
XADDs and N XREADs through each. Prints µs of client CPU per operation. Not a test: it only reports.
"""

from __future__ import annotations

import argparse
import time

import redis.asyncio as aioredis
import uvloop

from common.embedded import EmbeddedRedis
from common.streamlink import ClientStreams, StreamIO, stream_io


async def measure(link: StreamIO, n: int, size: int) -> tuple[float, float]:
    payload = b"x" * size
    t = time.process_time()
    for _ in range(n):
        await link.xadd_many([("s1", b"m", payload), ("s2", b"m", payload)], 2000)
    xadd = (time.process_time() - t) / n * 1e6
    t = time.process_time()
    for _ in range(n):
        await link.xread("s1", b"0-0", 1, 0)
    return xadd, (time.process_time() - t) / n * 1e6


async def main_async(args: argparse.Namespace) -> None:
    server = EmbeddedRedis().start()
    client = aioredis.Redis.from_url(server.url)
    try:
        for name, link in (("redis-py", ClientStreams(client)), ("lean link", stream_io(client))):
            await measure(link, 200, args.size)  # warm up
            xadd, xread = await measure(link, args.n, args.size)
            print(f"{name:10} pipeline of 2 XADD ({args.size} B) {xadd:6.1f} µs   XREAD {xread:6.1f} µs")
            await link.close()
    finally:
        await client.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--size", type=int, default=16000)
    uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
