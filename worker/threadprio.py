"""Thread priorities: model threads that must give way to the event loop's audio under CPU contention."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("pbx.worker.threadprio")

# Nice levels added to a background thread (Linux schedules threads by their own nice value). At +10 a
# thread gets about a tenth of the CPU time of a nice-0 thread when both want the same core.
BACKGROUND_NICE = 10


def lower_this_thread(steps: int = BACKGROUND_NICE) -> None:
    """Make the calling thread `steps` nicer than it is (a ThreadPoolExecutor initializer); a system that
    refuses leaves it as it is."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + steps)
    except (OSError, AttributeError) as exc:  # not Linux, or not allowed
        log.warning("could not lower thread %s's priority: %s", threading.current_thread().name, exc)
