"""Entry point of one media process (started by the supervisor)."""

from __future__ import annotations

import os

import uvloop

from common import logs
from common.config import Settings
from worker.process import MediaProcess


def main() -> None:
    settings = Settings.from_env()
    logs.setup(settings.log_level, "media")
    process = MediaProcess(settings, os.environ.get("PBX_PROC_ID") or None)
    uvloop.run(process.run())


if __name__ == "__main__":
    main()
