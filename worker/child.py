"""Entry point of one media process (started by the supervisor)."""

from __future__ import annotations

import logging
import os
import signal
import sys


def _leave(_signum: int, _frame: object) -> None:
    # Stopped before its event loop runs: nothing is registered yet, nothing to hang up.
    os._exit(0)


def main() -> None:
    # Ctrl-C while the modules still load (a second or more): leave quietly, not with a KeyboardInterrupt
    # traceback from somewhere in an import. The event loop installs its own handlers once it runs.
    signal.signal(signal.SIGINT, _leave)
    import asyncio

    import uvloop

    from common import logs
    from common.config import Settings
    from worker.process import MediaProcess

    settings = Settings.from_env()
    logs.setup(settings.log_level, "media")
    # The supervisor names each child, so it can clear that name's heartbeat the moment the child dies, and
    # says when it started it (the startup time is logged from then).
    proc_id = sys.argv[1] if len(sys.argv) > 1 else None
    spawned_at = float(sys.argv[2]) if len(sys.argv) > 2 else None
    process = MediaProcess(settings, proc_id, spawned_at)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(process.run())
    # Everything that must finish has (calls hung up, files written, heartbeat removed). Neither the loop's
    # teardown (it waits for every task still there) nor Python's exit (it joins every executor thread, and
    # one still inside a model, a voice loading when Ctrl-C came, cannot be interrupted) is needed: they made
    # a stop take seconds, until the supervisor killed the process.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
