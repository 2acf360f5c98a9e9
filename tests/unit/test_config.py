from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config import Settings


def test_defaults() -> None:
    s = Settings.from_env({}, dotenv=None)
    assert s.port == 8080 and s.redis_prefix == "pbx:" and s.recorder_path == "/tmp/recorders"
    assert s.media_cache_path == "/tmp/mediacache" and s.sip_port == 25060
    assert s.rtp_port_min == 12000 and s.rtp_port_max == 42000 and s.worker_processes >= 1
    assert s.pack_calls == 50 and s.pack_poll_ms == 50.0
    off = Settings.from_env({"PACK_CALLS": "0", "PACK_POLL_MS": "20"}, dotenv=None)
    assert off.pack_calls == 0 and off.pack_poll_ms == 20.0


def test_environment_and_dotenv(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9000\nMAX_CALLS=7\n# comment\nexport OPENAI_API_KEY='sk-file'\n")
    s = Settings.from_env({"PORT": "9100", "REDIS_URL": "redis://:pw@h:1/0"}, dotenv=env_file)
    assert s.port == 9100, "the environment wins over .env"
    assert s.max_calls == 7 and s.openai_api_key == "sk-file"
    text = repr(s)
    assert "sk-file" not in text and "pw" not in text.replace("password", "")
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_bad_integer_is_named() -> None:
    with pytest.raises(ValueError, match="MAX_CALLS"):
        Settings.from_env({"MAX_CALLS": "lots"}, dotenv=None)


def test_exposure_settings() -> None:
    s = Settings.from_env({}, dotenv=None)
    assert not s.llm_proxy_open and not s.trust_clients and s.trusted_proxies == ()
    assert (s.calls_per_ip_per_min, s.calls_per_ip_burst) == (300, 100)
    assert not Settings.from_env({"OPENAI_API_KEY": "sk-x"}, dotenv=None).lends_llm_key
    for opener in ({"API_TOKEN": "t"}, {"LLM_PROXY_OPEN": "yes"}, {"TRUST_CLIENTS": "1"}):
        assert Settings.from_env({"OPENAI_API_KEY": "sk-x", **opener}, dotenv=None).lends_llm_key, opener
    assert not Settings.from_env({"LLM_PROXY_OPEN": "1"}, dotenv=None).lends_llm_key, "no key to lend"
    with pytest.raises(ValueError, match="LLM_PROXY_OPEN"):
        Settings.from_env({"LLM_PROXY_OPEN": "sure"}, dotenv=None)


def test_file_settings() -> None:
    s = Settings.from_env({}, dotenv=None)
    assert s.media_path == () and not s.trust_clients
    assert s.recorder_quota_mb == 1024 and s.media_cache_max_mb == 1024
    s = Settings.from_env(
        {
            "MEDIA_PATH": f"/srv/prompts{os.pathsep}relative{os.pathsep}{os.pathsep}/srv/prompts",
            "TRUST_CLIENTS": "1",
            "RECORDER_QUOTA_MB": "0.5",
            "MEDIA_CACHE_MAX_MB": "0",
        },
        dotenv=None,
    )
    assert s.media_path == ("/srv/prompts", os.path.abspath("relative"))
    assert s.trust_clients and s.recorder_quota_mb == 0.5 and s.media_cache_max_mb == 0
    assert not Settings.from_env({"TRUST_CLIENTS": "false"}, dotenv=None).trust_clients
    with pytest.raises(ValueError, match="TRUST_CLIENTS"):
        Settings.from_env({"TRUST_CLIENTS": "maybe"}, dotenv=None)


def test_outbound_url_settings() -> None:
    s = Settings.from_env({}, dotenv=None)
    assert (s.allow_private_urls, s.allowed_url_hosts, s.trust_clients) == (False, (), False)
    s = Settings.from_env(
        {
            "ALLOW_PRIVATE_URLS": "yes",
            "ALLOWED_URL_HOSTS": " Bots.Internal , 10.0.0.7:9000,",
            "TRUST_CLIENTS": "0",
        },
        dotenv=None,
    )
    assert (s.allow_private_urls, s.allowed_url_hosts, s.trust_clients) == (
        True,
        ("bots.internal", "10.0.0.7:9000"),
        False,
    )
    with pytest.raises(ValueError, match="ALLOW_PRIVATE_URLS must be 1 or 0"):
        Settings.from_env({"ALLOW_PRIVATE_URLS": "maybe"}, dotenv=None)
    for bad in ("http://x/y", "x:0", "user@x", "x:http"):
        with pytest.raises(ValueError, match="ALLOWED_URL_HOSTS"):
            Settings.from_env({"ALLOWED_URL_HOSTS": bad}, dotenv=None)


def test_host_name() -> None:
    import socket

    assert Settings.from_env({}, dotenv=None).host_name == socket.gethostname()
    assert Settings.from_env({"HOST_NAME": " web-2.eu "}, dotenv=None).host_name == "web-2.eu"
    for bad in ("a b", "a/b", "x" * 65, "a:b"):
        with pytest.raises(ValueError, match="HOST_NAME"):
            Settings.from_env({"HOST_NAME": bad}, dotenv=None)
