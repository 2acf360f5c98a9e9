"""The real stack for end-to-end tests: embedded Redis, gunicorn with 2 frontends, 2 media processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from common.embedded import EmbeddedRedis, free_port
from common.embeddedcluster import EmbeddedCluster
from common.redisconn import connect_sync
from scripts.stack import Stack


@dataclass
class StackInfo:
    base: str
    ws: str
    redis_url: str
    recorder_path: Path
    cache_path: Path
    redis: redis.Redis
    sip_port: int = 0

    def health(self) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.base}/health", timeout=5) as resp:
            health: dict[str, object] = json.loads(resp.read())
            return health


def wait_healthy(
    info: StackInfo, media: int, web: int, timeout: float = 30.0, warm: bool = True
) -> dict[str, object]:
    """Until `/health` counts `media` media processes (with `warm`, all of them warm) and `web` frontends."""
    deadline = time.monotonic() + timeout
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            last = info.health()
            if last.get("media_processes") == media and last.get("web_processes") == web:
                if not warm or last.get("media_warm") == media:
                    return last
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"stack not healthy in {timeout}s: {last}")


def stack_env(root: Path, port: int, redis_url: str | None, **settings: str) -> dict[str, str]:
    """The environment of a test stack: its own port, Redis, files and quiet logs, plus `settings`.

    `play` may read files under the root's parent: the pytest run's temporary directory (`root` is one of
    its directories), where every test writes the audio it plays (its `tmp_path`).

    ALLOW_PRIVATE_URLS=1: the tests' bots, provider mocks and media servers listen on 127.0.0.1. A test of
    the rule itself starts its stack with ALLOW_PRIVATE_URLS="0" (tests/e2e/test_outbound.py)."""
    env = dict(
        os.environ,
        ALLOW_PRIVATE_URLS="1",
        HOST="127.0.0.1",
        PORT=str(port),
        RECORDER_PATH=str(root / "rec"),
        MEDIA_CACHE_PATH=str(root / "cache"),
        MEDIA_PATH=str(root.parent),
        DRAIN_TIMEOUT="5",
        LOG_LEVEL="WARNING",
        RTC_ADDRESSES="127.0.0.1",
        RTC_MEDIA_TIMEOUT="3",
        SIP_ADDR="127.0.0.1",
        SIP_PORT=str(free_port()),
        # Every test's calls come from 127.0.0.1, hundreds a minute: the per-address limit is out of the way
        # (still counted in Redis on every call) unless a test sets its own.
        CALLS_PER_IP_PER_MIN="1000000",
        CALLS_PER_IP_BURST="1000000",
        # Admission by load is off: the session's stack is shared by every test, and a test that floods a
        # socket left the frontend refusing the next test's call ("its event loop has no headroom") while it
        # recovered. tests/e2e/test_overload.py tests it with limits of its own.
        PBX_LOAD_LOOP_BUSY="0",
        PBX_LOAD_LAG_MS="0",
        PBX_LOAD_TICK_MS="0",
    )
    env.pop("PYTHONWARNINGS", None)
    env.pop("REDIS_URL", None)
    env.pop("TRUST_CLIENTS", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(settings)
    return env


def stack_redis() -> EmbeddedRedis | EmbeddedCluster:
    """The Redis of a test stack: one embedded server, or with PBX_TEST_REDIS=cluster a Redis Cluster (3
    masters, 3 replicas), to run the end-to-end tests on a cluster by hand:
    `PBX_TEST_REDIS=cluster ./scripts/test tests/e2e`."""
    if os.environ.get("PBX_TEST_REDIS") == "cluster":
        return EmbeddedCluster()
    return EmbeddedRedis()


@contextlib.contextmanager
def running_stack(
    root: Path,
    media: int,
    web: int,
    log: Path | None = None,
    warm: bool = True,
    port: int | None = None,
    **settings: str,
) -> Iterator[StackInfo]:
    """A whole stack of its own (embedded Redis, gunicorn, media pool), healthy (and, with `warm`, every media
    process warmed up), stopped on exit; with `log`, every process's output is appended to that file. Its
    frontends listen on `port` (default: a free one)."""
    with stack_redis() as server:
        port = port or free_port()
        env = stack_env(
            root, port, server.url, WEB_CONCURRENCY=str(web), WORKER_PROCESSES=str(media), **settings
        )
        info = StackInfo(
            f"http://127.0.0.1:{port}",
            f"ws://127.0.0.1:{port}",
            server.url,
            root / "rec",
            root / "cache",
            connect_sync(server.url),
            int(env["SIP_PORT"]),
        )
        stack = Stack(env, quiet=os.environ.get("PBX_TEST_LOGS") != "1", log=log)
        try:
            stack.start()
            wait_healthy(info, media=media, web=web, warm=warm)
            yield info
        finally:
            stack.stop()
            info.redis.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with running_stack(
        tmp_path_factory.mktemp("stack"), 2, 2, MAX_CALLS="100", PBX_CLAIM_TIMEOUT="5"
    ) as info:
        yield info


@pytest.fixture
def call_id() -> str:
    return f"t.{uuid.uuid4()}"


class Webhook:
    """An HTTP endpoint in a thread that records each POSTed payload (status = `status`), on `host`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.payloads: queue.Queue[dict[str, Any]] = queue.Queue()
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length") or 0)
                hook.payloads.put(json.loads(self.rfile.read(n)))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, free_port()), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.payloads.get(timeout=timeout))


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture(scope="module")
def inbound(tmp_path_factory: pytest.TempPathFactory, webhook: Webhook) -> Iterator[StackInfo]:
    root = tmp_path_factory.mktemp("inbound")
    with running_stack(root, 2, 1, SIP_WEBHOOK_URL=webhook.url, SIP_ACCEPT_TIMEOUT="3") as info:
        yield info
