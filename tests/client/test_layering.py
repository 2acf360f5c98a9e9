"""pbxclient is a library of its own: it imports nothing of the server, and aiortc only for WebRTC."""

from __future__ import annotations

import subprocess
import sys

SERVER = {"common", "frontend", "worker"}


def imported(modules: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after importing `modules`."""
    code = f"import sys, {modules}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_pbxclient_imports_no_server_package_and_no_aiortc() -> None:
    assert not imported("pbxclient, pbxclient.webhook, pbxclient.sse") & (SERVER | {"aiortc", "av"})
    assert not imported("pbxclient.rtc") & SERVER
