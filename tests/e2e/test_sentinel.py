"""The stack on a primary and replica watched by Redis Sentinel (REDIS_SENTINELS): it follows the sentinel
to the promoted replica when the primary is killed under calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from common.embedded import free_port
from common.embeddedsentinel import MASTER, EmbeddedSentinel
from scripts.stack import Stack
from tests.e2e.conftest import StackInfo, stack_env, wait_healthy
from tests.e2e.redis_failover import survive_failover

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_the_primary_killed_under_calls(tmp_path: Path) -> None:
    with EmbeddedSentinel() as sentinel:
        port = free_port()
        # REDIS_URL names no server: with REDIS_SENTINELS it only gives the database (and credentials).
        env = stack_env(
            tmp_path / "stack",
            port,
            "redis://unused:6379/0",
            WEB_CONCURRENCY="2",
            WORKER_PROCESSES="2",
            REDIS_SENTINELS=sentinel.sentinels,
            REDIS_SENTINEL_MASTER=MASTER,
        )
        primary = sentinel.primary()
        stack = Stack(env, quiet=True, log=tmp_path / "stack.log").start()
        client = redis.Redis(port=primary)
        base = f"127.0.0.1:{port}"
        info = StackInfo(
            f"http://{base}", f"ws://{base}", f"redis://127.0.0.1:{primary}/0", tmp_path, tmp_path, client
        )
        try:
            wait_healthy(info, media=2, web=2, timeout=60)
            try:
                await survive_failover(info, stack, tmp_path, lambda: sentinel.kill(primary))
            except AssertionError:
                print((sentinel.dir / "sentinel.log").read_text()[-3000:])  # what the sentinel decided
                raise
            assert sentinel.primary() == sentinel.replica_port, "the replica was promoted"
        finally:
            stack.stop()
            client.close()
