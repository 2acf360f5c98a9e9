"""The frontend never imports the worker or the media stack (design §1)."""

from __future__ import annotations

import subprocess
import sys


def test_frontend_does_not_import_worker_or_media() -> None:
    code = (
        "import sys, frontend.app, frontend.calls, frontend.connection, frontend.hub, frontend.health;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'aiortc', 'av'));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
