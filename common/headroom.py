"""How loaded a process is, and whether it should take another call (admission by real headroom).

`LoopMeter` runs on a process's event loop and closes a `LoadSample` every 0.5 s: the loop thread's own CPU
share (`time.thread_time`), the event-loop lag (how late a 25 ms sleep wakes up: 90th percentile and
maximum), the process's CPU share over all its threads (`time.process_time`, informational) and, in a media
process, the mean and longest media tick.

`Admission` turns samples into decisions, with hysteresis. The pressure is the largest of
`figure / limit` over the figures that have a limit (`PBX_LOAD_LOOP_BUSY`, `PBX_LOAD_LAG_MS`,
`PBX_LOAD_TICK_MS`). At pressure 1 the process stops admitting: a media process announces no room in its
heartbeat (capacity = its calls), a frontend refuses new call sockets; it admits again once the pressure is
back under `PBX_LOAD_RESUME` (0.8) on `RESUME_SAMPLES` samples in a row. A media process stops claiming
from the dispatch stream only at a pressure of `HARD_PRESSURE`: calls that the frontends let through on
figures half a second old are still taken unless the process is well past its limit; past it, what it reads
goes back to the stream for a process with room, or is refused at once (worker/load.py).

While admitting, a media process also estimates how many calls it can carry: its CPU-like figures (loop
share, tick time) grow with its calls, so once they are past `ESTIMATE_FROM` of their limits, from the cost
of one call (pressure above the idle level, divided by the calls) it announces `capacity` = the calls at
which the pressure would reach `TARGET_PRESSURE` (below that, `MAX_CALLS`).
Frontends count the calls they admit against that room, so a burst is cut at the estimate instead of
overshooting for the second it takes the figures to catch up.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from common.metrics import REGISTRY

log = logging.getLogger("pbx.headroom")

LOAD_PRESSURE = REGISTRY.gauge(
    "pbx_load_pressure",
    "The process's load as a share of its limits (the largest of loop CPU, event-loop lag and, for media, "
    "tick time over PBX_LOAD_*): new calls are refused from 1.",
).labels()
LOOP_LAG = REGISTRY.gauge(
    "pbx_event_loop_lag_seconds",
    "How late the event loop runs a timer: 90th percentile over the last second.",
).labels()
LOOP_BUSY = REGISTRY.gauge(
    "pbx_event_loop_busy_ratio", "CPU time of the event loop's thread over the last second / wall time."
).labels()
ADMITTING = REGISTRY.gauge(
    "pbx_admitting", "1 while the process's load lets it take new calls, 0 while it is overloaded."
).labels()
ADMITTING.set(1)

# Seconds of one load sample, and between lag probes.
WINDOW = 0.5
PROBE_EVERY = 0.025
# Event-loop lag counts when it lasts: the lag figure used is the third highest of the last LAG_SAMPLES
# samples' (lag over the limit in at least 3 of 4 half seconds). Setting calls up (decoding the files they
# play, on threads that hold the GIL) makes the lag jump for a second or so, a burst of calls more so; that
# is not a process that cannot carry its calls. A loop that is really behind is behind in every sample.
LAG_SAMPLES = 4
# Samples in a row at or under the resume level before a process admits again: one quiet half second in a
# noisy stretch is not headroom.
RESUME_SAMPLES = 2
# Pressure at which a media process stops claiming dispatch requests (it stops admitting at 1).
HARD_PRESSURE = 1.1
# Pressure the capacity estimate aims at: between the resume level and the limit, so a steady stream of
# calls settles below the limit instead of flapping across it.
TARGET_PRESSURE = 0.9
# Pressure from which the capacity is estimated from the load (with at least MIN_CALLS calls). Below it
# the load says too little about what a call costs (an idle loop's noise is as large as a few calls), and
# the capacity is MAX_CALLS.
ESTIMATE_FROM = 0.2
MIN_CALLS = 2


@dataclass(frozen=True, slots=True)
class LoadLimits:
    """Limits of the load figures (0 = that figure is not used)."""

    loop_busy: float = 0.75
    lag_ms: float = 30.0
    tick_ms: float = 10.0
    resume: float = 0.8

    @classmethod
    def from_settings(cls, settings: object) -> LoadLimits:
        return cls(
            loop_busy=float(getattr(settings, "load_loop_busy", 0.75)),
            lag_ms=float(getattr(settings, "load_lag_ms", 30.0)),
            tick_ms=float(getattr(settings, "load_tick_ms", 10.0)),
            resume=float(getattr(settings, "load_resume", 0.8)),
        )


@dataclass(frozen=True, slots=True)
class LoadSample:
    """One window of load figures."""

    seconds: float = WINDOW
    loop_busy: float = 0.0  # the event loop thread's CPU time / wall time
    cpu: float = 0.0  # the whole process's CPU time / wall time (1.0 = one core)
    lag_ms: float = 0.0  # event-loop lag, 90th percentile
    lag_max_ms: float = 0.0
    tick_ms: float = 0.0  # media: mean media tick (0 when there is no media clock)
    tick_max_ms: float = 0.0
    calls: float = 0.0  # mean calls over the window

    def figures(self) -> dict[str, float]:
        """The heartbeat's `load` field."""
        return {
            "loop_busy": round(self.loop_busy, 3),
            "cpu": round(self.cpu, 3),
            "lag_ms": round(self.lag_ms, 2),
            "lag_max_ms": round(self.lag_max_ms, 2),
            "tick_ms": round(self.tick_ms, 3),
        }


