"""worker/media/cache.py: downloads kept once, the bound kept by evicting the least recently used."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import web

from tests.local_http import serve_app
from worker.media.cache import STALE_TMP, FetchError, MediaCache, cache_path, evict, open_cached
from worker.urlguard import UrlGuard

# The test's server listens on loopback.
LOOPBACK = UrlGuard(allow_private=True)


def listing(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir()}


def put(path: Path, size: int, age: float) -> Path:
    path.write_bytes(b"x" * size)
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_evict_removes_the_least_recently_used_down_to_the_target(tmp_path: Path) -> None:
    old = put(tmp_path / "old.wav", 400, age=300)
    mid = put(tmp_path / "mid.wav", 400, age=200)
    new = put(tmp_path / "new.wav", 400, age=100)
    assert evict(str(tmp_path), bound=1200, keep_bytes=1000) == 1200  # within the bound: nothing
    assert old.exists()
    assert evict(str(tmp_path), bound=1000, keep_bytes=900) == 800
    assert not old.exists() and mid.exists() and new.exists()


def test_a_used_file_is_recent_again(tmp_path: Path) -> None:
    first = put(tmp_path / "first.wav", 400, age=300)
    second = put(tmp_path / "second.wav", 400, age=200)
    f = open_cached(first)
    assert f is not None
    f.close()
    evict(str(tmp_path), bound=600, keep_bytes=500)
    assert first.exists() and not second.exists()


def test_an_open_file_still_reads_after_eviction(tmp_path: Path) -> None:
    path = put(tmp_path / "playing.wav", 1000, age=100)
    f = open_cached(path)
    assert f is not None
    os.utime(path, (0, 0))  # the oldest of all
    put(tmp_path / "other.wav", 1000, age=10)
    evict(str(tmp_path), bound=1500, keep_bytes=1000)
    assert not path.exists()
    with f:
        assert f.read() == b"x" * 1000


def test_evict_leaves_other_writers_temporary_files_unless_stale(tmp_path: Path) -> None:
    writing = put(tmp_path / "a.wav.123.tmp", 800, age=1)
    stale = put(tmp_path / "b.wav.456.tmp", 800, age=STALE_TMP + 10)
    done = put(tmp_path / "c.wav", 800, age=50)
    assert evict(str(tmp_path), bound=1000, keep_bytes=900) == 800
    assert writing.exists() and not stale.exists() and not done.exists()


def test_evict_of_a_missing_directory(tmp_path: Path) -> None:
    assert evict(str(tmp_path / "none"), 10, 5) == 0


@pytest.fixture
async def server() -> tuple[str, dict[str, bytes]]:
    bodies: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.match_info["name"]])

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner, port = await serve_app(app)
    yield f"http://127.0.0.1:{port}", bodies
    await runner.cleanup()


async def test_cache_bounded_by_eviction_after_stores(
    tmp_path: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    base, bodies = server
    io = ThreadPoolExecutor(1)
    cache = MediaCache(str(tmp_path), io, LOOPBACK, max_bytes=1000)
    try:
        for name in "abcd":
            bodies[name] = name.encode() * 300
            with await cache.open(f"{base}/{name}") as f:
                assert f.read() == bodies[name]
            await asyncio.sleep(0.01)  # distinct mtimes
        while cache._evicting is not None:
            await asyncio.sleep(0.01)
        left = listing(tmp_path)
        assert sum(left.values()) <= 1000
        assert cache_path(str(tmp_path), f"{base}/d").name in left
        assert cache_path(str(tmp_path), f"{base}/a").name not in left
    finally:
        await cache.close()
        io.shutdown()


async def test_cache_refuses_a_file_larger_than_itself(
    tmp_path: Path, server: tuple[str, dict[str, bytes]]
) -> None:
    base, bodies = server
    bodies["big"] = b"x" * 1500
    io = ThreadPoolExecutor(1)
    cache = MediaCache(str(tmp_path), io, LOOPBACK, max_bytes=1000)
    try:
        with pytest.raises(
            FetchError, match=r"larger than the media cache \(1000 bytes, MEDIA_CACHE_MAX_MB\)"
        ):
            await cache.open(f"{base}/big")
        assert listing(tmp_path) == {}
    finally:
        await cache.close()
        io.shutdown()
