"""The host tests' cluster: two hosts in network namespaces (tests/hosts/cluster.py), each with one frontend
and one media process taking at most MAX_CALLS calls, so that a test fills a host with a few calls.

One cluster serves every test of the run (`hosts`, session scope): starting it costs ~5 s on 2 cores.
`cluster` hands it to a test once the calls of earlier tests are gone. Tests that stop or kill a host's
processes start them again before they return (`ClusterHost.restart`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hosts.cluster import Cluster, running_cluster

MAX_CALLS = 4


@pytest.fixture
def cluster(hosts: Cluster) -> Cluster:
    """The cluster, with nothing left of earlier tests' calls."""
    hosts.settle()
    return hosts


@pytest.fixture(scope="session")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("hosts")
    settings = dict(MAX_CALLS=str(MAX_CALLS), PACK_CALLS="2", SIP_ACCEPT_TIMEOUT="5", PBX_CLAIM_TIMEOUT="5")
    with running_cluster(root, hosts=2, media_per_host=1, settings=settings) as cluster:
        yield cluster


def hosts_root(cluster: Cluster) -> Path:
    """A directory every host's `play` may read (MEDIA_PATH): where tests write the audio they play."""
    return Path(cluster.a.env["MEDIA_PATH"])
