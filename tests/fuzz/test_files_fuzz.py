"""Fuzzing what a client's strings may make the server read and write (worker/paths.py, docs/security.md).

The pure properties run on any text: a call id always becomes one safe file name, two ids never share one,
a recorder file is refused or lands under RECORDER_PATH, a local play path opens nothing outside the roots.
The e2e test draws call ids, recorder files and play paths built to climb out (`..`, absolute paths, links,
backslashes, `{id}`) and sends them to the running stack: a directory outside every root stays empty, a
WAV there never plays, and every refused play is the one "no such file" error.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo
from tests.fuzz.conftest import LONG, scale
from tests.fuzz.stack_probe import Loop, Snapshot, log_tail
from tests.fuzz.test_protocol_fuzz import ANY_CHAR
from worker.paths import MAX_STEM, MediaNotFound, MediaRoots, PathRefused, file_stem, recorder_file

NOT_FOUND = "play.url: no such file under MEDIA_PATH or the media cache"
ID_TEXT = st.text(ANY_CHAR, min_size=1, max_size=128)
# What the frontend takes as an id (frontend/calls.py): printable, no spaces.
ACCEPTED_ID = st.text(max_size=60).filter(lambda s: s.isprintable() and not any(c.isspace() for c in s))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# --- pure properties -----------------------------------------------------------------------------------


@settings(max_examples=scale(500))
@given(ID_TEXT)
def test_a_call_id_is_one_safe_file_name(call_id: str) -> None:
    stem = file_stem(call_id)
    assert stem and "/" not in stem and "\\" not in stem and "\0" not in stem
    assert not stem.startswith(".") and len(stem) <= MAX_STEM
    assert len(f"{stem}.events.jsonl".encode()) <= 255
    assert stem.isascii() and stem.isprintable()


@settings(max_examples=scale(500))
@given(ID_TEXT, ID_TEXT)
def test_two_call_ids_never_share_a_file_name(a: str, b: str) -> None:
    assume(a != b)
    assert file_stem(a) != file_stem(b)


FRAGMENTS = st.sampled_from(
    ["..", ".", "", "/", "\\", "{id}", "x", "~", "/etc", "sub", "a..b", "%2e%2e", "\0"]
)
NAMES = st.one_of(
    st.lists(FRAGMENTS, max_size=6).map("/".join),
    st.lists(FRAGMENTS, max_size=6).map("".join),
    st.text(ANY_CHAR, max_size=30),
)


@settings(max_examples=scale(500))
@given(NAMES, st.one_of(ID_TEXT, st.lists(FRAGMENTS, min_size=1, max_size=4).map("/".join)))
def test_a_recorder_file_is_refused_or_under_the_root(name: str, call_id: str) -> None:
    root = "/srv/rec"
    try:
        path = recorder_file(root, name, call_id, trusted=False)
    except PathRefused:
        return
    assert _under(os.path.normpath(path), root) and os.path.normpath(path) != root, (name, path)
    assert path.suffix.lower() == ".wav"


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    """media/ (a root, with a file, a link out, a link in), cache/ (a root), outside/ (a secret)."""
    base = Path(tempfile.mkdtemp(prefix="pbx-fuzz-tree-"))
    for d in ("media/sub", "cache", "outside"):
        (base / d).mkdir(parents=True)
    (base / "media" / "sub" / "ok.wav").write_bytes(b"ok")
    (base / "outside" / "secret.wav").write_bytes(b"secret")
    (base / "media" / "out").symlink_to(base / "outside", target_is_directory=True)
    (base / "media" / "in.wav").symlink_to(base / "media" / "sub" / "ok.wav")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@settings(max_examples=scale(500))
@given(data=st.data())
def test_a_play_path_opens_nothing_outside_the_roots(tree: Path, data: st.DataObject) -> None:
    parts = st.sampled_from(
        ["..", ".", "", "sub", "ok.wav", "out", "secret.wav", "outside", "in.wav", "cache"]
    )
    location = data.draw(
        st.one_of(
            st.lists(parts, max_size=6).map("/".join),
            st.lists(parts, max_size=6).map(lambda p: str(tree) + "/" + "/".join(p)),
            st.text(ANY_CHAR, max_size=20),
        )
    )
    roots = MediaRoots([str(tree / "media")], str(tree / "cache"), trusted=False)
    try:
        f = roots.open(location)
    except MediaNotFound:
        return
    with f:
        opened = os.path.realpath(f"/proc/self/fd/{f.fileno()}")
        assert _under(opened, str(tree / "media")) or _under(opened, str(tree / "cache")), (location, opened)
        assert f.read() == b"ok"


# --- against the running stack ------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(0 if LONG else 300)
def test_hostile_names_over_the_stack(fuzz_stack: StackInfo, fuzz_loop: Loop) -> None:
    before = Snapshot.take(fuzz_stack)
    outside = Path(tempfile.mkdtemp(prefix="pbx-fuzz-outside-"))
    secret = outside / "secret.wav"
    with wave.open(str(secret), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(8000) / 4) * 8000).astype("<i2").tobytes())
    rec = fuzz_stack.recorder_path
    media_root = rec.parent.parent  # the stack's MEDIA_PATH (tests/e2e/conftest.py)
    climb = os.path.relpath(outside, rec)  # from RECORDER_PATH to the outside directory
    fragments = st.sampled_from(
        ["..", ".", "/", "\\", "{id}", "x", "sub", str(outside), climb, os.path.relpath(outside, media_root)]
    )
    hostile = st.lists(fragments, min_size=1, max_size=5).map("/".join)
    # The outside directory seen from each root, and through a link inside the media root.
    link = media_root / f"fuzz-out-{uuid.uuid4()}"
    link.symlink_to(outside, target_is_directory=True)
    plays = st.one_of(
        hostile.map(lambda p: p + "/secret.wav"),
        st.sampled_from([str(secret), f"{link.name}/secret.wav", str(link / "secret.wav"), "/etc/passwd"]),
    )

    async def one(call_id: str, recorder_name: str, location: str) -> None:
        c = await CallClient.open(fuzz_stack.ws, call_id=call_id)
        try:
            await c.send({"command": "invite", "option": {"recorder": {"recorderFile": recorder_name}}})
            mark = len(c.events)
            await c.send({"command": "history", "speaker": "fuzz", "text": "set up?"})
            await c.event("addHistory", after=mark)
            if "answer" not in c.names():
                refused = [e for e in c.events if e["event"] == "error"]
                assert refused and refused[0]["error"].startswith("option.recorder.recorderFile: "), c.events
                await c.invite()
            mark = len(c.events)
            await c.send({"command": "play", "url": location})
            err = await c.event("error", after=mark)
            assert err["error"] == NOT_FOUND, (location, err)
            await c.event("trackEnd", after=mark, trackId="server-side-track")
            assert c.frames == [], f"{location} played"
            await c.send({"command": "hangup"})
            await c.wait_closed(10)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{log_tail(call_id)}") from None
        finally:
            await c.close()

    try:

        @settings(max_examples=scale(25))
        @given(st.one_of(hostile, ACCEPTED_ID), hostile, plays)
        def run(call_id: str, recorder_name: str, location: str) -> None:
            call_id = f"{call_id[:90]}{uuid.uuid4()}"  # a live duplicate would be refused
            note((call_id, recorder_name, location))
            fuzz_loop.run(one(call_id, recorder_name, location))
            assert sorted(p.name for p in outside.iterdir()) == ["secret.wav"], (
                "a file appeared outside the roots"
            )

        run()
    finally:
        link.unlink()
        shutil.rmtree(outside, ignore_errors=True)
    before.check_after(fuzz_stack)
