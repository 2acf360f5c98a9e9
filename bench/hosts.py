"""Dispatch across hosts: where new calls land, and what the preference for the frontend's host costs.

Starts two hosts in network namespaces (tests/hosts/cluster.py: needs root and iproute2), each running one
frontend and one media process (MAX_CALLS 20), on one Redis, and for each DISPATCH_LOCAL_MS asked for (40,
the default, then 0: no preference) runs:

- `mixed`: `--calls` WebSocket calls placed on A's or B's frontend (at random, seeded), `--burst` at a time,
  all kept up until the end: how many landed on a media process of their frontend's host;
- `spill`: `--calls` calls placed on A's frontend only, `--burst` at a time: A's media process takes
  MAX_CALLS, the rest go to B.

For each, the split (same host / other host) and the setup time (socket opened until the `answer` event)
p50 / p95 / max of each kind, and the requests handed back to the stream (`pbx_dispatch_left_total`).

    .venv/bin/python -m bench.hosts --calls 30 --burst 1 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from tests.e2e.client import CallClient
from tests.hosts.cluster import Cluster, ClusterHost, running_cluster

MAX_CALLS = 20


async def one_call(cluster: Cluster, host: ClusterHost) -> tuple[CallClient | None, str, float]:
    """A call on `host`'s frontend: (its client, the host of its media process, seconds to `answer`)."""
    began = time.monotonic()
    c = await CallClient.open(host.ws, call_id=f"bench.{uuid.uuid4()}")
    try:
        await c.invite(codec="pcmu")
    except AssertionError:
        await c.close()
        return None, "refused", time.monotonic() - began
    took = time.monotonic() - began
    owner = cluster.owner(c.call_id)
    where = next((h.name for h in cluster.hosts if owner in cluster.media_of(h)), "?")
    return c, where, took


def left_total(cluster: Cluster) -> float:
    with urllib.request.urlopen(f"{cluster.a.base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("pbx_dispatch_left_total")
    )


def figures(times: list[float]) -> str:
    if not times:
        return "-"
    ms = sorted(t * 1000 for t in times)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"p50 {statistics.median(ms):.1f} p95 {p95:.1f} max {ms[-1]:.1f} ms"


async def phase(cluster: Cluster, name: str, frontends: list[ClusterHost], calls: int, burst: int) -> None:
    cluster.settle()
    pick = random.Random(calls)
    left_before = left_total(cluster)
    clients: list[CallClient] = []
    same: list[float] = []
    other: list[float] = []
    refused = 0
    try:
        for start in range(0, calls, burst):
            hosts = [pick.choice(frontends) for _ in range(start, min(calls, start + burst))]
            for host, (c, where, took) in zip(
                hosts, await asyncio.gather(*(one_call(cluster, h) for h in hosts)), strict=True
            ):
                if c is None:
                    refused += 1
                    continue
                clients.append(c)
                (same if where == host.name else other).append(took)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)  # the metrics snapshots are published about once a second
        left = left_total(cluster) - left_before
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    print(
        f"  {name:5}: {len(same)} on the frontend's host ({figures(same)}), {len(other)} on the other "
        f"({figures(other)}), {refused} refused; {left:.0f} hand-backs",
        flush=True,
    )


async def run(cluster: Cluster, calls: int, burst: int) -> None:
    await phase(cluster, "mixed", [cluster.a, cluster.b], calls, burst)
    await phase(cluster, "spill", [cluster.a], calls, burst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--burst", type=int, default=1, help="calls opened at once")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--local-ms", default="40,0", help="DISPATCH_LOCAL_MS values to compare")
    args = parser.parse_args()
    for local_ms in args.local_ms.split(","):
        for i in range(args.rounds):
            root = Path(tempfile.mkdtemp(prefix="bench-hosts-"))
            settings = {"MAX_CALLS": str(MAX_CALLS), "DISPATCH_LOCAL_MS": local_ms, "LOG_LEVEL": "ERROR"}
            with running_cluster(root, hosts=2, media_per_host=1, settings=settings) as cluster:
                print(
                    f"DISPATCH_LOCAL_MS={local_ms}, round {i + 1}: {args.calls} calls, {args.burst} at once"
                )
                asyncio.run(run(cluster, args.calls, args.burst))


if __name__ == "__main__":
    main()
