"""`rediss://`: a Redis reached over TLS with a certificate of its own (as a managed Redis is), checked
against REDIS_TLS_CA or, with REDIS_TLS_VERIFY=0, not checked; refused otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import redis

from common.embedded import EmbeddedRedis, free_port
from common.redisconn import connect_sync
from scripts.stack import Stack
from tests.audio_util import peak_freq, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, stack_env, wait_healthy
from tests.e2e.test_playback import write_wav
from tests.tlsproxy import TlsProxy

pytestmark = pytest.mark.e2e


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsProxy]:
    with EmbeddedRedis() as server, TlsProxy(server.port, tmp_path) as proxy:
        yield proxy


def test_the_certificate_is_checked_unless_told_otherwise(
    tls_redis: TlsProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_TLS_CA", raising=False)
    monkeypatch.delenv("REDIS_TLS_VERIFY", raising=False)
    monkeypatch.setenv("REDIS_CLUSTER", "0")
    with contextlib.closing(connect_sync(tls_redis.url, socket_timeout=2)) as r:
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            r.ping()
    monkeypatch.setenv("REDIS_TLS_CA", str(tls_redis.cert))
    with contextlib.closing(connect_sync(tls_redis.url, socket_timeout=2)) as r:
        assert r.ping()
    monkeypatch.delenv("REDIS_TLS_CA")
    monkeypatch.setenv("REDIS_TLS_VERIFY", "0")
    with contextlib.closing(connect_sync(tls_redis.url, socket_timeout=2)) as r:
        assert r.ping()


async def test_a_stack_over_tls(tls_redis: TlsProxy, tmp_path: Path) -> None:
    """Everything, audio included (media links off), crosses the TLS connections."""
    port = free_port()
    env = stack_env(
        tmp_path / "stack",
        port,
        tls_redis.url,
        WEB_CONCURRENCY="1",
        WORKER_PROCESSES="1",
        MEDIA_LINK="0",
        REDIS_TLS_CA=str(tls_redis.cert),
    )
    stack = Stack(env, quiet=True).start()
    plain = redis.Redis.from_url(tls_redis.url, ssl_ca_certs=str(tls_redis.cert))
    info = StackInfo(
        f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", tls_redis.url, tmp_path, tmp_path, plain
    )
    wav = write_wav(tmp_path / "tone.wav", tone(700, 0.6))
    try:
        wait_healthy(info, media=1, web=1, timeout=60)
        c = await CallClient.open(info.ws, call_id="tls-1")
        try:
            await c.invite()
            await c.send({"command": "play", "url": str(wav), "playId": "t"})
            await c.event("trackEnd", trackId="server-side-track", timeout=10)
            audio = np.frombuffer(b"".join(f for _, f in c.frames), dtype="<i2")
            assert len(audio) >= 16000 * 0.55
            assert abs(peak_freq(audio.astype(np.float64)) - 700) < 20
            async with aiohttp.ClientSession() as s, s.get(f"{info.base}/call/lists") as resp:
                assert [x["id"] for x in (await resp.json())["calls"]] == ["tls-1"]
        finally:
            await c.close()
        assert tls_redis.handshakes >= 3, "frontend, media process and supervisor all came over TLS"
        assert stack.alive()
    finally:
        stack.stop()
        plain.close()
