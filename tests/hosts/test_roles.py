"""Hosts that run only one process type, and a worker host left with the default MEDIA_LINK_HOST: a web-only
host's calls go to another host's media processes, and when that host announces its links on loopback the
calls' messages go through Redis instead (docs/operations.md, "Several hosts")."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tests.audio_util import peak_freq, rms, tone
from tests.e2e.client import CallClient
from tests.e2e.test_metrics import Figures, scrape, until
from tests.e2e.test_playback import pcm, write_wav
from tests.hosts.cluster import Cluster, running_cluster
from tests.hosts.conftest import hosts_root
from tests.hosts.test_calls import new_id, wait_owner

pytestmark = [pytest.mark.e2e, pytest.mark.alone]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Host A runs `web` and `worker`, links on 127.0.0.1 (MEDIA_LINK_HOST's default); host B only `web`."""
    root = tmp_path_factory.mktemp("roles")
    roles = [{"web", "worker"}, {"web"}]
    with running_cluster(root, roles=roles, overrides=[{"MEDIA_LINK_HOST": "127.0.0.1"}]) as cluster:
        yield cluster


async def played(cluster: Cluster, ws: str, freq: int) -> CallClient:
    wav = write_wav(hosts_root(cluster) / f"tone-{freq}.wav", tone(freq, 1.0))
    c = await CallClient.open(ws, call_id=new_id())
    await c.invite(codec="pcm")
    await c.send({"command": "play", "url": str(wav)})
    await c.event("trackEnd", trackId="server-side-track", timeout=5)
    return c


async def test_a_web_only_hosts_calls_go_to_a_worker_host_through_redis_when_its_link_is_loopback(
    split: Cluster,
) -> None:
    a, b = split.a, split.b
    (media,) = split.media_of(a)
    b_web = (await scrape(b.base)).proc
    a_web = (await scrape(a.base)).proc
    calls = [await played(split, b.ws, 700), await played(split, a.ws, 900)]
    try:
        assert [await wait_owner(split, c.call_id) for c in calls] == [media, media]
        for c, freq in zip(calls, (700, 900), strict=True):
            heard = pcm(c.frames)
            loud = heard[np.abs(heard) > 3000]
            assert len(loud) > 8000 and abs(peak_freq(heard) - freq) < 15 and rms(heard) > 1000
    finally:
        for c in calls:
            await c.close()

    def batches(figures: Figures, proc: str, path: str) -> float:
        return figures.by_proc("pbx_bus_batches_total", path=path).get(proc, 0.0)

    figures = await until(a.base, lambda f: batches(f, b_web, "redis") > 0 and batches(f, a_web, "link") > 0)
    assert batches(figures, b_web, "link") == 0, "B's frontend cannot reach A's loopback: no link"
    assert batches(figures, b_web, "redis") > 0, "B's call went through Redis"
    assert batches(figures, a_web, "link") > 0, "A's own frontend links to it on loopback"
