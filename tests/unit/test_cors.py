"""CORS (`frontend/cors.py`, `CORS_ORIGINS`) on stand-in routes behind the real middlewares, and on the real
`/llm/v1` proxy with its streamed answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.config import Settings, normalize_origin
from frontend import cors
from tests.unit.test_auth import TOKEN, bare_app
from tests.unit.test_llm_proxy import PIECES, FakeOpenAI, proxy_app

PAGE = "https://app.example.com"
OTHER = "https://evil.example.net"
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """`make_client(origins, token)`: the frontend's routes as stand-ins, CORS as `create_app` sets it."""
    clients: list[Client] = []

    async def make(origins: tuple[str, ...] = ("*",), token: str = "") -> Client:
        app = bare_app(token)
        cors.setup(app, origins)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


def preflight(
    method: str, origin: str = PAGE, headers: str = "authorization, content-type"
) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


# --- the setting -------------------------------------------------------------------------------------------


def test_cors_origins_default_to_any() -> None:
    assert Settings.from_env({}, dotenv=None).cors_origins == ("*",)
    assert Settings.from_env({"CORS_ORIGINS": " "}, dotenv=None).cors_origins == ("*",)


def test_cors_origins_are_written_as_browsers_send_them() -> None:
    raw = "HTTPS://App.Example.com:443/, http://localhost:3000 ,https://app.example.com,http://[::1]:80"
    s = Settings.from_env({"CORS_ORIGINS": raw}, dotenv=None)
    assert s.cors_origins == ("https://app.example.com", "http://localhost:3000", "http://[::1]")
    assert normalize_origin("capacitor://localhost") == "capacitor://localhost"


@pytest.mark.parametrize(
    "raw",
    [
        "app.example.com",
        "https://app.example.com/path",
        "https://u@app.example.com",
        "http://h:99999",
        ",",
        "null",
    ],
)
def test_a_bad_cors_origin_is_refused_by_name(raw: str) -> None:
    with pytest.raises(ValueError, match="CORS_ORIGINS"):
        Settings.from_env({"CORS_ORIGINS": raw}, dotenv=None)


# --- permissive (the default) ------------------------------------------------------------------------------


