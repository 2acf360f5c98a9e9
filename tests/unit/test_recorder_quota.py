"""worker/quota.py: RECORDER_PATH measured now and then, topped up by this process's writes in between."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker.quota import RECORDING_RATE, RecorderQuota, disk_usage


@pytest.fixture
def walker() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


def test_disk_usage_counts_files_in_subdirectories_not_links(tmp_path: Path) -> None:
    (tmp_path / "day").mkdir()
    (tmp_path / "a.wav").write_bytes(bytes(100))
    (tmp_path / "day" / "b.wav").write_bytes(bytes(50))
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "big").write_bytes(bytes(10_000))
    (tmp_path / "link").symlink_to(elsewhere, target_is_directory=True)
    assert disk_usage(str(tmp_path)) == 150
    assert disk_usage(str(tmp_path / "none")) == 0


async def test_admits_until_the_quota_is_used_then_again_once_space_is_freed(
    tmp_path: Path, walker: ThreadPoolExecutor
) -> None:
    filler = tmp_path / "old.wav"
    filler.write_bytes(bytes(3000))
    quota = RecorderQuota(str(tmp_path), 2000, walker, every=0.05)
    runner = asyncio.create_task(quota.run())
    try:
        assert await quota.admit() is False and quota.exhausted()
        filler.unlink()
        while quota.exhausted():
            await asyncio.sleep(0.01)
        assert await quota.admit() is True
    finally:
        runner.cancel()


async def test_a_burst_of_recordings_is_stopped_by_their_reservations(
    tmp_path: Path, walker: ThreadPoolExecutor
) -> None:
    every = 5.0
    per_recording = int(RECORDING_RATE * every)
    quota = RecorderQuota(str(tmp_path), 3 * per_recording, walker, every=every)
    await quota.walk()
    admitted = [await quota.admit() for _ in range(5)]
    assert admitted == [True, True, True, False, False]


async def test_writes_count_until_the_next_walk_sees_them(tmp_path: Path, walker: ThreadPoolExecutor) -> None:
    quota = RecorderQuota(str(tmp_path), 1000, walker)
    await quota.walk()
    quota.charge(600)
    assert not quota.exhausted()
    quota.charge(600)
    assert quota.exhausted()
    await quota.walk()  # nothing was really written: the walk's figure replaces the estimate
    assert quota.used == 0 and not quota.exhausted()


async def test_no_quota(tmp_path: Path, walker: ThreadPoolExecutor) -> None:
    quota = RecorderQuota(str(tmp_path), 0, walker)
    await quota.run()  # returns at once: nothing to measure
    quota.charge(10**12)
    assert await quota.admit() and not quota.exhausted()
