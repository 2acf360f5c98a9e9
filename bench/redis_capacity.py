"""What Redis itself spends on the server's traffic, for the capacity plan (docs/scaling.md): its CPU per
call set-up (the frontend's registration and dispatch request, a media process's read, claim and
acknowledgement, the hang-up's removal) and per batch of audio frames through an inbox stream (one `XADD`
of a msgpack batch, read back by `XREAD`), on one server and on a Redis Cluster (3 masters + replicas).

    .venv/bin/python -m bench.redis_capacity
    .venv/bin/python -m bench.redis_capacity --setups 4000 --batches 20000 --frames 10

Redis's CPU is read from its own `INFO cpu` (user + system, of the nodes involved) around the run, so the
Python clients' speed does not enter the figure: "per Redis core-second" is 1 s / that cost. The clients
run several coroutines at once so that Redis sees pipelined, concurrent traffic as it does under load.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import msgpack
import redis

from common.embedded import EmbeddedRedis
from common.embeddedcluster import EmbeddedCluster
from common.keys import DISPATCH_GROUP, Keys
from common.redisconn import connect, connect_sync
from common.registry import Registry

CONCURRENCY = 16


def redis_cpu(nodes: list[redis.Redis]) -> float:
    total = 0.0
    for node in nodes:
        info: Any = node.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


async def setups(url: str, count: int) -> None:
    client = connect(url)
    keys = Keys("bench:")
    registry = Registry(client, keys)
    try:
        await client.xgroup_create(keys.dispatch, DISPATCH_GROUP, id="0", mkstream=True)
    except redis.ResponseError:
        pass
    ids = iter(range(count))

    async def one() -> None:
        for i in ids:
            call_id = f"b{i}"
            await registry.register_pending(call_id, "websocket", "web-1", b"\x80")
            reply: Any = await client.xreadgroup(DISPATCH_GROUP, "media-1", {keys.dispatch: ">"}, count=1)
            for entry_id, fields in reply[0][1] if reply else []:
                pipe = client.pipeline(transaction=False)
                await registry.claim_in(pipe, fields[b"call_id"].decode(), "media-1")
                pipe.xack(keys.dispatch, DISPATCH_GROUP, entry_id)
                pipe.xdel(keys.dispatch, entry_id)
                await pipe.execute()
            await registry.update(call_id, state="active", answered_at=1)
            await registry.remove(call_id)

    await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
    await client.aclose()


async def audio(url: str, batches: int, frames: int) -> None:
    client = connect(url)
    keys = Keys("bench:")
    batch = msgpack.packb([{"c": f"call-{i}", "k": "pcm", "b": b"\0" * 640} for i in range(frames)])
    streams = [keys.inbox(f"media-{i}") for i in range(CONCURRENCY)]

    async def one(stream: str) -> None:
        last = b"0-0"
        for _ in range(batches // CONCURRENCY):
            pipe = client.pipeline(transaction=False)
            pipe.xadd(stream, {"m": batch}, maxlen=20_000, approximate=True)
            await pipe.execute()
            reply: Any = await client.xread({stream: last}, count=500)
            if reply:
                last = reply[0][1][-1][0]

    await asyncio.gather(*(one(s) for s in streams))
    await client.aclose()


def run(
    label: str, url: str, nodes: list[redis.Redis], args: argparse.Namespace, hot: redis.Redis | None = None
) -> None:
    before = redis_cpu(nodes)
    hot_before = redis_cpu([hot]) if hot is not None else 0.0
    wall = time.perf_counter()
    asyncio.run(setups(url, args.setups))
    spent, took = redis_cpu(nodes) - before, time.perf_counter() - wall
    per = spent / args.setups * 1e6
    print(
        f"{label}: call set-ups: {per:.0f} µs of Redis CPU each, {1e6 / per:,.0f} per Redis core-second "
        f"({args.setups / took:,.0f}/s reached by this client on its one core)"
    )
    if hot is not None:
        hot_per = (redis_cpu([hot]) - hot_before) / args.setups * 1e6
        print(
            f"  of which the master of the dispatch stream and call index: {hot_per:.0f} µs, so one such "
            f"master carries {1e6 / hot_per:,.0f} set-ups per core-second"
        )
    before = redis_cpu(nodes)
    wall = time.perf_counter()
    asyncio.run(audio(url, args.batches, args.frames))
    spent, took = redis_cpu(nodes) - before, time.perf_counter() - wall
    per = spent / args.batches * 1e6
    print(
        f"{label}: audio batches of {args.frames} frames (XADD + XREAD): {per:.0f} µs of Redis CPU each, "
        f"{1e6 / per * args.frames:,.0f} frames per Redis core-second "
        f"({args.batches / took:,.0f} batches/s reached by this client)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=16000)
    parser.add_argument("--frames", type=int, default=10, help="frames per audio batch")
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        node = redis.Redis.from_url(server.url)
        run("one server", server.url, [node], args)
        node.close()
    with EmbeddedCluster() as cluster:
        ports = cluster.master_ports()
        nodes = [redis.Redis(port=p) for p in ports]
        probe = connect_sync(cluster.url)
        hot = probe.get_node_from_key(Keys("bench:").dispatch).port  # type: ignore[attr-defined]
        probe.close()
        run("cluster (3 masters)", cluster.url, nodes, args, nodes[ports.index(hot)])
        for n in nodes:
            n.close()


if __name__ == "__main__":
    main()
