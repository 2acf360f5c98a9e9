"""The API token middleware on a bare app, the access log's redaction, and what `/llm/v1` forwards."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from frontend import auth, llm
from frontend.errors import errors_middleware

TOKEN = "s3cret-Tok3n/with+odd=chars"


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def ws_ok(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str("hello")
    await ws.close()
    return ws


def bare_app(token: str = TOKEN) -> web.Application:
    """The routes of the frontend, as stand-ins, behind the middlewares as `create_app` orders them."""
    middlewares = [errors_middleware, auth.auth_middleware(token)] if token else [errors_middleware]
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/", ok)
    app.router.add_get("/static/{name}", ok)
    app.router.add_get("/health", ok)
    app.router.add_get("/metrics", ok)
    app.router.add_get("/iceservers", ok)
    app.router.add_get("/call", ws_ok)
    app.router.add_get("/call/lists", ok)
    app.router.add_post("/call/kill/{id}", ok)
    app.router.add_route("*", "/llm/v1/{path:.*}", ok)
    return app


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(bare_app(), host="127.0.0.1")) as c:
        yield c


async def assert_401(resp: aiohttp.ClientResponse, invalid: bool) -> None:
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert ('error="invalid_token"' in resp.headers["WWW-Authenticate"]) is invalid
    body = await resp.json()
    assert set(body) == {"error", "code", "details"} and body["code"] == "UNAUTHORIZED"
    assert TOKEN not in await resp.text()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/call/lists"),
        ("POST", "/call/kill/x"),
        ("GET", "/iceservers"),
        ("GET", "/metrics"),
        ("POST", "/llm/v1/chat/completions"),
        ("GET", "/no/such/path"),
        ("POST", "/health"),  # only reading the open routes is open
    ],
)
async def test_protected_without_or_with_a_wrong_token(
    client: TestClient[web.Request, web.Application], method: str, path: str
) -> None:
    await assert_401(await client.request(method, path), invalid=False)
    await assert_401(
        await client.request(method, path, headers={"Authorization": "Bearer nope"}), invalid=True
    )
    await assert_401(await client.request(method, path, params={"token": "nope"}), invalid=True)
    # The right token in the wrong place, or under another scheme.
    await assert_401(
        await client.request(method, path, headers={"Authorization": f"Basic {TOKEN}"}), invalid=True
    )
    await assert_401(await client.request(method, path, headers={"X-Token": TOKEN}), invalid=False)
    await assert_401(await client.request(method, path, params={"token": TOKEN[:-1]}), invalid=True)


@pytest.mark.parametrize(("method", "path"), [("GET", "/call/lists"), ("POST", "/call/kill/x")])
async def test_bearer_or_query_token_passes(
    client: TestClient[web.Request, web.Application], method: str, path: str
) -> None:
    for kwargs in (
        {"headers": {"Authorization": f"Bearer {TOKEN}"}},
        {"headers": {"Authorization": f"bearer   {TOKEN}"}},
        {"params": {"token": TOKEN}},
        # Either one right is enough.
        {"headers": {"Authorization": "Bearer sk-someone-elses"}, "params": {"token": TOKEN}},
    ):
        resp = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
        assert resp.status == 200, kwargs
        assert await resp.json() == {"ok": True}


async def test_open_routes(client: TestClient[web.Request, web.Application]) -> None:
    for path in ("/", "/static/app.js", "/health"):
        resp = await client.get(path)
        assert resp.status == 200, path
    resp = await client.head("/health")
    assert resp.status == 200
    # A path that climbs out of /static/ is judged by the route it reaches.
    resp = await client.get("/static/../call/lists")
    assert resp.status == 401


async def test_websocket_upgrade(client: TestClient[web.Request, web.Application]) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/call")
    assert refused.value.status == 401
    assert refused.value.headers is not None
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    for ws in (
        await client.ws_connect("/call", params={"token": TOKEN}),
        await client.ws_connect("/call", headers={"Authorization": f"Bearer {TOKEN}"}),
    ):
        assert (await ws.receive_str()) == "hello"
        await ws.close()


async def test_no_token_means_open() -> None:
    async with TestClient(TestServer(bare_app(token=""), host="127.0.0.1")) as c:
        for path in ("/call/lists", "/metrics", "/iceservers"):
            assert (await c.get(path)).status == 200
        assert (await c.post("/call/kill/x")).status == 200


def test_bearer_parsing() -> None:
    assert auth.bearer("Bearer abc") == "abc"
    assert auth.bearer("BEARER  abc ") == "abc"
    assert auth.bearer("Basic abc") is None
    assert auth.bearer("Bearer") is None
    assert auth.bearer("Bearer ") is None
    assert auth.bearer(None) is None
    assert auth.matches("ünïcode", "ünïcode") and not auth.matches("ünïcode", "unicode")
    assert not auth.matches(None, "x")


def test_access_log_hides_the_query_token(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.access")
    access = auth.AccessLog(logger, '%a "%r" %s')
    request = make_mocked_request("GET", f"/call?id=abc&token={TOKEN}&dump=false")
    response = web.Response(status=101)
    with caplog.at_level(logging.INFO, logger="test.access"):
        access.log(request, response, 0.01)
        access.log(make_mocked_request("GET", "/call/lists?x=1"), web.Response(), 0.01)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert TOKEN not in lines[0] and "Tok3n" not in lines[0]
    assert '"GET /call?id=abc&token=***&dump=false HTTP/1.1" 101' in lines[0]
    assert "GET /call/lists?x=1 " in lines[1]


def test_llm_never_forwards_the_api_token() -> None:
    request = make_mocked_request(
        "POST",
        f"/llm/v1/chat/completions?token={TOKEN}&a=1&Token=kept&b=%20x",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    url = llm.upstream_url("http://up/v1", request, TOKEN)
    assert str(url) == "http://up/v1/chat/completions?a=1&Token=kept&b=%20x"
    headers = llm.upstream_headers(request, "sk-server", TOKEN)
    assert headers.getall("Authorization") == ["Bearer sk-server"], "the server's key takes its place"
    # Without a server key, nothing goes up in its place.
    assert "Authorization" not in llm.upstream_headers(request, "", TOKEN)
    # Without API_TOKEN, `token` is the client's own business and goes up as it came.
    assert str(llm.upstream_url("http://up/v1", request)).endswith(f"?token={TOKEN}&a=1&Token=kept&b=%20x")
    # A client's own key (not the API token) still wins over the server's.
    own = make_mocked_request(
        "POST", f"/llm/v1/models?token={TOKEN}", headers={"Authorization": "Bearer sk-client"}
    )
    assert llm.upstream_headers(own, "sk-server", TOKEN).getall("Authorization") == ["Bearer sk-client"]
    assert str(llm.upstream_url("http://up/v1", own, TOKEN)) == "http://up/v1/models"
