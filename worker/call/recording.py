"""A call's recording and its event dump: the two files a call may leave under RECORDER_PATH.

The recorder (`option.recorder`, or `ringing.recorder` on an inbound call) takes the caller's audio and the
server-side track's frames; the dump (`dump=true` on `/call`) takes every command and event in order. Both
count against the recordings' disk quota: a recording refused for quota is an error event (code 507) and the
call goes on unrecorded; a dump that runs out of quota stops for good and says so once. A client that is not
trusted may only write under RECORDER_PATH (docs/security.md): a path outside it refuses the command.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import BadCommand
from worker.call.dump import EventDump
from worker.call.services import CallHooks, MediaServices
from worker.media.recorder import CallRecorder
from worker.paths import PathRefused, file_stem, inside, recorder_file

# The dump is written every this many ticks (200 ms): one disk write per call per flush, not per line.
DUMP_EVERY_TICKS = 10


class Recording:
    """The recorder and the event dump of one call. `hooks` reports errors to the call and says whether it is
    ending; `services` gives the settings, the disk thread and the quota. `dump` turns the event dump on."""

    def __init__(self, hooks: CallHooks, services: MediaServices, dump: bool) -> None:
        self.hooks = hooks
        self.services = services
        self.recorder: CallRecorder | None = None
        settings = services.settings
        self.dump = (
            EventDump(
                Path(settings.recorder_path) / f"{file_stem(hooks.call_id)}.events.jsonl",
                services.io,
                services.recorder_quota,
                self._dump_stopped,
            )
            if dump
            else None
        )

    # --- the recorder ------------------------------------------------------------------------------------

    async def path(self, recorder_option: Any, where: str) -> Path:
        """Where the option's recording goes; BadCommand naming `<where>.recorderFile` if the client may
        not write there (docs/security.md)."""
        settings = self.services.settings
        root, trusted = settings.recorder_path, settings.trust_clients
        try:
            path = recorder_file(root, recorder_option.recorder_file, self.hooks.call_id, trusted)
            if not trusted and not await asyncio.get_running_loop().run_in_executor(
                self.services.io, inside, path, root
            ):
                raise PathRefused("leads outside RECORDER_PATH (through a symbolic link)")
        except PathRefused as exc:
            raise BadCommand(f"{where}.recorderFile: {exc}") from None
        return path

    async def start(self, path: Path) -> None:
        """Open the recording at `path` (from `path`): refused with an error event when the quota is used
        up or the file cannot be opened; the call goes on either way."""
        quota = self.services.recorder_quota
        if not await quota.admit():
            self.hooks.error(
                "recorder",
                "recording refused: the recordings' disk quota (RECORDER_QUOTA_MB) is used up; "
                "the call goes on unrecorded",
                507,
            )
            return
        if self.hooks.ending() or self.recorder is not None:
            return
        recorder = CallRecorder(str(path), self.services.io, quota.charge)
        try:
            await recorder.open()
            self.recorder = recorder
        except OSError as exc:
            self.hooks.error("recorder", f"cannot record to {self.shown(path)}: {exc.strerror or exc}", 500)

    def shown(self, path: Path) -> str:
        """A recording's path as the client may see it: relative to RECORDER_PATH when under it."""
        try:
            return str(path.relative_to(self.services.settings.recorder_path))
        except ValueError:
            return str(path)

    def caller(self, pcm: np.ndarray) -> None:
        """A frame of the caller's audio as heard (before any mute)."""
        if self.recorder is not None:
            self.recorder.caller(pcm.tobytes())

    def tick(self, frame: np.ndarray | None, ticks: int) -> None:
        """The server-side frame of this tick (None: nothing played), the media clock's count."""
        if self.recorder is not None:
            self.recorder.tick(frame.tobytes() if frame is not None else None)
        if self.dump is not None and ticks % DUMP_EVERY_TICKS == 0:
            self.dump.flush()

    # --- the event dump ----------------------------------------------------------------------------------

    @property
    def dumping(self) -> bool:
        return self.dump is not None

    def note(self, kind: str, content: dict[str, Any]) -> None:
        """A line of the dump (`command` or `event`), when the call has one."""
        if self.dump is not None:
            self.dump.add(kind, content)

    def _dump_stopped(self) -> None:
        self.hooks.error(
            "dump",
            "the event dump stopped: the recordings' disk quota (RECORDER_QUOTA_MB) is used up",
            507,
        )

    # --- the end -----------------------------------------------------------------------------------------

    async def close_recorder(self) -> None:
        if self.recorder is not None:
            await self.recorder.close()

    async def close_dump(self) -> None:
        if self.dump is not None:
            await self.dump.close()
