"""Call tokens and the per-address call limit through a real stack with API_TOKEN (2 frontends behind a
"load balancer" on 127.0.0.1, TRUSTED_PROXIES): a page's token opens its call on any frontend and nothing
else; call-token callers are held to the per-address limit, counted by every frontend; the API token's
holder is not.

Each test speaks for client addresses of its own (`X-Forwarded-For`, believed from the trusted 127.0.0.1), so
the tests do not spend each other's budget."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack

pytestmark = pytest.mark.e2e

API_TOKEN = "tok-calltokens-e2e-7c41"
MASTER = {"Authorization": f"Bearer {API_TOKEN}"}
BURST = 3
_addresses = (f"198.51.100.{i}" for i in itertools.count(1))


def client_address() -> dict[str, str]:
    """Headers that make the next requests come from a client address no other request used."""
    return {"X-Forwarded-For": next(_addresses)}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with running_stack(
        tmp_path_factory.mktemp("calltokens"),
        1,
        2,
        API_TOKEN=API_TOKEN,
        CALLS_PER_IP_PER_MIN="1",
        CALLS_PER_IP_BURST=str(BURST),
        TRUSTED_PROXIES="127.0.0.1",
    ) as info:
        yield info


def fresh() -> aiohttp.ClientSession:
    """A session whose every request takes a new connection, so requests spread over the frontends."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def mint(stack: StackInfo, body: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """A token from `POST /call/token` (with the API token), and the frontend that minted it."""
    async with fresh() as s, s.post(f"{stack.base}/call/token", json=body or {}, headers=MASTER) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(), resp.headers["X-Pbx-Proc"]


async def refusal(
    stack: StackInfo, path: str, headers: dict[str, str] | None = None, **query: str
) -> tuple[int, dict[str, Any], str]:
    """Open a call socket that must be refused: (status, JSON error body, frontend)."""
    async with fresh() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await s.ws_connect(f"{stack.ws}{path}", params=query, headers=headers or {})
        assert caught.value.headers is not None
        proc = caught.value.headers.get("X-Pbx-Proc", "")
        # The handshake error keeps no body: ask again as a plain GET with the upgrade headers.
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
        async with s.get(f"{stack.base}{path}", params=query, headers={**upgrade, **(headers or {})}) as resp:
            assert resp.status == caught.value.status
            return resp.status, await resp.json(), proc


async def test_a_page_places_its_call_with_a_token_minted_by_another_frontend(guarded: StackInfo) -> None:
    for _ in range(40):
        grant, minted_by = await mint(guarded)
        session = fresh()
        ws = await session.ws_connect(
            f"{guarded.ws}/call",
            params={"id": grant["id"], "token": grant["token"]},
            headers=client_address(),
        )
        c = CallClient(session, ws, grant["id"], ws._response.headers["X-Pbx-Proc"])
        if c.frontend != minted_by:
            break
        await c.close()
    else:
        raise AssertionError("every call landed on the frontend that minted its token")
    try:
        assert grant["path"] is None and grant["id"].startswith("s.")
        assert grant["expiresAt"] - time.time() <= 60
        answer = await c.invite()
        assert answer["trackId"] == grant["id"]
        await c.send({"command": "hangup"})
        assert (await c.event("hangup"))["reason"] == "normal_clearing"
    finally:
        await c.close()


async def test_a_token_opens_only_its_call(guarded: StackInfo) -> None:
    grant, _ = await mint(guarded, {"id": "tok-call-1", "path": "/call/webrtc", "ttl": 1})
    token = grant["token"]
    status, body, _ = await refusal(guarded, "/call/webrtc", client_address(), id="tok-call-2", token=token)
    assert (status, body["error"]) == (401, "call token not valid here") and "tok-call-1" in body["details"]
    status, body, _ = await refusal(guarded, "/call/sip", client_address(), id="tok-call-1", token=token)
    assert (status, body["error"]) == (401, "call token not valid here") and "/call/webrtc" in body["details"]
    head, payload, signature = token.split(".")
    tampered = f"{head}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}"
    status, body, _ = await refusal(
        guarded, "/call/webrtc", client_address(), id="tok-call-1", token=tampered
    )
    assert (status, body["error"]) == (401, "invalid call token") and "signature" in body["details"]
    # The right call opens, as a query parameter or a Bearer header.
    async with fresh() as s:
        for params, headers in (
            ({"id": "tok-call-1", "token": token}, {}),
            ({"id": "tok-call-1"}, {"Authorization": f"Bearer {token}"}),
        ):
            ws = await s.ws_connect(f"{guarded.ws}/call/webrtc", params=params, headers=headers)
            await ws.close()
            while guarded.redis.exists("pbx:call:tok-call-1"):  # gone before the id is used again
                await asyncio.sleep(0.05)
    while time.time() < grant["expiresAt"]:
        await asyncio.sleep(0.05)
    status, body, _ = await refusal(guarded, "/call/webrtc", client_address(), id="tok-call-1", token=token)
    assert (status, body["error"]) == (401, "call token expired") and "POST /call/token" in body["details"]


async def test_a_token_opens_no_rest_route(guarded: StackInfo) -> None:
    grant, _ = await mint(guarded, {"path": "/call"})
    bearer = {"Authorization": f"Bearer {grant['token']}"}
    async with fresh() as s:
        for method, path in (
            ("GET", "/call/lists"),
            ("POST", "/call/kill/x"),
            ("GET", "/iceservers"),
            ("GET", "/metrics"),
            ("GET", "/llm/v1/models"),
            ("POST", "/call/token"),
        ):
            for kwargs in ({"headers": bearer}, {"params": {"token": grant["token"]}}):
                async with s.request(method, guarded.base + path, **kwargs) as resp:
                    assert resp.status == 401, (method, path)
                    body = await resp.json()
                    assert body["error"] == "a call token opens call sockets only", (method, path, body)
        async with s.post(f"{guarded.base}/call/token", json={}) as resp:
            assert resp.status == 401, "minting needs the API token"


async def test_a_browser_may_ask_for_a_token_across_origins(guarded: StackInfo) -> None:
    origin = {"Origin": "https://app.example.com"}
    async with fresh() as s:
        preflight = {
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with s.options(f"{guarded.base}/call/token", headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        async with s.post(f"{guarded.base}/call/token", json={}, headers={**origin, **MASTER}) as resp:
            assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_call_token_callers_are_held_to_the_per_address_limit(guarded: StackInfo) -> None:
    grant, _ = await mint(guarded, {"path": "/call"})
    query = {"token": grant["token"]}
    address = client_address()
    opened: list[str] = []
    refused_by: set[str] = set()
    async with fresh() as s:
        for _ in range(60):
            try:
                ws = await s.ws_connect(f"{guarded.ws}/call", params=query, headers=address)
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 429 and exc.headers is not None
                refused_by.add(exc.headers["X-Pbx-Proc"])
                if len(refused_by) == 2:
                    break
                continue
            opened.append(ws._response.headers["X-Pbx-Proc"])
            await ws.close()
    assert len(refused_by) == 2, "every refusal came from one frontend"
    assert len(opened) == BURST, "the frontends share one budget per address"
    status, body, _ = await refusal(guarded, "/call", address, token=grant["token"])
    assert status == 429 and body["code"] == "RATE_LIMITED" and address["X-Forwarded-For"] in body["details"]
    # Another address (another client behind the same load balancer) has a budget of its own.
    async with fresh() as s:
        ws = await s.ws_connect(
            f"{guarded.ws}/call", params={"token": grant["token"]}, headers=client_address()
        )
        await ws.close()


async def test_the_api_tokens_holder_is_not_counted(guarded: StackInfo) -> None:
    address = client_address()
    async with fresh() as s:
        for _ in range(BURST * 3):
            ws = await s.ws_connect(f"{guarded.ws}/call", headers={**address, **MASTER})
            await ws.close()
        # Minting is not counted either: a backend mints for all its users from one address.
        for _ in range(BURST * 3):
            async with s.post(f"{guarded.base}/call/token", headers={**address, **MASTER}) as resp:
                assert resp.status == 200
