"""The media cache: files behind http(s) URLs are downloaded once and kept by the sha256 of the URL.

Downloads go through the process's URL rule (worker/urlguard.py): a URL it refuses raises `UrlRefused`,
before any connection is made."""

from __future__ import annotations

import asyncio
import hashlib
import os
from concurrent.futures import Executor
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import aiohttp

from worker.urlguard import HTTP, UrlGuard

MAX_DOWNLOAD = 64 * 1024 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=30, connect=5)


class FetchError(Exception):
    pass


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def cache_path(cache_dir: str, url: str) -> Path:
    suffix = PurePosixPath(urlparse(url).path).suffix.lower()
    if not suffix or len(suffix) > 6:
        suffix = ".bin"
    return Path(cache_dir) / f"{hashlib.sha256(url.encode()).hexdigest()}{suffix}"


def _store(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class MediaCache:
    """Download-once cache shared by a process's calls; concurrent fetches of a URL share one download."""

    def __init__(self, cache_dir: str, io: Executor, guard: UrlGuard) -> None:
        self.cache_dir = cache_dir
        self._io = io
        self._guard = guard
        self._inflight: dict[str, asyncio.Future[Path]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def path_for(self, url: str) -> Path:
        path = cache_path(self.cache_dir, url)
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(self._io, path.exists):
            return path
        fut = self._inflight.get(url)
        if fut is None:
            fut = asyncio.ensure_future(self._download(url, path))
            self._inflight[url] = fut
            fut.add_done_callback(lambda _f: self._inflight.pop(url, None))
        return await asyncio.shield(fut)

    async def _download(self, url: str, path: Path) -> Path:
        if self._session is None:
            self._session = self._guard.session(HTTP, timeout=TIMEOUT)
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    raise FetchError(f"GET {url} answered HTTP {resp.status}")
                data = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > MAX_DOWNLOAD:
                        raise FetchError(f"{url} is larger than {MAX_DOWNLOAD} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"cannot download {url}: {exc or type(exc).__name__}") from None
        await asyncio.get_running_loop().run_in_executor(self._io, _store, path, bytes(data))
        return path

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