class Admission:
    """Whether a process takes new calls, from its load samples (see the module docstring)."""

    def __init__(self, limits: LoadLimits, max_calls: int | None = None, name: str = "process") -> None:
        self.limits = limits
        self.max_calls = max_calls
        self.name = name
        self.admitting = True
        self.claiming = True
        self.pressure = 0.0
        self.sample = LoadSample()
        # The estimated number of calls this process can carry (max_calls when there is nothing to go by).
        self.limit = max_calls if max_calls is not None else 0
        self._idle: float | None = None  # the CPU-like pressure with no call
        self._quiet = 0  # samples in a row at or under the resume level, while not admitting
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)

    def _ratio(self, value: float, limit: float) -> float:
        return value / limit if limit > 0 else 0.0

    def update(self, sample: LoadSample) -> bool:
        """Take a new sample; True when `admitting` or `claiming` changed."""
        lim = self.limits
        linear = max(self._ratio(sample.loop_busy, lim.loop_busy), self._ratio(sample.tick_ms, lim.tick_ms))
        self._lags.append(sample.lag_ms)
        pressure = max(linear, self._ratio(self.lasting_lag(), lim.lag_ms))
        self.sample, self.pressure = sample, pressure
        LOAD_PRESSURE.set(round(pressure, 3))
        LOOP_LAG.set(sample.lag_ms / 1000)
        LOOP_BUSY.set(round(sample.loop_busy, 3))
        before = (self.admitting, self.claiming)
        self._quiet = self._quiet + 1 if not self.admitting and pressure <= lim.resume else 0
        if self.admitting and pressure >= 1.0:
            self.admitting = False
            log.warning("%s overloaded (%s): taking no new calls", self.name, self.describe())
        elif not self.admitting and self._quiet >= RESUME_SAMPLES:
            self.admitting = True
            log.warning("%s load back to %.2f of its limits: taking new calls again", self.name, pressure)
        if pressure >= HARD_PRESSURE:
            self.claiming = False
        elif self.admitting:
            self.claiming = True
        ADMITTING.set(1 if self.admitting else 0)
        self._estimate(sample, linear)
        return (self.admitting, self.claiming) != before

    def lasting_lag(self) -> float:
        """The event-loop lag (ms) that lasted: exceeded in all but one of the last LAG_SAMPLES samples."""
        lags = sorted([*self._lags, *[0.0] * (LAG_SAMPLES - len(self._lags))], reverse=True)
        return lags[LAG_SAMPLES - 2]

    def _estimate(self, sample: LoadSample, linear: float) -> None:
        if self.max_calls is None:
            return
        if sample.calls < 0.5:
            # Idle: what the process costs with no call (learnt slowly, as a floor for the estimate).
            self._idle = linear if self._idle is None else 0.7 * self._idle + 0.3 * linear
            self.limit = self.max_calls
            return
        if linear < ESTIMATE_FROM or sample.calls < MIN_CALLS:
            self.limit = self.max_calls
            return
        per_call = (linear - min(self._idle or 0.0, linear / 2)) / sample.calls
        room = (TARGET_PRESSURE - linear) / per_call
        self.limit = max(0, min(self.max_calls, int(sample.calls + room)))

    def capacity(self, calls: int) -> int:
        """The capacity to announce: calls it would carry in all (its calls now when it takes no more)."""
        if self.max_calls is None:
            return 0
        if not self.admitting:
            return min(calls, self.max_calls)
        return self.limit

    def describe(self) -> str:
        s = self.sample
        parts = [
            f"pressure {self.pressure:.2f}",
            f"loop busy {s.loop_busy:.0%}",
            f"lag p90 {s.lag_ms:.1f} ms (lasting {self.lasting_lag():.1f} ms)",
        ]
        if s.tick_ms:
            parts.append(f"mean tick {s.tick_ms:.2f} ms")
        parts.append(f"{s.calls:.0f} calls")
        return ", ".join(parts)


