"""A cluster of hosts in network namespaces (tests/hosts/netns.py), each running the Procfile's `web` and
`worker` with addresses of its own, all on one Redis in the root namespace (on the bridge's address).

One cluster serves every test of the run (`cluster`, session scope): starting it costs ~10 s on 2 cores.
Tests that stop or kill a host's processes start them again before they return (`ClusterHost.restart`).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from common.embedded import EmbeddedRedis, free_port
from scripts.stack import Stack
from tests.e2e.conftest import Webhook, stack_env
from tests.hosts.netns import Host, Network

# Media processes per host and the calls each takes: small, so a test can fill a host with a few calls.
MEDIA_PER_HOST = 1
MAX_CALLS = 4


@dataclass
class ClusterHost:
    """One host of the cluster: its namespace and address, its `web` + `worker`, and where to reach it."""

    host: Host
    env: dict[str, str]
    stack: Stack | None = None
    runs: list[Stack] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.env["HOST_NAME"]

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def base(self) -> str:
        return f"http://{self.address}:{self.env['PORT']}"

    @property
    def ws(self) -> str:
        return f"ws://{self.address}:{self.env['PORT']}"

    @property
    def sip_port(self) -> int:
        return int(self.env["SIP_PORT"])

    def start(self) -> None:
        quiet = os.environ.get("PBX_TEST_LOGS") != "1"
        self.stack = Stack(self.env, quiet=quiet, prefix=self.host.command([])).start()
        self.runs.append(self.stack)

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.stack is not None:
            self.stack.stop(sig)

    def drain(self, timeout: float = 30.0) -> None:
        """SIGTERM to the host's `web` and `worker` at once (a rolling restart takes the host out of the load
        balancer and stops both), then wait for both to exit."""
        assert self.stack is not None
        procs = [p for p in (self.stack.web, self.stack.worker) if p is not None and p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout)

    def restart(self) -> None:
        """Stop what still runs of this host (quick stop), kill what is left in its namespace, start anew."""
        self.stop()
        self.host.kill_all()
        self.start()

    def get(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(f"{self.base}{path}", timeout=timeout) as resp:
            return json.loads(resp.read())


@dataclass
class Cluster:
    net: Network
    redis_server: EmbeddedRedis
    redis: redis.Redis
    hosts: list[ClusterHost]
    webhook: Webhook

    @property
    def a(self) -> ClusterHost:
        return self.hosts[0]

    @property
    def b(self) -> ClusterHost:
        return self.hosts[1]

    def beats(self) -> list[dict[str, Any]]:
        keys = list(self.redis.scan_iter(match="pbx:proc:*", count=1000))
        return [json.loads(v) for v in self.redis.mget(keys) if v] if keys else []

    def media_of(self, host: ClusterHost) -> list[str]:
        """The proc ids of the live media processes of `host`, by their heartbeats."""
        return sorted(b["proc"] for b in self.beats() if b.get("role") == "media" and b["host"] == host.name)

    def owner(self, call_id: str) -> str:
        return (self.redis.hget(f"pbx:call:{call_id}", "owner") or b"").decode()

    def settle(self, timeout: float = 10.0) -> None:
        """Until no call is left of an earlier test (registry and heartbeats), and a little more: frontends
        admit new calls against their share of the room they last read (at most 0.25 s ago,
        frontend/limits.py), and a test that fills a host with MAX_CALLS calls needs all of it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            media = [b for b in self.beats() if b.get("role") == "media"]
            if not self.redis.zcard("pbx:calls") and all(b.get("calls") == 0 for b in media):
                time.sleep(0.5)
                return
            time.sleep(0.05)
        raise AssertionError(f"calls of earlier tests still there after {timeout}s: {self.beats()}")

    def wait_healthy(self, timeout: float = 60.0) -> dict[str, Any]:
        """Until every host's frontend answers and counts every media process (warm) and every frontend."""
        media, web = MEDIA_PER_HOST * len(self.hosts), len(self.hosts)
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                healths = [h.get("/health", timeout=2) for h in self.hosts]
                last = healths[-1]
                if all(
                    x.get("media_processes") == media
                    and x.get("media_warm") == media
                    and x.get("web_processes") == web
                    for x in healths
                ):
                    return last
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"cluster not healthy in {timeout}s: {last}")


@pytest.fixture
def cluster(hosts: Cluster) -> Cluster:
    """The cluster, with nothing left of earlier tests' calls."""
    hosts.settle()
    return hosts


@pytest.fixture(scope="session")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("hosts")
    with Network(2) as net:
        server = EmbeddedRedis(host=net.gateway).start()
        webhook = Webhook(net.gateway)
        hosts: list[ClusterHost] = []
        try:
            for h in net.hosts:
                settings = {
                    "HOST": h.address,
                    "HOST_NAME": f"host-{h.name}",
                    "PUBLIC_IP": h.address,
                    "SIP_ADDR": h.address,
                    "RTC_ADDRESSES": h.address,
                    "MEDIA_LINK_HOST": h.address,
                    "WEB_CONCURRENCY": "1",
                    "WORKER_PROCESSES": str(MEDIA_PER_HOST),
                    "MAX_CALLS": str(MAX_CALLS),
                    "PACK_CALLS": "2",
                    "SIP_WEBHOOK_URL": webhook.url,
                    "SIP_ACCEPT_TIMEOUT": "5",
                    "PBX_CLAIM_TIMEOUT": "5",
                }
                env = stack_env(root / h.name, free_port(), server.url, **settings)
                hosts.append(ClusterHost(h, env))
            info = Cluster(net, server, redis.Redis.from_url(server.url), hosts, webhook)
            for host in hosts:
                host.start()
            info.wait_healthy()
            yield info
        finally:
            for host in hosts:
                host.stop()
            webhook.server.shutdown()
            webhook.server.server_close()
            server.stop()


def hosts_root(cluster: Cluster) -> Path:
    """A directory every host's `play` may read (MEDIA_PATH): where tests write the audio they play."""
    return Path(cluster.a.env["MEDIA_PATH"])
