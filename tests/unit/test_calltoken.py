"""Call tokens: the codec on a virtual clock; the token middleware and `POST /call/token` on a bare app."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Middleware

from frontend import auth, calltoken
from frontend.calltoken import MAX_TTL, CallGrant, CallTokens, TokenRefused
from frontend.errors import errors_middleware

API_TOKEN = "master-Tok3n/with+odd=chars"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def refused(tokens: CallTokens, token: str, path: str = "/call", call_id: str | None = None) -> TokenRefused:
    with pytest.raises(TokenRefused) as caught:
        tokens.check(token, path, call_id)
    assert caught.value.status == 401 and caught.value.code == "UNAUTHORIZED"
    return caught.value


def test_a_token_opens_its_call_until_it_expires() -> None:
    clock = Clock()
    tokens = CallTokens(API_TOKEN, clock)
    token = tokens.mint(tokens.grant(60, call_id="c-1", path="/call/webrtc"))
    assert token.startswith("ct1.") and token.count(".") == 2
    assert tokens.check(token, "/call/webrtc", "c-1") == CallGrant(
        expires_at=int(T0) + 60, call_id="c-1", path="/call/webrtc"
    )
    clock.now += 59.9
    tokens.check(token, "/call/webrtc", "c-1")
    clock.now = T0 + 60
    exc = refused(tokens, token, "/call/webrtc", "c-1")
    assert exc.message == "call token expired"
    assert "2027-01-15T08:01:00Z" in exc.details and "0 s ago" in exc.details
    assert "POST /call/token" in exc.details


def test_a_token_opens_only_its_id_and_its_path() -> None:
    tokens = CallTokens(API_TOKEN, Clock())
    both = tokens.mint(tokens.grant(60, call_id="c-1", path="/call/webrtc"))
    assert "not 'c-2'" in refused(tokens, both, "/call/webrtc", "c-2").details
    assert "?id=" in refused(tokens, both, "/call/webrtc", None).details
    assert "not /call/sip" in refused(tokens, both, "/call/sip", "c-1").details
    # A path-only token: any id on that path; an id-only token: that id on any call path.
    on_path = tokens.mint(tokens.grant(60, path="/call/sip"))
    tokens.check(on_path, "/call/sip", "anything")
    tokens.check(on_path, "/call/sip", None)
    refused(tokens, on_path, "/call", "anything")
    for_id = tokens.mint(tokens.grant(60, call_id="c-1"))
    for path in calltoken.CALL_PATHS:
        tokens.check(for_id, path, "c-1")
    refused(tokens, for_id, "/call", "c-2")


def _tamper(token: str, payload: dict[str, Any]) -> str:
    _, _, signature = token.split(".")
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"ct1.{body}.{signature}"


def test_a_tampered_or_foreign_token_is_refused() -> None:
    clock = Clock()
    tokens = CallTokens(API_TOKEN, clock)
    token = tokens.mint(tokens.grant(60, call_id="c-1"))
    later = _tamper(token, {"exp": int(T0) + 10**6, "id": "c-1"})
    other_id = _tamper(token, {"exp": int(T0) + 60, "id": "c-2"})
    for forged in (later, other_id):
        assert "signature does not match" in refused(tokens, forged, call_id="c-2").details
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    assert "signature does not match" in refused(tokens, flipped, call_id="c-1").details
    # Signed under another API_TOKEN (another deployment, or before the token was changed).
    foreign = CallTokens("another-api-token", clock).mint(tokens.grant(60, call_id="c-1"))
    assert "signature does not match" in refused(tokens, foreign, call_id="c-1").details
    # The same API_TOKEN on another frontend (another host): no state but the setting.
    CallTokens(API_TOKEN, clock).check(token, "/call", "c-1")


@pytest.mark.parametrize(
    "junk",
    ["", "ct1.", "ct1..", "ct1.e30", "ct1.e30.%%%", "ct1.a.b.c", "ct2.e30.AAAA", "x" * 600, "ct1.é.AAAA",
     "ct1.e30." + "A" * 43, "\udcff", API_TOKEN],
)  # fmt: skip
def test_junk_is_refused_as_not_a_call_token(junk: str) -> None:
    exc = refused(CallTokens(API_TOKEN, Clock()), junk)
    assert exc.message == "invalid call token"


def test_the_key_is_not_in_repr() -> None:
    assert API_TOKEN not in repr(CallTokens(API_TOKEN)) and "***" in repr(CallTokens(API_TOKEN))


async def ws_ok(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(request.get(auth.AUTHENTICATED_BY, "-"))
    await ws.close()
    return ws


async def ok(request: web.Request) -> web.Response:
    return web.json_response(True)


def token_app(api_token: str = API_TOKEN, clock: Clock | None = None) -> web.Application:
    tokens = CallTokens(api_token, clock or Clock())
    middlewares: list[Middleware] = [errors_middleware]
    if api_token:
        middlewares.append(auth.auth_middleware(api_token, tokens))
    app = web.Application(middlewares=middlewares)
    for path in calltoken.CALL_PATHS:
        app.router.add_get(path, ws_ok)
    app.router.add_get("/call/lists", ok)
    app.router.add_post("/call/kill/{id}", ok)
    app.router.add_get("/iceservers", ok)
    app.router.add_route("*", "/llm/v1/{path:.*}", ok)
    calltoken.setup(app, tokens)
    return app


Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(clock: Clock) -> AsyncIterator[Client]:
    async with TestClient(TestServer(token_app(clock=clock), host="127.0.0.1")) as c:
        yield c


async def mint(client: Client, body: object = None, **kwargs: Any) -> dict[str, Any]:
    resp = await client.post("/call/token", json=body, headers=BEARER, **kwargs)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    return await resp.json()  # type: ignore[no-any-return, unused-ignore]


async def opens(client: Client, path: str, **query: str) -> str:
    ws = await client.ws_connect(path, params=query)
    try:
        msg = await ws.receive()
        return str(msg.data)
    finally:
        await ws.close()


async def ws_refusal(client: Client, path: str, **query: str) -> dict[str, str]:
    resp = await client.get(path, params=query, headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="pbx", error="invalid_token"'
    return await resp.json()  # type: ignore[no-any-return, unused-ignore]


async def test_mint_and_open(client: Client, clock: Clock) -> None:
    got = await mint(client, {"id": "c-1", "path": "/call/webrtc", "ttl": 30})
    assert got == {"token": got["token"], "expiresAt": int(T0) + 30, "id": "c-1", "path": "/call/webrtc"}
    assert await opens(client, "/call/webrtc", id="c-1", token=got["token"]) == "call_token"
    # As a Bearer header too (for clients that can set one).
    ws = await client.ws_connect("/call/webrtc?id=c-1", headers={"Authorization": f"Bearer {got['token']}"})
    assert (await ws.receive()).data == "call_token"
    await ws.close()
    # The master token is told apart (the per-address call limit spares it).
    assert await opens(client, "/call/sip", token=API_TOKEN) == "api_token"
    body = await ws_refusal(client, "/call/webrtc", id="c-2", token=got["token"])
    assert body["error"] == "call token not valid here" and "'c-1'" in body["details"]
    assert "/call/webrtc" in (await ws_refusal(client, "/call/sip", id="c-1", token=got["token"]))["details"]
    clock.now += 30
    assert (await ws_refusal(client, "/call/webrtc", id="c-1", token=got["token"]))["error"] == (
        "call token expired"
    )


async def test_no_id_and_no_path_gets_a_call_of_its_own(client: Client) -> None:
    bodies: tuple[object, ...] = (None, {})  # no body at all, and an empty object
    for body in bodies:
        got = await mint(client, body)
        assert got["id"].startswith("s.") and got["path"] is None and got["expiresAt"] == int(T0) + 60
        assert await opens(client, "/call", id=got["id"], token=got["token"]) == "call_token"
        assert (await ws_refusal(client, "/call", token=got["token"]))["error"] == "call token not valid here"
    on_path = await mint(client, {"path": "/call"})
    assert on_path["id"] is None
    assert await opens(client, "/call", id="any", token=on_path["token"]) == "call_token"


async def test_a_call_token_opens_nothing_else(client: Client) -> None:
    token = (await mint(client, {"path": "/call"}))["token"]
    for method, path in (
        ("GET", "/call/lists"),
        ("POST", "/call/kill/x"),
        ("GET", "/iceservers"),
        ("POST", "/llm/v1/chat/completions"),
        ("POST", "/call/token"),
        ("GET", "/no/such/route"),
    ):
        for kwargs in ({"params": {"token": token}}, {"headers": {"Authorization": f"Bearer {token}"}}):
            resp = await client.request(method, path, **kwargs)
            assert resp.status == 401, (method, path)
            body = await resp.json()
            assert body["code"] == "UNAUTHORIZED" and body["error"] == "a call token opens call sockets only"
            assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_minting_needs_the_api_token(client: Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = await client.post("/call/token", json={}, headers=headers)
        assert resp.status == 401 and (await resp.json())["code"] == "UNAUTHORIZED"
    resp = await client.post("/call/token", params={"token": API_TOKEN})
    assert resp.status == 200


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": MAX_TTL + 1}, "ttl"),
        ({"ttl": "60"}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"ttl": 1.5}, "ttl"),
        ({"path": "/call/lists"}, "path"),
        ({"id": ""}, "id"),
        ({"id": "a b"}, "id"),
        ({"id": "x" * 129}, "id"),
        ({"id": 7}, "id"),
        ({"tll": 60}, "tll"),
        ([1], "JSON object"),
        ("text", "JSON object"),
    ],
)
async def test_bad_requests_name_the_field(client: Client, body: object, names: str) -> None:
    resp = await client.post("/call/token", json=body, headers=BEARER)
    assert resp.status == 400
    got = await resp.json()
    assert got["code"] == "BAD_REQUEST" and names in got["error"]
    resp = await client.post("/call/token", data=b"{not json", headers=BEARER)
    assert resp.status == 400 and "JSON object" in (await resp.json())["error"]


async def test_without_an_api_token_tokens_are_minted_and_not_needed() -> None:
    async with TestClient(TestServer(token_app(api_token=""), host="127.0.0.1")) as c:
        resp = await c.post("/call/token", json={"id": "c-1"})
        assert resp.status == 200
        token = (await resp.json())["token"]
        assert await opens(c, "/call", id="c-2", token=token) == "-", "nothing checks it: the route is open"


async def test_the_refusal_never_shows_the_api_token(client: Client) -> None:
    token = (await mint(client, {"id": "c-1"}))["token"]
    async with aiohttp.ClientSession() as s:
        for params in ({"token": token, "id": "c-2"}, {"token": token[:-3] + "xyz", "id": "c-1"}):
            async with s.get(client.make_url("/call"), params=params) as resp:
                assert resp.status == 401
                assert API_TOKEN not in await resp.text()
