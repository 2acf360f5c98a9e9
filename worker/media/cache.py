"""The media cache: files behind http(s) URLs are downloaded once and kept by the sha256 of the URL.

The directory is shared by every media process of a host (and holds kept syntheses too,
worker/call/speaking.py) and bounded by MEDIA_CACHE_MAX_MB: past it, the least recently used files (by
mtime, which every use refreshes) are removed. Removal is safe beside other processes: files appear only
by atomic rename, a file is opened before it is read (an open file that is unlinked stays readable), and a
race to unlink the same file is harmless.

Downloads go through the process's URL rule (worker/urlguard.py): a URL it refuses raises `UrlRefused`,
before any connection is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from concurrent.futures import Executor
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urlparse

import aiohttp

from common.redact import redact_url
from worker.urlguard import HTTP, UrlGuard

log = logging.getLogger("pbx.worker.cache")

MAX_DOWNLOAD = 64 * 1024 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=30, connect=5)
# Eviction brings the cache down to this share of its bound, so that it does not run at every store.
EVICT_TO = 0.9
# Seconds after which this process's figure is measured again (other processes store too).
RESCAN_EVERY = 30.0
# A temporary file older than this is a writer's leftover (it died mid-write): removed with the rest.
STALE_TMP = 600.0
TMP_SUFFIX = ".tmp"


class FetchError(Exception):
    pass


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def cache_path(cache_dir: str, url: str) -> Path:
    suffix = PurePosixPath(urlparse(url).path).suffix.lower()
    if not suffix or len(suffix) > 6:
        suffix = ".bin"
    return Path(cache_dir) / f"{hashlib.sha256(url.encode()).hexdigest()}{suffix}"


def temporary(path: Path) -> Path:
    """A writer's private name for `path` until it is complete (renamed over `path` at once)."""
    return path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _store(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    tmp.write_bytes(data)
    tmp.replace(path)


def open_cached(path: Path) -> BinaryIO | None:
    """The cached file open for reading, its use recorded (mtime), or None when it is not there."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None
    with contextlib.suppress(OSError):
        os.utime(f.fileno())
    return f


def evict(cache_dir: str, bound: int, keep_bytes: int, now: float | None = None) -> int:
    """When the directory holds more than `bound` bytes, remove the least recently used files until at most
    `keep_bytes` remain; the bytes left. Blocking.

    Another writer's temporary file is left alone unless it is stale; a file that vanished meanwhile (another
    process evicted it too) is simply gone."""
    now = time.time() if now is None else now
    files: list[tuple[float, int, str]] = []
    total = 0
    try:
        entries = list(os.scandir(cache_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        if entry.name.endswith(TMP_SUFFIX) and now - st.st_mtime < STALE_TMP:
            total += st.st_size
            continue
        files.append((st.st_mtime, st.st_size, entry.path))
        total += st.st_size
    if total <= bound:
        return total
    files.sort()
    for _mtime, size, path in files:
        if total <= keep_bytes:
            break
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        total -= size
    return total


class MediaCache:
    """Download-once cache shared by a process's calls; concurrent fetches of a URL share one download.

    `max_bytes` bounds the directory (0: unbounded); `scan` is the executor its directory walks run on
    (a walk must not hold up the disk thread's writes and reads)."""

    def __init__(
        self,
        cache_dir: str,
        io: Executor,
        guard: UrlGuard,
        max_bytes: int = 0,
        scan: Executor | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes
        self._io = io
        self._scan = scan or io
        self._guard = guard
        self._inflight: dict[str, asyncio.Task[Path]] = {}
        self._session: aiohttp.ClientSession | None = None
        # What the directory held at the last walk (None: not walked yet), and what this process stored since.
        self._measured: int | None = None
        self._added = 0
        self._scanned_at = 0.0
        self._evicting: asyncio.Task[None] | None = None

    @property
    def largest(self) -> int:
        """The largest download taken: the cache's bound, if smaller than MAX_DOWNLOAD."""
        return min(MAX_DOWNLOAD, self.max_bytes) if self.max_bytes > 0 else MAX_DOWNLOAD

    async def open(self, url: str) -> BinaryIO:
        """The file behind `url`, downloaded if it is not cached yet, open for reading."""
        path = cache_path(self.cache_dir, url)
        loop = asyncio.get_running_loop()
        f = await loop.run_in_executor(self._io, open_cached, path)
        if f is not None:
            return f
        task = self._inflight.get(url)
        if task is None:
            task = asyncio.create_task(self._download(url, path), name="media-cache:download")
            self._inflight[url] = task
            task.add_done_callback(functools.partial(self._downloaded, url))
        await asyncio.shield(task)
        f = await loop.run_in_executor(self._io, open_cached, path)
        if f is None:  # evicted between its rename and this open: only when the bound is tiny
            raise FetchError(
                f"{redact_url(url)} did not stay in the media cache (MEDIA_CACHE_MAX_MB is too small)"
            )
        return f

    def _downloaded(self, url: str, task: asyncio.Task[Path]) -> None:
        self._inflight.pop(url, None)
        if not task.cancelled() and task.exception() is not None:
            # Each call still waiting reports it too; this line covers a download all its calls left.
            log.info("download failed: %s", task.exception())

    async def _download(self, url: str, path: Path) -> Path:
        if self._session is None:
            self._session = self._guard.session(HTTP, timeout=TIMEOUT)
        limit = self.largest
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    raise FetchError(f"GET {redact_url(url)} answered HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > limit:
                    raise FetchError(self._too_large(url, limit))
                data = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > limit:
                        raise FetchError(self._too_large(url, limit))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(redact_url(f"cannot download {url}: {exc or type(exc).__name__}")) from None
        await asyncio.get_running_loop().run_in_executor(self._io, _store, path, bytes(data))
        self.stored(len(data))
        return path

    def _too_large(self, url: str, limit: int) -> str:
        if limit < MAX_DOWNLOAD:
            return f"{redact_url(url)} is larger than the media cache ({limit} bytes, MEDIA_CACHE_MAX_MB)"
        return f"{redact_url(url)} is larger than {MAX_DOWNLOAD} bytes"

    def stored(self, nbytes: int) -> None:
        """`nbytes` more were written to the cache directory: evict when the bound is passed (or this
        process's figure is old)."""
        if self.max_bytes <= 0:
            return
        self._added += nbytes
        over = self._measured is None or self._measured + self._added > self.max_bytes
        stale = time.monotonic() - self._scanned_at > RESCAN_EVERY
        if (over or stale) and self._evicting is None:
            self._evicting = asyncio.create_task(self._evict(), name="media-cache:evict")

    async def _evict(self) -> None:
        try:
            keep = int(self.max_bytes * EVICT_TO)
            loop = asyncio.get_running_loop()
            while True:
                counted = self._added
                left = await loop.run_in_executor(self._scan, evict, self.cache_dir, self.max_bytes, keep)
                # Stores that finished during the walk may be in its figure too: counted twice until the next.
                self._measured, self._added, self._scanned_at = left, self._added - counted, time.monotonic()
                # Once more only when what was stored during the walk took it over again (not when the walk
                # could not get under the bound: other writers' files in progress, which the next store sees).
                if left > self.max_bytes or left + self._added <= self.max_bytes:
                    break
        except Exception:
            log.exception("media cache eviction failed")
        finally:
            self._evicting = None

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._evicting is not None:
            self._evicting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._evicting
        if self._session is not None:
            await self._session.close()
