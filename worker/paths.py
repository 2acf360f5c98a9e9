"""Where a client's strings may lead on disk: call ids as file names, recorder files, local media files.

Clients are untrusted (docs/security.md): a call id, a `recorderFile` or a `play` path never makes the
server write or read outside RECORDER_PATH, MEDIA_PATH and the media cache, unless TRUST_CLIENTS is set.
The checks here are lexical first (nothing on disk is touched for a path that is refused by its spelling),
then by the real path (a symbolic link inside a root that points out of it does not open a way out).
"""

from __future__ import annotations

import hashlib
import os
import stat
import string
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

# Characters a call id keeps in a file name; every other one is written %XX (its UTF-8 bytes).
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-_.@+=,")
# File names stay well under NAME_MAX (255 bytes) with `.events.jsonl` after them.
MAX_STEM = 200
_KEPT = 150


class PathRefused(ValueError):
    """A client-given path that would lead outside its root; the message says why, without the root."""


class MediaNotFound(LookupError):
    """A local `play` path that is missing, outside the media roots, or not a regular file: one error for
    all three, so that a client cannot learn what exists outside the roots."""

    def __init__(self) -> None:
        super().__init__("no such file under MEDIA_PATH or the media cache")


def file_stem(call_id: str) -> str:
    """The call id as a single file name. Ids of letters, digits and `-_.@+=,` (RustPBX's `s.<uuid>`, SIP
    dialog ids) are kept as they are; any other character, and a leading dot, is written `%XX` per UTF-8
    byte (`%` itself too), so no id can name a directory (`/`, `\\`), a parent (`..`) or a hidden file, and
    two ids never share a name. Past 200 characters: the first 150, `~` and 16 hex digits of the id's
    sha256 (`~` appears in no shorter name)."""
    raw = call_id.encode("utf-8", "surrogatepass")
    if not call_id:
        return "%"
    out: list[str] = []
    for i, ch in enumerate(call_id):
        if ch in _NAME_CHARS and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    stem = "".join(out)
    if len(stem) <= MAX_STEM:
        return stem
    head = stem[:_KEPT]
    cut = head.rfind("%", len(head) - 2)
    if cut >= 0:
        head = head[:cut]  # never half an escape
    return f"{head}~{hashlib.sha256(raw).hexdigest()[:16]}"


def recorder_file(root: str, name: str | None, call_id: str, trusted: bool) -> Path:
    """The recording's path for the option's `recorderFile` (None or empty: `{id}.wav` in the root).

    A name or a relative path under the root; `{id}` stands for the call id (as `file_stem` writes it) and
    `.wav` is added when missing. Without `trusted`, an absolute path or a `..` component is refused
    (PathRefused). Lexical only: `inside` checks the real path before the file is created."""
    stem = file_stem(call_id)
    base = Path(root)
    if not name:
        return base / f"{stem}.wav"
    if "\0" in name:
        raise PathRefused("must not contain a NUL character")
    if not _encodable(name):
        raise PathRefused("must be valid Unicode text (it holds a lone surrogate)")
    given = PurePosixPath(name)
    if not trusted:
        if given.is_absolute():
            raise PathRefused("must be a file name or a path relative to RECORDER_PATH, not an absolute path")
        if ".." in given.parts:
            raise PathRefused("must stay under RECORDER_PATH: '..' is not allowed")
    path = Path(name.replace("{id}", stem))
    if not path.is_absolute():
        if not path.name:
            raise PathRefused("names no file")
        path = base / path
    return path if path.suffix.lower() == ".wav" else path.with_name(f"{path.name}.wav")


def _encodable(text: str) -> bool:
    """Whether `text` can be a file name (a lone surrogate, which the protocol's edge refuses, cannot)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def inside(path: Path | str, root: str) -> bool:
    """Whether `path`, symbolic links resolved (as far as it exists), lies under the real `root`.
    Blocking (it reads the file system): call it on a disk thread."""
    return _under(os.path.realpath(path), os.path.realpath(root))


class MediaRoots:
    """The directories `play` reads local files from: MEDIA_PATH's, then the media cache's. A relative
    path is taken under the first of them; with `trusted`, any path opens (relative ones still start from
    the first root)."""

    def __init__(self, dirs: Sequence[str], cache_dir: str, trusted: bool) -> None:
        roots = [os.path.abspath(d) for d in dirs]
        cache = os.path.abspath(cache_dir)
        self._configured = len(roots)
        if cache not in roots:
            roots.append(cache)
        self.dirs = tuple(roots)
        self.trusted = trusted

    def missing(self) -> list[str]:
        """The MEDIA_PATH directories that do not exist (the cache is made when first written). Blocking."""
        return [d for d in self.dirs[: self._configured] if not os.path.isdir(d)]

    def open(self, location: str) -> BinaryIO:
        """The file `location` names, open for reading, or MediaNotFound. Blocking: call it on a disk
        thread. The file is opened before it is read, so it plays even if the cache evicts it meanwhile."""
        if "\0" in location or not _encodable(location):
            raise MediaNotFound()
        path = os.path.normpath(os.path.join(self.dirs[0], location))
        if not self.trusted:
            # Refused by its spelling before anything on disk is looked at, then by where links lead.
            if not any(_under(path, root) for root in self.dirs):
                raise MediaNotFound()
            real = os.path.realpath(path)
            if not any(_under(real, os.path.realpath(root)) for root in self.dirs):
                raise MediaNotFound()
            path = real
        return _open_regular(path)


def _open_regular(path: str) -> BinaryIO:
    """Open a regular file for reading; anything else (missing, a directory, a FIFO, a device) is
    MediaNotFound. O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        raise MediaNotFound() from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MediaNotFound()
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
