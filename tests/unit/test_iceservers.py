"""`GET /iceservers` with a local stand-in for RESTSEND: configured, default, fetched and fallback lists."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.config import Settings
from frontend import iceservers
from frontend.iceservers import DEFAULT_ICE_SERVERS, client_ip, normalize, parse_configured
from frontend.keys import SETTINGS

TOKEN = "tok-s3cret-123"
CONFIGURED = [
    {"urls": "stun:stun.example.org:3478"},
    {
        "urls": ["turn:turn.example.org:3478", "turns:turn.example.org:5349"],
        "username": "u",
        "credential": "p",
    },
]
CONFIGURED_OUT = [
    {"urls": ["stun:stun.example.org:3478"]},
    {
        "urls": ["turn:turn.example.org:3478", "turns:turn.example.org:5349"],
        "username": "u",
        "credential": "p",
    },
]
FETCHED = [
    {"urls": ["stun:restsend.example:3478"], "username": None, "credential": None},
    {"urls": "turn:restsend.example:3478", "username": "1700000000:alice", "credential": "xyz"},
]
FETCHED_OUT = [
    {"urls": ["stun:restsend.example:3478"]},
    {"urls": ["turn:restsend.example:3478"], "username": "1700000000:alice", "credential": "xyz"},
]

Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Restsend:
    """A local RESTSEND `/api/iceservers`: records each query and answers with `respond`."""

    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []
        self.respond: Responder = self._list

    async def _list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(FETCHED)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        return await self.respond(request)


@pytest.fixture
async def restsend() -> AsyncIterator[tuple[Restsend, str]]:
    mock = Restsend()
    app = web.Application()
    app.router.add_get("/api/iceservers", mock.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield mock, str(server.make_url("/api/iceservers"))
    finally:
        await server.close()


@pytest.fixture
async def frontend() -> AsyncIterator[Callable[..., Awaitable[TestClient[Any, Any]]]]:
    """A client of an app with only `/iceservers` (no Redis), built from Settings fields."""
    clients: list[TestClient[Any, Any]] = []

    async def make(**settings: Any) -> TestClient[Any, Any]:
        app = web.Application()
        app[SETTINGS] = dataclasses.replace(Settings(), **settings)
        iceservers.setup(app)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def get_servers(client: TestClient[Any, Any], **headers: str) -> Any:
    resp = await client.get("/iceservers", headers=headers)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    return await resp.json()


async def test_default_list(frontend: Any) -> None:
    client = await frontend()
    assert await get_servers(client) == DEFAULT_ICE_SERVERS == [{"urls": ["stun:restsend.com:3478"]}]


async def test_configured_list_is_normalized(frontend: Any) -> None:
    client = await frontend(ice_servers=json.dumps(CONFIGURED))
    assert await get_servers(client) == CONFIGURED_OUT


async def test_empty_configured_list_means_none(frontend: Any) -> None:
    client = await frontend(ice_servers="[]")
    assert await get_servers(client) == []


async def test_token_fetch(frontend: Any, restsend: tuple[Restsend, str]) -> None:
    mock, url = restsend
    client = await frontend(restsend_token=TOKEN, restsend_ice_url=url, ice_servers=json.dumps(CONFIGURED))
    assert await get_servers(client) == FETCHED_OUT
    assert mock.queries[-1] == {"token": TOKEN, "user": "", "client": "127.0.0.1"}
    assert await get_servers(client, **{"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}) == FETCHED_OUT
    assert mock.queries[-1] == {"token": TOKEN, "user": "", "client": "203.0.113.7"}


async def test_token_fetch_keeps_query_of_the_configured_url(
    frontend: Any, restsend: tuple[Restsend, str]
) -> None:
    mock, url = restsend
    client = await frontend(restsend_token=TOKEN, restsend_ice_url=url + "?region=eu")
    assert await get_servers(client) == FETCHED_OUT
    assert mock.queries[-1] == {"region": "eu", "token": TOKEN, "user": "", "client": "127.0.0.1"}


async def _server_error(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": "boom"}, status=500)


async def _garbage(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"\xff\xfe<html>not json", content_type="application/json")


async def _wrong_shape(request: web.Request) -> web.StreamResponse:
    return web.json_response({"urls": ["stun:x"]})


async def _bad_entry(request: web.Request) -> web.StreamResponse:
    return web.json_response([{"username": "no urls"}])


@pytest.mark.parametrize("respond", [_server_error, _garbage, _wrong_shape, _bad_entry])
@pytest.mark.parametrize("configured", [True, False])
async def test_failed_fetch_falls_back(
    frontend: Any,
    restsend: tuple[Restsend, str],
    caplog: pytest.LogCaptureFixture,
    respond: Responder,
    configured: bool,
) -> None:
    mock, url = restsend
    mock.respond = respond
    settings: dict[str, Any] = {"restsend_token": TOKEN, "restsend_ice_url": url}
    if configured:
        settings["ice_servers"] = json.dumps(CONFIGURED)
    client = await frontend(**settings)
    with caplog.at_level(logging.WARNING, logger="pbx.ice"):
        servers = await get_servers(client)
    assert servers == (CONFIGURED_OUT if configured else DEFAULT_ICE_SERVERS)
    assert len(mock.queries) == 1
    assert "failed" in caplog.text and TOKEN not in caplog.text


async def test_fetch_timeout_falls_back(
    frontend: Any,
    restsend: tuple[Restsend, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mock, url = restsend
    answered = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await answered.wait()
        return web.json_response(FETCHED)

    mock.respond = hang
    monkeypatch.setattr(iceservers, "FETCH_TIMEOUT", 0.3)
    client = await frontend(restsend_token=TOKEN, restsend_ice_url=url, ice_servers=json.dumps(CONFIGURED))
    with caplog.at_level(logging.WARNING, logger="pbx.ice"):
        assert await get_servers(client) == CONFIGURED_OUT
    answered.set()
    assert "no answer within 0.3 s" in caplog.text and TOKEN not in caplog.text


async def test_unreachable_restsend_falls_back(frontend: Any, caplog: pytest.LogCaptureFixture) -> None:
    from common.embedded import free_port

    url = f"http://127.0.0.1:{free_port()}/api/iceservers"
    client = await frontend(restsend_token=TOKEN, restsend_ice_url=url)
    with caplog.at_level(logging.WARNING, logger="pbx.ice"):
        assert await get_servers(client) == DEFAULT_ICE_SERVERS
    assert "ClientConnectorError" in caplog.text and TOKEN not in caplog.text


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        '{"urls": "stun:x"}',
        '["stun:x"]',
        '[{"urls": []}]',
        '[{"urls": [1]}]',
        '[{"urls": "stun:x", "credential": 5}]',
    ],
)
async def test_malformed_ice_servers_warns_once_and_is_unset(
    frontend: Any, caplog: pytest.LogCaptureFixture, raw: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="pbx.ice"):
        client = await frontend(ice_servers=raw)
        assert await get_servers(client) == DEFAULT_ICE_SERVERS
        assert await get_servers(client) == DEFAULT_ICE_SERVERS
    warnings = [r for r in caplog.records if r.name == "pbx.ice"]
    assert len(warnings) == 1 and "ICE_SERVERS ignored" in warnings[0].getMessage()


def test_malformed_warning_does_not_echo_the_value(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pbx.ice"):
        assert parse_configured('[{"urls": "turn:x", "credential": "hunter2", "username": 7}]') is None
    assert "hunter2" not in caplog.text and "entry 0: username" in caplog.text


def test_normalize_drops_nulls_and_unknown_keys() -> None:
    raw = [{"urls": "stun:a", "username": None, "credential": None, "password": "legacy"}]
    assert normalize(raw) == [{"urls": ["stun:a"]}]


async def test_client_ip_header_order() -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(client_ip(request))
        return web.Response()

    app = web.Application()
    app.router.add_get("/", echo)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for headers in (
            {},
            {"CF-Connecting-IP": "198.51.100.4"},
            {"CF-Connecting-IP": "198.51.100.4", "X-Real-IP": "198.51.100.3"},
            {"X-Real-IP": "198.51.100.3", "X-Forwarded-For": " 198.51.100.2 ,10.1.1.1"},
            {"X-Forwarded-For": "198.51.100.2", "X-Client-IP": "198.51.100.1"},
            {"X-Client-IP": "", "X-Real-IP": "198.51.100.3"},
        ):
            await client.get("/", headers=headers)
    assert seen == [
        "127.0.0.1",
        "198.51.100.4",
        "198.51.100.3",
        "198.51.100.2",
        "198.51.100.1",
        "198.51.100.3",
    ]
