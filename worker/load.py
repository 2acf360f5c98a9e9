"""A media process's load and admission (common/headroom.py): what it announces, whether it claims calls."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from common import events, wire
from common.headroom import WINDOW, Admission, LoadLimits, LoadSample, LoopMeter
from common.keys import DISPATCH_GROUP
from common.liveness import room
from common.metrics import call_failed
from worker import metrics
from worker.host import ProcessHost

if TYPE_CHECKING:
    pass

log = logging.getLogger("pbx.worker.load")

TICK = 0.020
# Seconds the dispatch loop pauses after handing requests back, so that a process with room reads them.
HAND_BACK_PAUSE = 0.05
TURNED_AWAY = (
    "no media worker has room for another call: every media process is at MAX_CALLS, at the limit of its "
    "load or draining"
)


class LoadHost(ProcessHost, Protocol):
    """What the load side needs from its media process."""

    def capacity(self) -> int: ...


class MediaLoad:
    """Measures the media process's loop every second and keeps its `Admission` up to date; `on_change` is
    called (on the loop) when it stops or starts admitting or claiming; `touch` tells the heartbeat the loop
    is alive."""

    def __init__(self, proc: LoadHost, touch: Callable[[], None], on_change: Callable[[], None]) -> None:
        self.proc = proc
        self.on_change = on_change
        settings = proc.settings
        self.admission = Admission(
            LoadLimits.from_settings(settings), settings.max_calls, name=f"media process {proc.proc_id}"
        )
        self.meter = LoopMeter(
            self._sample,
            calls=proc.call_count,
            ticks=lambda: (metrics.TICK_TIME.sum, metrics.TICK_TIME.count),
            touch=touch,
            # The media clock feeds its lateness as the lag (`LoopMeter.lag`): one probe a window is enough.
            probe=WINDOW,
        )
        self.burn_us = settings.test_tick_burn_us

    def _sample(self, sample: LoadSample) -> None:
        before = self.proc.capacity()
        if self.admission.update(sample) or self.proc.capacity() != before:
            self.on_change()  # in the heartbeat now: frontends count on it for their next admissions

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

    async def turn_away(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Dispatch requests read while this process is far past its load limits (it claims nothing then).

        If another media process announces room, the requests go back on the stream for it. Else nobody can
        take them: each call is refused now, as a frontend refuses one it knows has no room (`error{code:503}`
        + `hangup{reason:"no_capacity"}`), instead of waiting for the claim timeout.
        """
        proc = self.proc
        redis, keys = proc.redis, proc.keys
        ids = [entry_id for entry_id, _ in entries]
        procs = await proc.registry.procs()
        others_have_room = any(p.get("proc") != proc.proc_id and room(p) > 0 for p in procs)
        if others_have_room:
            await proc.registry.hand_back(entries)
            await asyncio.sleep(HAND_BACK_PAUSE)
            return
        pipe = redis.pipeline(transaction=False)
        for _entry_id, fields in entries:
            call_id = fields.get(b"call_id", b"").decode()
            pipe.delete(keys.call(call_id))
            pipe.zrem(keys.calls, call_id)
        pipe.xack(keys.dispatch, DISPATCH_GROUP, *ids)
        pipe.xdel(keys.dispatch, *ids)
        results = await pipe.execute()
        now = events.now_ms()
        refused = 0
        for i, (_entry_id, fields) in enumerate(entries):
            if not results[2 * i]:
                continue  # the call ended meanwhile (its client left)
            refused += 1
            call_id = fields.get(b"call_id", b"").decode()
            call_type = fields.get(b"call_type", b"websocket").decode()
            frontend = fields.get(b"frontend", b"").decode()
            call_failed(call_type, "no_capacity")
            for ev in events.ended_by_system(call_id, TURNED_AWAY, 503, "no_capacity", now):
                proc.send(frontend, wire.msg(call_id, wire.EVT, ev))
            proc.send(frontend, wire.msg(call_id, wire.CTL, {"op": wire.Op.CLOSE}))
        if refused:
            log.warning(
                "far over its load limits, with no other process to take them: %d calls refused", refused
            )

    async def run(self) -> None:
        if self.burn_us > 0:
            self._burn(asyncio.get_running_loop(), asyncio.get_running_loop().time())
        await self.meter.run()

    def _burn(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        """Test knob (`PBX_TEST_TICK_BURN_US`): every 20 ms, hold the loop `burn_us` µs per call, as if each
        call's media cost that much more."""
        n = self.proc.call_count()
        if n:
            until = time.perf_counter() + n * self.burn_us / 1e6
            while time.perf_counter() < until:
                pass
        due += TICK
        now = loop.time()
        if due < now - 5 * TICK:
            due = now
        loop.call_at(due, self._burn, loop, due)
