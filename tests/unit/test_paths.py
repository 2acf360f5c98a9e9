"""worker/paths.py: call ids as file names, recorder files under RECORDER_PATH, local media in the roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.paths import MAX_STEM, MediaNotFound, MediaRoots, PathRefused, file_stem, inside, recorder_file


@pytest.mark.parametrize(
    "call_id,stem",
    [
        ("s.6f1c2b1e-9d4e-4c56-a1c2-0a9b3c4d5e6f", "s.6f1c2b1e-9d4e-4c56-a1c2-0a9b3c4d5e6f"),
        ("abc@10.0.0.5-ft-tt", "abc@10.0.0.5-ft-tt"),  # a SIP dialog id
        ("..", "%2E."),
        (".", "%2E"),
        (".hidden", "%2Ehidden"),
        ("../../etc/x", "%2E.%2F..%2Fetc%2Fx"),
        ("a\\b", "a%5Cb"),
        ("100%", "100%25"),
        ("a b", "a%20b"),
        ("通话", "%E9%80%9A%E8%AF%9D"),
        ("", "%"),
    ],
)
def test_file_stem(call_id: str, stem: str) -> None:
    assert file_stem(call_id) == stem


def test_file_stem_of_a_long_id_is_bounded_and_distinct() -> None:
    a, b = "通" * 128, "通" * 127 + "话"
    assert len(file_stem(a)) <= MAX_STEM and len(file_stem(a).encode()) < 255 - len(".events.jsonl")
    assert file_stem(a) != file_stem(b)
    assert "~" in file_stem(a) and "%" not in file_stem(a)[-17:]
    assert file_stem("x" * 128) == "x" * 128


def test_recorder_file_names_and_relative_paths(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert recorder_file(root, None, "c1", False) == tmp_path / "c1.wav"
    assert recorder_file(root, "", "c1", False) == tmp_path / "c1.wav"
    assert recorder_file(root, "x", "c1", False) == tmp_path / "x.wav"
    assert recorder_file(root, "day/{id}-in.WAV", "c1", False) == tmp_path / "day" / "c1-in.WAV"
    assert recorder_file(root, "{id}", "../up", False) == tmp_path / "%2E.%2Fup.wav"
    assert recorder_file(root, "a..b", "c1", False) == tmp_path / "a..b.wav"  # `..` inside a name is a name


@pytest.mark.parametrize(
    "name,why",
    [
        ("/etc/cron.d/x", "absolute"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/..", "'..'"),
        ("x\0y", "NUL"),
        (".", "names no file"),
    ],
)
def test_recorder_file_refused(tmp_path: Path, name: str, why: str) -> None:
    with pytest.raises(PathRefused, match=why) as caught:
        recorder_file(str(tmp_path), name, "c1", False)
    assert str(tmp_path) not in str(caught.value)


def test_recorder_file_trusted(tmp_path: Path) -> None:
    assert recorder_file(str(tmp_path / "rec"), "/var/x", "c1", True) == Path("/var/x.wav")
    assert recorder_file(str(tmp_path / "rec"), "../y", "c1", True) == tmp_path / "rec" / ".." / "y.wav"


def test_inside_follows_links(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    (root / "day").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path, target_is_directory=True)
    assert inside(root / "day" / "new.wav", str(root))
    assert inside(root / "not-yet" / "new.wav", str(root))
    assert not inside(root / "out" / "new.wav", str(root))
    (root / "trap.wav").symlink_to(tmp_path / "elsewhere.wav")
    assert not inside(root / "trap.wav", str(root))


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    media, cache, outside = tmp_path / "media", tmp_path / "cache", tmp_path / "outside"
    for d in (media / "sub", cache, outside):
        d.mkdir(parents=True)
    (media / "sub" / "a.wav").write_bytes(b"A")
    (cache / "c.wav").write_bytes(b"C")
    (outside / "secret.wav").write_bytes(b"S")
    (media / "link.wav").symlink_to(outside / "secret.wav")
    (media / "inner.wav").symlink_to(media / "sub" / "a.wav")
    os.mkfifo(media / "fifo.wav")
    return media, cache, outside, tmp_path


def test_media_roots_open(roots: tuple[Path, Path, Path, Path]) -> None:
    media, cache, _outside, _ = roots
    mr = MediaRoots([str(media)], str(cache), trusted=False)
    for location, content in [
        ("sub/a.wav", b"A"),
        (str(media / "sub" / "a.wav"), b"A"),
        (str(cache / "c.wav"), b"C"),
        ("inner.wav", b"A"),  # a link that stays inside
        ("sub/../sub/a.wav", b"A"),
    ]:
        with mr.open(location) as f:
            assert f.read() == content, location


@pytest.mark.parametrize(
    "location",
    ["/etc/passwd", "../outside/secret.wav", "link.wav", "missing.wav", "sub", "fifo.wav", "x\0", "/"],
)
def test_media_roots_refuse_alike(roots: tuple[Path, Path, Path, Path], location: str) -> None:
    media, cache, outside, _ = roots
    mr = MediaRoots([str(media)], str(cache), trusted=False)
    with pytest.raises(MediaNotFound) as caught:
        mr.open(location.replace("outside/", f"{outside.name}/"))
    assert str(caught.value) == "no such file under MEDIA_PATH or the media cache"


def test_media_roots_without_media_path_take_relative_paths_in_the_cache(
    roots: tuple[Path, Path, Path, Path],
) -> None:
    media, cache, _, _ = roots
    mr = MediaRoots([], str(cache), trusted=False)
    with mr.open("c.wav") as f:
        assert f.read() == b"C"
    with pytest.raises(MediaNotFound):
        mr.open(str(media / "sub" / "a.wav"))


def test_media_roots_trusted_open_anything_but_not_a_fifo(roots: tuple[Path, Path, Path, Path]) -> None:
    media, cache, outside, _ = roots
    mr = MediaRoots([str(media)], str(cache), trusted=True)
    with mr.open(str(outside / "secret.wav")) as f:
        assert f.read() == b"S"
    with mr.open("link.wav") as f:
        assert f.read() == b"S"
    with pytest.raises(MediaNotFound):
        mr.open("fifo.wav")  # does not wait for a writer


def test_lone_surrogates_are_refused_not_crashed_on(tmp_path: Path) -> None:
    with pytest.raises(PathRefused, match="surrogate"):
        recorder_file(str(tmp_path), "x\ud800", "c1", False)
    with pytest.raises(MediaNotFound):
        MediaRoots([str(tmp_path)], str(tmp_path), trusted=True).open("\ud800.wav")
    assert file_stem("\ud800") == "%ED%A0%80"


def test_media_roots_missing(tmp_path: Path) -> None:
    mr = MediaRoots(
        [str(tmp_path), str(tmp_path / "typo,other")], str(tmp_path / "no-cache-yet"), trusted=False
    )
    assert mr.missing() == [str(tmp_path / "typo,other")]
