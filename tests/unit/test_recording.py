"""A call's recording and event dump (worker/call/recording.py), built alone from fakes: the disk thread runs
each write inline, the quota is a stand-in. No processes, no sockets, no sleeps."""

from __future__ import annotations

import json
import os
import wave
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from common.config import Settings
from common.errors import BadCommand
from tests.unit.callfakes import FakeCall, fake_services
from worker.call.recording import DUMP_EVERY_TICKS, Recording


class Inline(Executor):
    """The disk thread, run in the caller's stack: each write is done when it is submitted."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


@dataclass
class Quota:
    """The recordings' disk quota: admits while `room`, and counts what is written."""

    room: bool = True
    charged: int = 0

    async def admit(self) -> bool:
        return self.room

    def exhausted(self) -> bool:
        return not self.room

    def charge(self, size: int) -> None:
        self.charged += size


def recording(
    root: Path, call: FakeCall, quota: Quota, dump: bool = False, trusted: bool = False
) -> Recording:
    settings = Settings(recorder_path=str(root), trust_clients=trusted)
    return Recording(call.hooks(), fake_services(settings, io=Inline(), recorder_quota=quota), dump)


def option(name: str | None) -> Any:
    return SimpleNamespace(recorder_file=name)


async def test_a_recording_path_outside_the_root_is_refused_naming_the_field(tmp_path: Path) -> None:
    part = recording(tmp_path / "rec", FakeCall(), Quota())
    with pytest.raises(BadCommand, match=r"^option\.recorder\.recorderFile: .*absolute path"):
        await part.path(option("/etc/passwd"), "option.recorder")
    with pytest.raises(BadCommand, match=r"^recorder\.recorderFile: .*'\.\.'"):
        await part.path(option("../x.wav"), "recorder")
    # A link under the root that leads out of it is caught on the real path.
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "out").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(BadCommand, match=r"^option\.recorder\.recorderFile: .*symbolic link"):
        await part.path(option("out/x.wav"), "option.recorder")
    assert await part.path(option("day/{id}"), "option.recorder") == tmp_path / "rec" / "day" / "c1.wav"
    assert part.shown(tmp_path / "rec" / "day" / "c1.wav") == "day/c1.wav"
    assert part.shown(Path("/elsewhere/x.wav")) == "/elsewhere/x.wav"


async def test_a_trusted_client_may_record_anywhere(tmp_path: Path) -> None:
    part = recording(tmp_path / "rec", FakeCall(), Quota(), trusted=True)
    assert await part.path(option(str(tmp_path / "x")), "option.recorder") == tmp_path / "x.wav"


async def test_quota_refusal_is_a_507_error_and_the_call_goes_on(tmp_path: Path) -> None:
    call = FakeCall()
    part = recording(tmp_path, call, Quota(room=False))
    await part.start(await part.path(option(None), "option.recorder"))
    assert part.recorder is None
    assert [(sender, code) for sender, _, code in call.errors] == [("recorder", 507)]
    assert "RECORDER_QUOTA_MB" in call.errors[0][1]
    part.caller(np.ones(320, dtype=np.int16))
    part.tick(np.ones(320, dtype=np.int16), 1)
    await part.close_recorder()
    assert call.hangups == [] and not os.listdir(tmp_path)


async def test_caller_audio_and_server_frames_are_the_recordings_two_channels(tmp_path: Path) -> None:
    call, quota = FakeCall(), Quota()
    part = recording(tmp_path, call, quota)
    await part.start(await part.path(option(None), "option.recorder"))
    for _ in range(DUMP_EVERY_TICKS):
        part.caller(np.full(320, 100, dtype=np.int16))
        part.tick(np.full(320, -200, dtype=np.int16), 1)
    part.tick(None, 2)  # nothing played: silence on the server's channel
    await part.close_recorder()
    with wave.open(str(tmp_path / "c1.wav")) as wav:
        assert wav.getnchannels() == 2 and wav.getnframes() == 11 * 320
        both = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert (both[:3200] == [100, -200]).all() and (both[3200:] == 0).all()
    assert call.errors == [] and quota.charged > 0


async def test_the_dump_keeps_commands_and_events_in_order_and_stops_cleanly(tmp_path: Path) -> None:
    call, quota = FakeCall(), Quota()
    part = recording(tmp_path, call, quota, dump=True)
    assert part.dumping
    part.note("command", {"command": "invite"})
    part.note("event", {"event": "answer"})
    part.tick(None, 1)  # not a flush tick: nothing written yet
    assert not (tmp_path / "c1.events.jsonl").exists()
    part.tick(None, DUMP_EVERY_TICKS)
    part.note("command", {"command": "hangup"})
    part.note("event", {"event": "hangup"})
    await part.close_dump()
    lines = [json.loads(line) for line in (tmp_path / "c1.events.jsonl").read_text().splitlines()]
    assert [(line["type"], json.loads(line["content"])) for line in lines] == [
        ("command", {"command": "invite"}),
        ("event", {"event": "answer"}),
        ("command", {"command": "hangup"}),
        ("event", {"event": "hangup"}),
    ]
    assert call.errors == [] and quota.charged == (tmp_path / "c1.events.jsonl").stat().st_size


async def test_the_dump_stops_once_when_the_quota_is_used_up(tmp_path: Path) -> None:
    call, quota = FakeCall(), Quota()
    part = recording(tmp_path, call, quota, dump=True)
    part.note("event", {"event": "answer"})
    part.tick(None, 0)
    quota.room = False
    part.note("event", {"event": "dtmf"})
    part.tick(None, DUMP_EVERY_TICKS)
    part.note("event", {"event": "hangup"})
    part.tick(None, 2 * DUMP_EVERY_TICKS)
    await part.close_dump()
    assert [(sender, code) for sender, _, code in call.errors] == [("dump", 507)]
    lines = (tmp_path / "c1.events.jsonl").read_text().splitlines()
    assert [json.loads(json.loads(line)["content"])["event"] for line in lines] == ["answer"]


async def test_without_a_dump_or_a_recorder_nothing_is_written(tmp_path: Path) -> None:
    call = FakeCall()
    part = recording(tmp_path, call, Quota())
    assert not part.dumping
    part.note("event", {"event": "answer"})
    part.caller(np.ones(320, dtype=np.int16))
    part.tick(None, DUMP_EVERY_TICKS)
    await part.close_recorder()
    await part.close_dump()
    assert not os.listdir(tmp_path) and call.errors == []
