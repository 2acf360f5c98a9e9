"""A model thread gives way to the event loop: it runs nicer than the process's other threads."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from worker.threadprio import BACKGROUND_NICE, lower_this_thread


def nice_here() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_background_thread_is_nicer_and_the_rest_of_the_process_is_not() -> None:
    before = nice_here()
    with ThreadPoolExecutor(1, initializer=lower_this_thread) as pool:
        assert pool.submit(nice_here).result() == min(19, before + BACKGROUND_NICE)
    assert nice_here() == before
    with ThreadPoolExecutor(1) as plain:
        assert plain.submit(nice_here).result() == before
