"""A media process's load and admission (common/headroom.py): what it announces, whether it claims calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common.headroom import Admission, LoadLimits, LoadSample, LoopMeter
from worker import metrics

if TYPE_CHECKING:
    from worker.process import MediaProcess

TICK = 0.020


class MediaLoad:
    """Measures the media process's loop every second and keeps its `Admission` up to date; `on_change` is
    called (on the loop) when it stops or starts admitting or claiming."""

    def __init__(self, proc: MediaProcess, on_change: Callable[[], None]) -> None:
        self.proc = proc
        self.on_change = on_change
        settings = proc.settings
        self.admission = Admission(
            LoadLimits.from_settings(settings), settings.max_calls, name=f"media process {proc.proc_id}"
        )
        self.meter = LoopMeter(
            self._sample,
            calls=lambda: len(proc.sessions),
            ticks=lambda: (metrics.TICK_TIME.sum, metrics.TICK_TIME.count),
            touch=proc.heartbeat.touch,
        )
        self.burn_us = settings.test_tick_burn_us

    def _sample(self, sample: LoadSample) -> None:
        if self.admission.update(sample):
            self.on_change()

    def figures(self) -> dict[str, Any]:
        """The heartbeat's `load` field."""
        a = self.admission
        return {
            **a.sample.figures(),
            "pressure": round(a.pressure, 3),
            "admitting": a.admitting,
            "claiming": a.claiming,
            "limit": a.limit,
        }

    async def run(self) -> None:
        if self.burn_us > 0:
            self._burn(asyncio.get_running_loop(), asyncio.get_running_loop().time())
        await self.meter.run()

    def _burn(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        """Test knob (`PBX_TEST_TICK_BURN_US`): every 20 ms, hold the loop `burn_us` µs per call, as if each
        call's media cost that much more."""
        n = len(self.proc.sessions)
        if n:
            until = time.perf_counter() + n * self.burn_us / 1e6
            while time.perf_counter() < until:
                pass
        due += TICK
        now = loop.time()
        if due < now - 5 * TICK:
            due = now
        loop.call_at(due, self._burn, loop, due)