async def test_preflight_of_kill_is_answered(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.options("/call/kill/x", headers=preflight("POST"))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Access-Control-Allow-Methods"] == "POST"
    assert resp.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert int(resp.headers["Access-Control-Max-Age"]) > 0


async def test_every_answer_carries_the_header_errors_too(make_client: MakeClient) -> None:
    client = await make_client()
    for method, path, status in (
        ("GET", "/call/lists", 200),
        ("GET", "/iceservers", 200),
        ("POST", "/llm/v1/chat/completions", 200),
        ("GET", "/no/such/path", 404),
        ("GET", "/call/kill/x", 405),
    ):
        resp = await client.request(method, path, headers={"Origin": PAGE})
        assert resp.status == status, path
        assert resp.headers["Access-Control-Allow-Origin"] == "*", path
        assert resp.headers["Access-Control-Expose-Headers"] == "*", path
        if status >= 400:
            assert set(await resp.json()) == {"error", "code", "details"}


async def test_a_plain_options_is_no_preflight(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.options("/call/lists", headers={"Origin": PAGE})
    assert resp.status == 405, "without Access-Control-Request-Method it goes to the routes"


async def test_websocket_upgrade_is_left_alone(make_client: MakeClient) -> None:
    client = await make_client(origins=(PAGE,))
    async with client.ws_connect("/call", headers={"Origin": OTHER}) as ws:
        assert (await ws.receive_str()) == "hello"
        assert ws._response.status == 101
        assert "Access-Control-Allow-Origin" not in ws._response.headers


# --- with API_TOKEN ----------------------------------------------------------------------------------------


async def test_preflight_needs_no_token_and_allows_its_header(make_client: MakeClient) -> None:
    client = await make_client(token=TOKEN)
    routes = (("GET", "/call/lists"), ("POST", "/call/kill/x"), ("POST", "/llm/v1/chat/completions"))
    for method, path in routes:
        resp = await client.options(path, headers=preflight(method, headers="Authorization"))
        assert resp.status == 204, path
        assert resp.headers["Access-Control-Allow-Headers"] == "Authorization"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_the_token_is_still_asked_for_and_its_401_is_readable(make_client: MakeClient) -> None:
    client = await make_client(token=TOKEN)
    resp = await client.get("/call/lists", headers={"Origin": PAGE})
    assert resp.status == 401 and (await resp.json())["code"] == "UNAUTHORIZED"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.get("/call/lists", headers={"Origin": PAGE, "Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"


# --- narrowed by CORS_ORIGINS ------------------------------------------------------------------------------


async def test_a_listed_origin_gets_itself_back(make_client: MakeClient) -> None:
    client = await make_client(origins=(PAGE, "http://localhost:3000"), token=TOKEN)
    resp = await client.get("/call/lists", headers={"Origin": PAGE})
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
    assert "Origin" in resp.headers.getall("Vary")
    resp = await client.options("/call/kill/x", headers=preflight("POST", origin="http://localhost:3000"))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_another_origin_is_not_let_read(make_client: MakeClient) -> None:
    client = await make_client(origins=(PAGE,))
    resp = await client.options("/call/kill/x", headers=preflight("POST", origin=OTHER))
    assert resp.status == 403
    body = await resp.json()
    assert body["code"] == "FORBIDDEN" and OTHER in body["details"] and "CORS_ORIGINS" in body["details"]
    assert "Access-Control-Allow-Origin" not in resp.headers
    # Served (CORS is the browser's rule, not an access control), but not readable by the other page.
    resp = await client.get("/call/lists", headers={"Origin": OTHER})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    assert "Origin" in resp.headers.getall("Vary")
    resp = await client.get("/call/lists")
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


# --- the /llm/v1 proxy -------------------------------------------------------------------------------------


@pytest.fixture
async def llm_client() -> AsyncIterator[tuple[FakeOpenAI, aiohttp.ClientSession, str]]:
    fake = FakeOpenAI()
    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/v1/{tail:.*}", fake.handle)
    async with TestServer(upstream_app, host="127.0.0.1") as upstream:
        app = proxy_app(str(upstream.make_url("/v1")))
        cors.setup(app, (PAGE,))
        async with TestServer(app, host="127.0.0.1") as proxy, aiohttp.ClientSession() as session:
            yield fake, session, str(proxy.make_url("/llm/v1")).rstrip("/")


async def test_llm_stream_is_readable_as_it_arrives(
    llm_client: tuple[FakeOpenAI, aiohttp.ClientSession, str],
) -> None:
    fake, session, base = llm_client
    body = {"model": "gpt-test", "messages": [], "stream": True}
    async with session.post(f"{base}/chat/completions", json=body, headers={"Origin": PAGE}) as resp:
        # The headers came before the answer was complete: the upstream still holds back the rest.
        assert resp.headers["Access-Control-Allow-Origin"] == PAGE
        first = await resp.content.readuntil(b"\n\n")
        assert PIECES[0].encode() in first and not fake.release.is_set()
        fake.release.set()
        rest = await resp.read()
    assert b"[DONE]" in rest


async def test_llm_preflight_stays_here_and_upstream_cors_headers_do_not_pass(
    llm_client: tuple[FakeOpenAI, aiohttp.ClientSession, str],
) -> None:
    fake, session, base = llm_client
    async with session.options(f"{base}/chat/completions", headers=preflight("POST")) as resp:
        assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == PAGE
    assert fake.seen == [], "a preflight is answered here, never forwarded"

    async def cors_of_its_own(request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True},
            headers={"Access-Control-Allow-Origin": OTHER, "Access-Control-Allow-Credentials": "true"},
        )

    fake.answer = cors_of_its_own
    for origin, allowed in ((PAGE, [PAGE]), (OTHER, [])):
        async with session.get(f"{base}/models", headers={"Origin": origin}) as resp:
            assert resp.status == 200
            assert resp.headers.getall("Access-Control-Allow-Origin", []) == allowed
            assert "Access-Control-Allow-Credentials" not in resp.headers
