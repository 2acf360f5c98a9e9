"""Entry point of one media process (started by the supervisor)."""

from __future__ import annotations

import sys

import uvloop

from common import logs
from common.config import Settings
from worker.process import MediaProcess


def main() -> None:
    settings = Settings.from_env()
    logs.setup(settings.log_level, "media")
    # The supervisor names each child, so it can clear that name's heartbeat the moment the child dies, and
    # says when it started it (the startup time is logged from then).
    proc_id = sys.argv[1] if len(sys.argv) > 1 else None
    spawned_at = float(sys.argv[2]) if len(sys.argv) > 2 else None
    process = MediaProcess(settings, proc_id, spawned_at)
    uvloop.run(process.run())


if __name__ == "__main__":
    main()
