"""gunicorn.conf.py: where the frontends listen and how many there are, from the environment."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"


def conf(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, object]:
    for name in ("HOST", "PORT", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_every_interface_on_8080_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert conf(monkeypatch)["bind"] == "0.0.0.0:8080"


def test_host_and_port_name_the_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    assert conf(monkeypatch, HOST="127.0.0.1", PORT="9001")["bind"] == "127.0.0.1:9001"
    assert conf(monkeypatch, HOST="", PORT="9002")["bind"] == "0.0.0.0:9002", "empty: the default"


def test_web_concurrency_sets_the_frontends(monkeypatch: pytest.MonkeyPatch) -> None:
    assert conf(monkeypatch, WEB_CONCURRENCY="3")["workers"] == 3
