"""The media process warm-up steps (worker/warmup.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from worker import warmup


@pytest.mark.parametrize("step", [warmup.dtmf, warmup.webrtc_vad, warmup.ten_vad, warmup.rnnoise])
def test_each_step_runs_its_model_once(step: object) -> None:
    step()  # type: ignore[operator]


async def test_a_failed_step_is_logged_and_the_others_finish(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise OSError("libc++.so.1: cannot open shared object file")

    caplog.set_level(logging.WARNING, "pbx.worker.warmup")
    took = await warmup.run_steps({"ten": broken(), "dtmf": asyncio.to_thread(warmup.dtmf)})
    assert set(took) == {"ten", "dtmf"} and all(ms >= 0 for ms in took.values())
    [record] = caplog.records
    assert "warm-up of ten failed" in record.getMessage() and "libc++" in record.getMessage()
