"""The owner of a call's or a process's tasks (issue 19; pipecat's TaskManager, a TaskGroup that lets a
task fail without taking its siblings down).

A bare `create_task` keeps no reference (the loop holds only a weak one, so the task can vanish mid-run)
and its exception is seen, if at all, as "Task exception was never retrieved" when it is collected, without
the name of the call or the process. Here every task has a name, stays referenced until it ends, has its
failure logged by its owner's logger, and is cancelled on the owner's teardown, the last spawned first.
`close_each` is the rest of a teardown: each resource closed on its own, each failure reported.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class TaskSet:
    """Named tasks owned by one call or process: referenced while they run, failures logged, cancelled
    together. `prefix` goes before every name (`call:{id}:`, `{proc_id}:`)."""

    __slots__ = ("_log", "_prefix", "_tasks")

    def __init__(self, logger: logging.Logger, prefix: str = "") -> None:
        self._log = logger
        self._prefix = prefix
        # A dict for its order: teardown cancels the newest first.
        self._tasks: dict[asyncio.Task[Any], None] = {}

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run `coro` as a task named `{prefix}{name}`, in a copy of the current context (contextvars)."""
        task = asyncio.get_running_loop().create_task(coro, name=self._prefix + name)
        self._tasks[task] = None
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.warning("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        """The tasks still running, oldest first (a copy: iterating while they end is safe)."""
        return iter(list(self._tasks))

    def __contains__(self, task: object) -> bool:
        return task in self._tasks

    def cancel(self) -> list[asyncio.Task[Any]]:
        """Cancel every task, newest first, except the calling one (it is ending them); those cancelled."""
        current = asyncio.current_task()
        cancelled = [t for t in reversed(self._tasks) if t is not current]
        for task in cancelled:
            task.cancel()
        return cancelled

    async def cancel_all(self, grace: float | None) -> list[str]:
        """Cancel every task and wait up to `grace` seconds (None: as long as they take) for them to end;
        the names of those still running.

        Seen on a busy machine when a stop came during the warm-up: a cancelled task (the reaper's, the
        metrics publisher's) that never ran again. Nothing was left for it to do, and waiting on it held the
        exit until the supervisor killed the process: hence the grace."""
        cancelled = self.cancel()
        if not cancelled:
            return []
        _ended, running = await asyncio.wait(cancelled, timeout=grace)
        return sorted(t.get_name() for t in running)


async def close_each(
    logger: logging.Logger, closers: Iterable[tuple[str, Callable[[], object]]]
) -> list[str]:
    """Run each `(name, closer)` in order (a closer may return an awaitable, which is awaited), each on its
    own: a closer that fails is logged with its name and the next one still runs. The names that failed.

    One `try` around a teardown let the first failing close (a bot link's socket) skip the rest (the
    recording, the event dump), and named only the first."""
    failed: list[str] = []
    for name, closer in closers:
        try:
            result = closer()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            failed.append(name)
            logger.warning("closing %s failed: %r", name, exc, exc_info=exc)
    return failed
