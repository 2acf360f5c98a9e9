"""How `common/redisconn.py` reads its settings: which deployment, which nodes, which TLS checks."""

from __future__ import annotations

import ssl

import pytest

from common import redisconn


def test_tls_options_only_for_rediss_urls() -> None:
    env = {"REDIS_TLS_CA": "/etc/ca.pem", "REDIS_TLS_VERIFY": "0"}
    assert redisconn.tls_options("redis://h:6379/0", env) == {}
    assert redisconn.tls_options("rediss://h:6379/0", {}) == {}, "checked against the system's CAs"
    assert redisconn.tls_options("rediss://h:6379/0", {"REDIS_TLS_CA": " /etc/ca.pem "}) == {
        "ssl_ca_certs": "/etc/ca.pem"
    }
    unchecked = redisconn.tls_options("rediss://h:6379/0", {"REDIS_TLS_VERIFY": "false"})
    assert unchecked == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_check_hostname": False}
    assert redisconn.tls_options("rediss://h/0", {"REDIS_TLS_VERIFY": "1"}) == {}


def test_cluster_wanted_by_setting_or_nodes_before_asking() -> None:
    # An unreachable URL: asking would fail, so these answers come from the settings alone.
    url = "redis://127.0.0.1:1/0"
    assert redisconn.cluster_wanted(url, {"REDIS_CLUSTER": "1"})
    assert not redisconn.cluster_wanted(url, {"REDIS_CLUSTER": "0", "REDIS_CLUSTER_NODES": "a:1"})
    assert redisconn.cluster_wanted(url, {"REDIS_CLUSTER_NODES": "10.0.0.2:7000"})


def test_node_lists() -> None:
    env = {"REDIS_CLUSTER_NODES": " a:7000, [::1]:7001,bad, b:x ,", "REDIS_SENTINELS": "s1:26379"}
    assert redisconn.cluster_nodes(env) == [("a", 7000), ("::1", 7001)]
    assert redisconn.sentinels(env) == [("s1", 26379)]
    assert redisconn.sentinels({}) == []


def test_sentinel_connections_take_credentials_from_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "calls")
    name, primary, watchers = redisconn._sentinel_options(
        "redis://user:secret@ignored:6379/3", {"socket_timeout": 1.0}
    )
    assert name == "calls"
    assert primary == {"username": "user", "password": "secret", "db": 3, "socket_timeout": 1.0}
    assert watchers == {"socket_timeout": 1.0, "socket_connect_timeout": 2.0}
    monkeypatch.delenv("REDIS_SENTINEL_MASTER")
    assert redisconn._sentinel_options("", {})[0] == "mymaster"