class LoopMeter:
    """Measures the load of the event loop it runs on; hands a `LoadSample` to `on_sample` every window.

    `calls` counts the process's calls (sampled at every probe). `ticks`, in a media process, returns the
    media clock's cumulative (seconds, count). `touch` is called at every probe: the loop is alive. The lag
    is measured by sleeping `probe` s at a time; a process with a timer of its own (the media clock) may
    `lag` its lateness instead and probe once a window, so as not to be woken for nothing.
    """

    def __init__(
        self,
        on_sample: Callable[[LoadSample], None],
        calls: Callable[[], int] = lambda: 0,
        ticks: Callable[[], tuple[float, int]] | None = None,
        tick_max: Callable[[], float] | None = None,
        touch: Callable[[], None] | None = None,
        window: float = WINDOW,
        probe: float = PROBE_EVERY,
    ) -> None:
        self.on_sample = on_sample
        self.calls = calls
        self.ticks = ticks
        self.tick_max = tick_max
        self.touch = touch
        self.window = window
        self.probe = probe
        self.last = LoadSample()
        self._fed: list[float] = []

    def lag(self, ms: float) -> None:
        """A lag sample from elsewhere on the loop: how late a timer fired (ms)."""
        self._fed.append(ms)

    async def run(self) -> None:
        clock = time.perf_counter
        while True:
            start, busy0, cpu0 = clock(), time.thread_time(), time.process_time()
            tick0 = self.ticks() if self.ticks else (0.0, 0)
            lags: list[float] = []
            calls = 0
            while clock() - start < self.window:
                asked = clock()
                await asyncio.sleep(self.probe)
                lags.append(max(0.0, clock() - asked - self.probe) * 1000)
                calls += self.calls()
                if self.touch is not None:
                    self.touch()
            wall = max(clock() - start, 1e-6)
            tick1 = self.ticks() if self.ticks else (0.0, 0)
            n = tick1[1] - tick0[1]
            probes = len(lags)
            lags += self._fed
            self._fed = []
            lags.sort()
            self.last = LoadSample(
                seconds=wall,
                loop_busy=(time.thread_time() - busy0) / wall,
                cpu=(time.process_time() - cpu0) / wall,
                lag_ms=lags[min(len(lags) - 1, int(len(lags) * 0.9))],
                lag_max_ms=lags[-1],
                tick_ms=(tick1[0] - tick0[0]) * 1000 / n if n > 0 else 0.0,
                tick_max_ms=self.tick_max() if self.tick_max else 0.0,
                calls=calls / probes,
            )
            try:
                self.on_sample(self.last)
            except Exception:
                log.exception("load sample handler failed")


def install_stall_knob(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """Test knob (`PBX_TEST_STALL_SECONDS`): SIGUSR2 blocks this event loop for `seconds`, as a loop
    saturated by work would be. Its other threads (the heartbeat's) go on."""
    if seconds <= 0:
        return

    def stall() -> None:
        log.warning("SIGUSR2: blocking the event loop for %.1f s (PBX_TEST_STALL_SECONDS)", seconds)
        time.sleep(seconds)
        log.warning("event loop unblocked")

    loop.add_signal_handler(signal.SIGUSR2, stall)
