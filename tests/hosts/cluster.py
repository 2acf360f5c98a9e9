"""A cluster of hosts in network namespaces (tests/hosts/netns.py), each running the Procfile's `web` and
`worker` with addresses of its own (HOST, PUBLIC_IP, SIP_ADDR, RTC_ADDRESSES, MEDIA_LINK_HOST) and its own
HOST_NAME, all on one Redis in the root namespace, on the bridge's address; a webhook there for inbound SIP.

    with running_cluster(root, hosts=2, media_per_host=1, settings={"MAX_CALLS": "4"}) as cluster:
        cluster.a.ws, cluster.b.base, cluster.media_of(cluster.b), cluster.owner(call_id), ...
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from common.embedded import EmbeddedRedis, free_port
from common.embeddedcluster import EmbeddedCluster
from common.redisconn import connect_sync, mget_sync
from scripts.stack import Stack
from tests.e2e.conftest import Webhook, stack_env
from tests.hosts.netns import Host, Network


@dataclass
class ClusterHost:
    """One host of the cluster: its namespace and address, its `web` and `worker` (or one of them, `roles`),
    and where to reach it."""

    host: Host
    env: dict[str, str]
    roles: frozenset[str] = frozenset({"web", "worker"})
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
        stack = Stack(self.env, quiet=quiet, prefix=self.host.command([]))
        self.stack = stack.start(web="web" in self.roles, worker="worker" in self.roles)
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
    redis_server: EmbeddedRedis | EmbeddedCluster
    redis: redis.Redis
    hosts: list[ClusterHost]
    webhook: Webhook
    media_per_host: int = 1

    @property
    def a(self) -> ClusterHost:
        return self.hosts[0]

    @property
    def b(self) -> ClusterHost:
        return self.hosts[1]

    def beats(self) -> list[dict[str, Any]]:
        keys = list(self.redis.scan_iter(match="pbx:proc:*", count=1000))
        return [json.loads(v) for v in mget_sync(self.redis, keys) if v] if keys else []

    def media_of(self, host: ClusterHost) -> list[str]:
        """The proc ids of the live media processes of `host`, by their heartbeats."""
        return sorted(b["proc"] for b in self.beats() if b.get("role") == "media" and b["host"] == host.name)

    def owner(self, call_id: str) -> str:
        raw = self.redis.hget(f"pbx:call:{call_id}", "owner")
        return raw.decode() if isinstance(raw, bytes) else str(raw or "")

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
        media = self.media_per_host * sum("worker" in h.roles for h in self.hosts)
        web = sum("web" in h.roles for h in self.hosts)
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                healths = [h.get("/health", timeout=2) for h in self.hosts if "web" in h.roles]
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


@contextlib.contextmanager
def running_cluster(
    root: Path,
    hosts: int = 2,
    media_per_host: int = 1,
    roles: Sequence[Collection[str]] = (),
    overrides: Sequence[Mapping[str, str]] = (),
    settings: Mapping[str, str] | None = None,
    redis_cluster: bool = False,
) -> Iterator[Cluster]:
    """`hosts` hosts, each with one frontend and `media_per_host` media processes (warm), plus `settings`
    (the same on every host); host i runs only `roles[i]` ("web", "worker") and gets `overrides[i]` on top
    when given; with `redis_cluster`, the Redis is a Redis Cluster (3 masters, 3 replicas) on the bridge.
    Everything stopped and removed on exit."""
    with Network(hosts) as net:
        server: EmbeddedRedis | EmbeddedCluster = (
            EmbeddedCluster(host=net.gateway) if redis_cluster else EmbeddedRedis(host=net.gateway)
        )
        server.start()
        webhook = Webhook(net.gateway)
        members: list[ClusterHost] = []
        try:
            for i, h in enumerate(net.hosts):
                own = {
                    "HOST": h.address,
                    "HOST_NAME": f"host-{h.name}",
                    "PUBLIC_IP": h.address,
                    "SIP_ADDR": h.address,
                    "RTC_ADDRESSES": h.address,
                    "MEDIA_LINK_HOST": h.address,
                    "WEB_CONCURRENCY": "1",
                    "WORKER_PROCESSES": str(media_per_host),
                    "SIP_WEBHOOK_URL": webhook.url,
                }
                extra = overrides[i] if i < len(overrides) else {}
                env = stack_env(
                    root / h.name, free_port(), server.url, **{**own, **(settings or {}), **extra}
                )
                runs = frozenset(roles[i]) if i < len(roles) else frozenset({"web", "worker"})
                members.append(ClusterHost(h, env, runs))
            cluster = Cluster(net, server, connect_sync(server.url), members, webhook, media_per_host)
            for member in members:
                member.start()
            cluster.wait_healthy()
            yield cluster
        finally:
            for member in members:
                member.stop()
            webhook.server.shutdown()
            webhook.server.server_close()
            server.stop()
