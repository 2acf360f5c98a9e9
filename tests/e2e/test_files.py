"""What a client can make the server read and write (docs/security.md), attacked over the real stack:
recorder files and call ids stay under RECORDER_PATH, `play` reads only under MEDIA_PATH and the media
cache (and cannot tell a forbidden file from a missing one), the recorder quota refuses new recordings while
the call goes on, the media cache stays within its bound, and TRUST_CLIENTS lifts the path rules."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from tests.audio_util import peak_freq, tone
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.test_playback import pcm, write_wav
from tests.local_http import serve_app

pytestmark = pytest.mark.e2e

NOT_FOUND = "play.url: no such file under MEDIA_PATH or the media cache"


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside every root of the test stacks (they share the pytest run's temporary dir)."""
    path = Path(tempfile.mkdtemp(prefix="pbx-outside-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.05)


async def refused_then_plain_invite(c: CallClient, option: dict[str, Any]) -> dict[str, Any]:
    """Send an invite that must be refused; its error. The call is not set up by it, and a plain invite
    afterwards is answered."""
    await c.send({"command": "invite", "option": option})
    err = await c.event("error")
    await c.send({"command": "history", "speaker": "u", "text": "after"})
    await c.event("addHistory")
    assert "answer" not in c.names(), c.events
    await c.invite()
    return err


# --- recorder files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "parent", "symlink"])
async def test_recorder_file_outside_recorder_path_refuses_the_invite(
    stack: StackInfo, call_id: str, outside: Path, how: str
) -> None:
    stack.recorder_path.mkdir(parents=True, exist_ok=True)
    if how == "absolute":
        name, lands = str(outside / "evil"), outside / "evil.wav"
    elif how == "parent":
        escaped = f"escaped-{uuid.uuid4()}"
        name, lands = f"sub/../../{escaped}", stack.recorder_path.parent / f"{escaped}.wav"
    else:  # a link inside the root that leads out of it
        link = stack.recorder_path / f"link-{uuid.uuid4()}"
        link.symlink_to(outside, target_is_directory=True)
        name, lands = f"{link.name}/evil", outside / "evil.wav"
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        err = await refused_then_plain_invite(c, {"recorder": {"recorderFile": name}})
        assert err["sender"] == "command" and err["code"] == 400 and err["trackId"] == call_id
        assert err["error"].startswith("option.recorder.recorderFile: "), err
        assert str(stack.recorder_path) not in err["error"]
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()
    assert not lands.exists()
    assert not (stack.recorder_path / f"{call_id}.wav").exists(), "the refused invite recorded nothing"


def escaped(rec: Path, call_id: str, absolute: str) -> list[str]:
    """The files the raw id would have named, if they exist: `{rec}/{id}` normalized (out of the root for an
    id climbing out with `../`) and `absolute` (where `Path(rec) / id` leads for an absolute id)."""
    found = []
    for suffix in (".wav", ".events.jsonl"):
        for path in (os.path.normpath(f"{rec}/{call_id}{suffix}"), f"{absolute}{suffix}"):
            if os.path.exists(path):
                found.append(path)
    return found


@pytest.mark.parametrize(
    "hostile,stem",
    [
        ("../../t.{u}", "%2E.%2F..%2Ft.{u}"),
        ("..\\..\\t.{u}", "%2E.%5C..%5Ct.{u}"),
        ("/tmp/t.{u}", "%2Ftmp%2Ft.{u}"),
    ],
)
async def test_call_ids_name_files_under_recorder_path_only(
    stack: StackInfo, hostile: str, stem: str
) -> None:
    u = uuid.uuid4()
    call_id, stem = hostile.format(u=u), stem.format(u=u)
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(recorder={})
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()
    rec = stack.recorder_path
    assert (rec / f"{stem}.wav").stat().st_size >= 44  # a WAV header at least: the call was short
    assert (rec / f"{stem}.events.jsonl").stat().st_size > 0
    assert escaped(rec, call_id, f"/tmp/t.{u}") == []


async def test_recorder_file_with_the_id_of_a_hostile_call(stack: StackInfo) -> None:
    u = uuid.uuid4()
    call_id = f"../x.{u}"
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite(recorder={"recorderFile": "by-id/{id}-rec"})
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()
    assert (stack.recorder_path / "by-id" / f"%2E.%2Fx.{u}-rec.wav").exists()
    assert not (stack.recorder_path / f"x.{u}-rec.wav").exists()


# --- play ----------------------------------------------------------------------------------------------


async def play_error(c: CallClient, url: str) -> dict[str, Any]:
    mark = len(c.events)
    await c.send({"command": "play", "url": url})
    err = await c.event("error", after=mark)
    await c.event("trackEnd", after=mark, trackId="server-side-track")
    return err


async def test_play_outside_the_media_roots_is_a_missing_file(
    stack: StackInfo, call_id: str, tmp_path: Path, outside: Path
) -> None:
    """`/etc/passwd`, a real WAV outside the roots, a link inside the roots that leads to it, a relative
    path that climbs out, and a file that does not exist: one and the same error, naming the field."""
    real = write_wav(outside / "secret.wav", tone(440, 0.5))
    link = tmp_path / "link.wav"
    link.symlink_to(real)
    tries = [
        "/etc/passwd",
        str(real),
        str(link),
        "../../../../../../../etc/passwd",
        str(tmp_path / "missing.wav"),
    ]
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        errors = [await play_error(c, url) for url in tries]
        await asyncio.sleep(0.1)
        assert c.frames == [], "nothing outside the roots played"
    finally:
        await c.close()
    for url, err in zip(tries, errors, strict=True):
        assert err["sender"] == f"filetrack: {url}" and err["trackId"] == "server-side-track"
        assert (err["error"], err["code"]) == (NOT_FOUND, 404), err


async def test_play_a_relative_path_under_the_first_media_root(
    stack: StackInfo, call_id: str, tmp_path: Path
) -> None:
    write_wav(tmp_path / "rel.wav", tone(700, 0.6))
    media_root = stack.recorder_path.parent.parent  # the stacks' MEDIA_PATH (tests/e2e/conftest.py)
    relative = str((tmp_path / "rel.wav").relative_to(media_root))
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        await c.send({"command": "play", "url": relative})
        await c.event("trackEnd", trackId="server-side-track")
        await asyncio.sleep(0.05)
        assert len(c.frames) == 30 and not [e for e in c.events if e["event"] == "error"]
        assert abs(peak_freq(pcm(c.frames)) - 700) < 15
    finally:
        await c.close()


async def test_play_a_hls_playlist_reads_nothing_it_names(
    stack: StackInfo, call_id: str, tmp_path: Path
) -> None:
    """A playlist under the roots (a downloaded URL could be one) must not make FFmpeg open what it names."""
    write_wav(tmp_path / "named.wav", tone(440, 0.5))
    playlist = tmp_path / "list.m3u8"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nnamed.wav\n#EXT-X-ENDLIST\n")
    concat = tmp_path / "list.ffconcat"
    concat.write_text("ffconcat version 1.0\nfile named.wav\n")
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        for url in (str(playlist), str(concat)):
            err = await play_error(c, url)
            assert err["error"].startswith("play.url: cannot open"), err
        await asyncio.sleep(0.1)
        assert c.frames == []
    finally:
        await c.close()


# --- the recorder quota ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """A stack whose RECORDER_PATH holds more than its 1 MiB quota before it starts."""
    root = tmp_path_factory.mktemp("quota")
    (root / "rec").mkdir()
    (root / "rec" / "old.wav").write_bytes(bytes(2 * 1024 * 1024))
    with running_stack(root, 1, 1, RECORDER_QUOTA_MB="1") as info:
        yield info


async def test_recording_past_the_quota_is_refused_and_the_call_goes_on(
    full_recorder: StackInfo, call_id: str, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "q.wav", tone(440, 0.4))
    c = await CallClient.open(full_recorder.ws, call_id=call_id)
    try:
        await c.invite(recorder={})
        err = await c.event("error", sender="recorder")
        assert err["code"] == 507 and "RECORDER_QUOTA_MB" in err["error"] and err["trackId"] == call_id
        dump = await c.event("error", sender="dump")  # the dump lives there too: it stops
        assert dump["code"] == 507
        await c.send({"command": "play", "url": str(wav)})
        await c.event("trackEnd", trackId="server-side-track")
        await c.send({"command": "history", "speaker": "u", "text": "still here"})
        await c.event("addHistory")
        assert len(c.frames) == 20
        await c.send({"command": "hangup"})
        await c.event("hangup")
        await c.wait_closed()
    finally:
        await c.close()
    assert sorted(p.name for p in full_recorder.recorder_path.iterdir()) == ["old.wav"]


# --- trusted clients and a small media cache --------------------------------------------------------------


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with running_stack(
        tmp_path_factory.mktemp("trusted"), 1, 1, TRUST_CLIENTS="1", MEDIA_CACHE_MAX_MB="1"
    ) as info:
        yield info


async def test_trusted_clients_record_and_play_anywhere(
    trusted: StackInfo, call_id: str, outside: Path
) -> None:
    wav = write_wav(outside / "anywhere.wav", tone(550, 0.4))
    c = await CallClient.open(trusted.ws, call_id=call_id)
    try:
        await c.invite(recorder={"recorderFile": str(outside / "call")})
        await c.send({"command": "play", "url": str(wav)})
        await c.event("trackEnd", trackId="server-side-track")
        await asyncio.sleep(0.05)
        assert abs(peak_freq(pcm(c.frames)) - 550) < 15
        await c.send({"command": "hangup"})
        await c.wait_closed()
    finally:
        await c.close()
    assert (outside / "call.wav").stat().st_size > 44


def loud_wav(path: Path, seconds: float) -> bytes:
    """A WAV of 8 channels at 48 kHz: 768 kB a second, so that a few short plays fill a 1 MiB cache."""
    import wave

    samples = (np.tile(tone(440, seconds * 3).reshape(-1, 1), (1, 8))).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(8)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(samples.tobytes())
    return path.read_bytes()


async def test_media_cache_evicts_least_recently_used_and_refuses_what_cannot_fit(
    trusted: StackInfo, call_id: str, tmp_path: Path
) -> None:
    small = loud_wav(tmp_path / "small.wav", 0.4)  # ~300 kB
    big = loud_wav(tmp_path / "big.wav", 1.5)  # ~1.1 MB: more than the whole cache

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=big if request.match_info["name"] == "big" else small)

    app = web.Application()
    app.router.add_get("/{name}.wav", serve)
    runner, port = await serve_app(app)
    urls = [f"http://127.0.0.1:{port}/{n}.wav" for n in ("a", "b", "c", "d", "e")]
    cached = {u: trusted.cache_path / f"{hashlib.sha256(u.encode()).hexdigest()}.wav" for u in urls}
    c = await CallClient.open(trusted.ws, call_id=call_id)
    try:
        await c.invite()
        for n, url in enumerate(urls):
            mark = len(c.events)
            await c.send({"command": "play", "url": url})
            await c.event("trackEnd", after=mark, trackId="server-side-track")
            assert not [e for e in c.events[mark:] if e["event"] == "error"]
            if n == 2:  # the first one used again: now more recently used than b and c, it outlives them
                mark = len(c.events)
                await c.send({"command": "play", "url": urls[0]})
                await c.event("trackEnd", after=mark, trackId="server-side-track")

        def total() -> int:
            return sum(p.stat().st_size for p in trusted.cache_path.iterdir())

        await until("the cache back within its bound", lambda: total() <= 1024 * 1024)
        kept = {u for u in urls if cached[u].exists()}
        assert urls[-1] in kept and urls[0] in kept and urls[1] not in kept, kept
        big_url = f"http://127.0.0.1:{port}/big.wav"
        err = await play_error(c, big_url)
        assert (
            err["error"]
            == f"play.url: {big_url} is larger than the media cache (1048576 bytes, MEDIA_CACHE_MAX_MB)"
        )
        assert not (trusted.cache_path / f"{hashlib.sha256(big_url.encode()).hexdigest()}.wav").exists()
    finally:
        await c.close()
        await runner.cleanup()
