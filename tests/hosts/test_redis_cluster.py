"""Two hosts sharing one Redis Cluster (3 masters, 3 replicas on the bridge): calls on both, then the master
holding the dispatch stream is killed: within 15 s new calls succeed on every host and each host lists
every live call again; the calls that were up go on with audio (or end with an error and a hangup)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.embeddedcluster import EmbeddedCluster
from common.keys import Keys
from tests.audio_util import tone
from tests.e2e.client import CallClient
from tests.e2e.redis_failover import RECOVERY, answered_within, going_on, listed, playing
from tests.e2e.test_playback import write_wav
from tests.hosts.cluster import Cluster, running_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.alone]


@pytest.fixture(scope="module")
def on_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("hosts-cluster")
    settings = {"MAX_CALLS": "8", "PBX_CLAIM_TIMEOUT": "5"}
    with running_cluster(root, hosts=2, media_per_host=1, settings=settings, redis_cluster=True) as cluster:
        yield cluster


async def test_a_master_killed_under_calls_on_two_hosts(on_redis_cluster: Cluster) -> None:
    cluster = on_redis_cluster
    server = cluster.redis_server
    assert isinstance(server, EmbeddedCluster)
    wav = write_wav(Path(cluster.a.env["MEDIA_PATH"]) / f"{uuid.uuid4().hex}.wav", tone(440, 30.0))
    calls = [
        await CallClient.open(h.ws, call_id=f"h.{uuid.uuid4()}") for h in cluster.hosts for _ in range(2)
    ]
    try:
        await playing(calls, wav)
        for h in cluster.hosts:
            assert await listed(h.base) == {c.call_id for c in calls}
        victim: Any = cluster.redis.get_node_from_key(Keys().dispatch)  # type: ignore[attr-defined]
        killed_at = time.monotonic()
        server.kill(victim.port)

        took = [await answered_within(h.ws, killed_at, wav, calls) for h in cluster.hosts]
        print(f"new calls answered {', '.join(f'{t:.1f}' for t in took)} s after the kill (hosts A, B)")
        assert max(took) < RECOVERY, "new calls within 15 s on every host"

        await asyncio.sleep(max(0.0, killed_at + RECOVERY - time.monotonic()))
        live = going_on(calls, killed_at)
        for h in cluster.hosts:
            assert await listed(h.base) == live, f"{h.name} lists every live call again"
    finally:
        for c in calls:
            await c.close()
