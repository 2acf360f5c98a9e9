"""`API_TOKEN` through the real stack: REST, WebSocket calls, the LLM proxy, the logs and the playground."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, async_playwright

from common.embedded import free_port
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.test_playground import CHROMIUM, open_playground, place_call, wait_for
from tests.unit.test_llm_proxy import COMPLETION, FakeOpenAI

pytestmark = pytest.mark.e2e

TOKEN = "tok-3f9a1c7e-e2e+/="
SERVER_KEY = "sk-server-e2e-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class AuthStack:
    info: StackInfo
    log: Path
    llm_port: int


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    root = tmp_path_factory.mktemp("auth")
    log = root / "stack.log"
    llm_port = free_port()
    with running_stack(
        root,
        1,
        1,
        log=log,
        API_TOKEN=TOKEN,
        OPENAI_BASE_URL=f"http://127.0.0.1:{llm_port}/v1",
        OPENAI_API_KEY=SERVER_KEY,
        # Everything a process might say, and the access log (off by default), which shows request lines.
        LOG_LEVEL="DEBUG",
        GUNICORN_CMD_ARGS="--access-logfile -",
        # Nothing here needs private URLs: the start-up report then has one open item, CORS.
        ALLOW_PRIVATE_URLS="0",
    ) as info:
        yield AuthStack(info, log, llm_port)


async def check_401(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = await resp.json()
    assert set(body) == {"error", "code", "details"} and body["code"] == "UNAUTHORIZED"


async def test_rest_needs_the_token(auth: AuthStack) -> None:
    base = auth.info.base
    async with aiohttp.ClientSession() as s:
        active_call = (("GET", "/list"), ("GET", "/kill/x"), ("GET", "/events/x"), ("POST", "/command/x"),
                       ("POST", "/precache"))  # fmt: skip
        for method, path in (("GET", "/call/lists"), ("POST", "/call/kill/x"), ("GET", "/iceservers"),
                             *active_call):  # fmt: skip
            async with s.request(method, base + path) as resp:
                await check_401(resp)
                assert "required" in (await resp.json())["error"]
            async with s.request(method, base + path, headers={"Authorization": "Bearer wrong"}) as resp:
                await check_401(resp)
                assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
            async with s.request(method, base + path, params={"token": "wrong"}) as resp:
                await check_401(resp)
        for kwargs in ({"headers": BEARER}, {"params": {"token": TOKEN}}):
            async with s.get(base + "/call/lists", **kwargs) as resp:  # type: ignore[arg-type]
                assert resp.status == 200 and "calls" in await resp.json()
            async with s.post(base + "/call/kill/x", **kwargs) as resp:  # type: ignore[arg-type]
                assert resp.status == 404 and (await resp.json())["code"] == "CALL_NOT_FOUND"
        async with s.get(base + "/iceservers", headers=BEARER) as resp:
            assert resp.status == 200 and isinstance(await resp.json(), list)
        async with s.get(base + "/list", headers=BEARER) as resp:
            assert resp.status == 200 and "active_calls" in await resp.json()
        async with s.get(base + "/events/x", params={"token": TOKEN}) as resp:  # as an EventSource sends it
            assert resp.status == 404 and (await resp.json())["status"] == "not_found"


async def test_health_and_playground_stay_open(auth: AuthStack) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(auth.info.base + "/health") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "running"
        for path in ("/", "/static/app.js", "/static/style.css"):
            async with s.get(auth.info.base + path) as resp:
                assert resp.status == 200, path


async def test_websocket_needs_the_token(auth: AuthStack, call_id: str) -> None:
    async with aiohttp.ClientSession() as s:
        for params, headers in (({}, {}), ({"token": "wrong"}, {}), ({}, {"Authorization": "Bearer wrong"})):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await s.ws_connect(f"{auth.info.ws}/call", params=params, headers=headers)
            assert refused.value.status == 401
            assert refused.value.headers is not None
            assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
        # The header works on a WebSocket too (for clients that can set it).
        ws = await s.ws_connect(f"{auth.info.ws}/call", headers=BEARER, params={"id": call_id + "-h"})
        await ws.close()
    # A whole call with the token in the query, as a browser sends it.
    c = await CallClient.open(auth.info.ws, call_id=call_id, token=TOKEN)
    try:
        answer = await c.invite()
        assert answer["trackId"] == call_id
        await c.send({"command": "history", "speaker": "user", "text": "hello"})
        await c.event("addHistory")
        await c.send({"command": "hangup"})
        hangup = await c.event("hangup")
        assert hangup["reason"] == "normal_clearing"
        await c.wait_closed()
    finally:
        await c.close()


@pytest.fixture
async def upstream(auth: AuthStack) -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1", port=auth.llm_port)
    await server.start_server()
    try:
        yield fake
    finally:
        await server.close()


async def test_llm_proxy_sends_the_server_key_not_the_token(auth: AuthStack, upstream: FakeOpenAI) -> None:
    url = f"{auth.info.base}/llm/v1/chat/completions"
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body) as resp:
            await check_401(resp)
        assert upstream.seen == [], "nothing goes upstream without the token"
        for kwargs in ({"headers": BEARER}, {"params": {"token": TOKEN, "api-version": "1"}}):
            async with s.post(url, json=body, **kwargs) as resp:  # type: ignore[arg-type]
                assert resp.status == 200 and await resp.json() == COMPLETION
            seen = upstream.last
            assert seen.path == "/v1/chat/completions"
            assert seen.headers.getall("Authorization") == [f"Bearer {SERVER_KEY}"]
            assert TOKEN not in seen.query_string and "token" not in seen.query_string
            assert all(TOKEN not in v for v in seen.headers.values())
        assert upstream.last.query_string == "api-version=1"


async def test_playground_asks_for_the_token(auth: AuthStack, call_id: str) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await run_playground(page, auth.info, call_id)
            assert not errors, f"the page threw: {errors}"
        finally:
            await browser.close()


async def run_playground(page: Page, info: StackInfo, call_id: str) -> None:
    status = "() => document.getElementById('calls-status').textContent"
    await open_playground(page, info)
    assert await wait_for(page, f"() => /token needed/.test(({status})())", "the 401 shown")
    await page.fill("#token", "wrong")
    assert await wait_for(page, f"() => /token refused/.test(({status})())", "the wrong token shown")
    # A call with the wrong token says why it failed, though a browser hides a WebSocket's 401.
    await page.select_option("#call-type", "websocket")
    await page.click("#call")
    await wait_for(page, "() => window.pbx.state === 'ended'", "the refused call ended")
    assert "refused the API token" in (await page.text_content("#log") or "")

    await page.fill("#token", TOKEN)
    await wait_for(page, f"() => /updated/.test(({status})())", "the calls listed with the token")
    await place_call(page, call_id, "websocket")
    ws_url = await page.evaluate("window.pbx.ws.url")
    assert "token=" in ws_url, "the WebSocket carries the token in its query"
    await page.click("#hangup")
    await wait_for(page, "() => window.pbx.state === 'ended'", "the call ended")

    await page.reload()
    await wait_for(page, "() => window.pbx && window.pbx.state === 'idle'", "the page reloaded")
    assert await page.input_value("#token") == TOKEN, "the token is kept in localStorage"
    await wait_for(page, f"() => /updated/.test(({status})())", "the calls listed after a reload")


async def test_the_token_is_never_logged(auth: AuthStack, call_id: str) -> None:
    # Requests carrying the token every way, including ones that fail after authentication.
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{auth.info.base}/call/lists", params={"token": TOKEN, "x": "1"}) as resp:
            assert resp.status == 200
        async with s.post(f"{auth.info.base}/call/kill/nope", headers=BEARER) as resp:
            assert resp.status == 404
        async with s.get(f"{auth.info.base}/call", params={"token": TOKEN, "dump": "maybe"}) as resp:
            assert resp.status == 400
    c = await CallClient.open(auth.info.ws, call_id=call_id, token=TOKEN)
    try:
        await c.invite()
        await c.send({"command": "hangup"})
        await c.event("hangup")
        await c.wait_closed()
    finally:
        await c.close()
    # The access log writes a line once a request is done: wait for the call socket's.
    deadline = time.monotonic() + 10
    while f"id={call_id} HTTP" not in auth.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the access log never showed the call socket"
        await asyncio.sleep(0.2)
    text = auth.log.read_text(errors="replace")
    assert "token=***" in text, "the access log is on and shows where the token was"
    assert TOKEN not in text
    for piece in ("3f9a1c7e", "tok-3f9a"):
        assert piece not in text, f"part of the token ({piece}) is in the logs"


def test_the_start_up_report_sees_the_token(auth: AuthStack) -> None:
    text = auth.log.read_text(errors="replace")
    assert text.count("start-up report for 127.0.0.1:") == 1
    block = text[text.index("start-up report for") :].split("\n2")[0]
    assert "1 open to whoever reaches it" in block and "OPEN  CORS_ORIGINS=*" in block
    assert "no API_TOKEN" not in block
    assert "ok    API_TOKEN set" in block
    assert "ok    LLM proxy: OPENAI_API_KEY is added only to requests that carry API_TOKEN" in block
    assert TOKEN not in block and SERVER_KEY not in block
