"""The start-up report: which lines a given configuration brings, and no secret in any of them."""

from __future__ import annotations

import logging

import pytest

from common.config import Settings
from frontend.exposure import log_report, report

ANY = ("0.0.0.0", 8080)
LOCAL = ("127.0.0.1", 8080)


def lines(env: dict[str, str], binds: list[object] | None = None) -> tuple[bool, str, list[str], list[str]]:
    """(anything open, the heading, the OPEN lines stripped, every item line)."""
    settings = Settings.from_env(env, dotenv=None)
    opened, got = report(settings, binds or [ANY])  # type: ignore[arg-type]
    return opened, got[0], [g.strip() for g in got[1:] if g.startswith("  OPEN")], got[1:]


def test_the_defaults_on_every_interface() -> None:
    opened, heading, open_lines, _ = lines({})
    assert opened and heading == "start-up report for 0.0.0.0:8080: 2 open to whoever reaches it"
    assert open_lines[0].startswith("OPEN  no API_TOKEN, and 0.0.0.0:8080 is reachable from other machines")
    assert open_lines[1].startswith("OPEN  CORS_ORIGINS=*")


@pytest.mark.parametrize(
    "bind", [("127.0.0.1", 8080), ("::1", 8080), ("localhost", 8080), ("127.9.9.9", 1), "/run/pbx.sock"]
)
def test_loopback_only_is_not_open_without_a_token(bind: object) -> None:
    _, _, open_lines, items = lines({"CORS_ORIGINS": "https://app.example.com"}, [bind])
    assert open_lines == []
    assert any("no API_TOKEN, but bound to loopback only" in item for item in items)


@pytest.mark.parametrize("bind", [("", 8080), ("::", 8080), ("192.168.1.10", 8080), ("pbx.example.com", 80)])
def test_anything_else_is_reachable(bind: object) -> None:
    _, _, open_lines, _ = lines({"CORS_ORIGINS": "https://app.example.com"}, [LOCAL, bind])
    assert len(open_lines) == 1 and "no API_TOKEN" in open_lines[0]


def test_the_llm_proxy() -> None:
    key = {"OPENAI_API_KEY": "sk-secret-key-1234"}
    _, _, open_lines, items = lines(key)
    assert not any("LLM" in line for line in open_lines)
    assert any("lent to nobody" in item and "LLM_PROXY_OPEN=1" in item for item in items)
    for opener in ("LLM_PROXY_OPEN", "TRUST_CLIENTS"):
        _, _, open_lines, _ = lines({**key, opener: "1"})
        assert any(line.startswith(f"OPEN  LLM proxy open ({opener})") for line in open_lines), open_lines
    _, _, open_lines, items = lines({**key, "API_TOKEN": "tok-secret-5678", "LLM_PROXY_OPEN": "1"})
    assert not any("LLM" in line for line in open_lines)
    assert any("only to requests that carry API_TOKEN" in item for item in items)
    # No key, nothing to lend: no line about it.
    assert not any("LLM" in item for item in lines({"LLM_PROXY_OPEN": "1"})[3])


def test_the_other_widening_settings() -> None:
    env = {
        "API_TOKEN": "tok-secret-5678",
        "TRUST_CLIENTS": "1",
        "CALLS_PER_IP_PER_MIN": "0",
        "TRUSTED_PROXIES": "0.0.0.0/0",
        "CORS_ORIGINS": "https://app.example.com",
        "ALLOW_PRIVATE_URLS": "1",
    }
    opened, heading, open_lines, _ = lines(env)
    assert heading.endswith("4 open to whoever reaches it")
    for start in ("TRUST_CLIENTS", "ALLOW_PRIVATE_URLS", "CALLS_PER_IP_PER_MIN=0", "TRUSTED_PROXIES"):
        assert any(line.startswith(f"OPEN  {start}") for line in open_lines), start


def test_nothing_open_is_said_at_info_and_open_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pbx.frontend.exposure")
    safe = Settings.from_env(
        {
            "API_TOKEN": "tok-secret-5678",
            "OPENAI_API_KEY": "sk-secret-key-1234",
            "CORS_ORIGINS": "https://a.b",
        },
        dotenv=None,
    )
    log_report(safe, [ANY])
    log_report(Settings.from_env({"OPENAI_API_KEY": "sk-secret-key-1234"}, dotenv=None), [ANY])
    first, second = caplog.records
    assert first.levelno == logging.INFO and "nothing open" in first.getMessage()
    assert second.levelno == logging.WARNING and "2 open" in second.getMessage()
    assert "secret" not in caplog.text


def test_outbound_urls() -> None:
    _, _, open_lines, items = lines({})
    assert not any("ALLOW_PRIVATE_URLS" in line for line in open_lines)
    assert any(i.startswith("  ok    URLs that clients send") and "public addresses only" in i for i in items)
    _, _, _, items = lines({"ALLOWED_URL_HOSTS": "bots.internal,10.0.0.7:9000"})
    assert any("bots.internal, 10.0.0.7:9000 (ALLOWED_URL_HOSTS)" in i for i in items)
    _, _, open_lines, _ = lines({"TRUST_CLIENTS": "1"})
    assert any(line.startswith("OPEN  TRUST_CLIENTS") and "private addresses" in line for line in open_lines)
