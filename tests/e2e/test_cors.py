"""CORS from a real browser: Chromium loads a page from a small server of its own (another port, so another
origin) whose script calls the stack's HTTP API, as a browser app hosted elsewhere would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, async_playwright

from common.embedded import free_port
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.test_playground import CHROMIUM
from tests.unit.test_llm_proxy import PIECES, FakeOpenAI

pytestmark = pytest.mark.e2e

TOKEN = "tok-cors-e2e-51d0"

# The page's script: `api(method, url, headers, body)` answers what the page could read of the answer, or
# the error fetch() threw (a TypeError when the browser withheld the answer).
PAGE = """<!doctype html><title>elsewhere</title><script>
window.api = async (method, url, headers, body) => {
  try {
    const resp = await fetch(url, {method, headers, body});
    return {status: resp.status, proc: resp.headers.get("X-Pbx-Proc"),
            challenge: resp.headers.get("WWW-Authenticate"), body: await resp.text()};
  } catch (e) {
    return {thrown: e.name};
  }
};
window.stream = async (url, headers, body) => {
  const resp = await fetch(url, {method: "POST", headers, body});
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  window.first = decoder.decode((await reader.read()).value);
  let rest = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return {status: resp.status, first: window.first, rest};
    rest += decoder.decode(value);
  }
};
</script>"""


async def _page(_: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


@pytest.fixture
async def elsewhere() -> AsyncIterator[Page]:
    """Chromium with nothing loaded yet; `visit(page, port)` opens the page served on that port."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = await (await browser.new_context()).new_page()
            yield page
        finally:
            await browser.close()


async def visit(page: Page, port: int = 0) -> TestServer:
    """Serve the page on 127.0.0.1:`port` (0: any free port) and open it; the caller closes the server."""
    app = web.Application()
    app.router.add_get("/", _page)
    server = TestServer(app, host="127.0.0.1", port=port or free_port())
    await server.start_server()
    await page.goto(str(server.make_url("/")))
    return server


async def call(
    page: Page, method: str, url: str, headers: dict[str, str] | None = None, body: str = ""
) -> Any:
    return await page.evaluate(
        "([m, u, h, b]) => window.api(m, u, h, b || undefined)", [method, url, headers or {}, body]
    )


async def test_a_page_elsewhere_uses_the_api_by_default(stack: StackInfo, elsewhere: Page) -> None:
    server = await visit(elsewhere)
    try:
        assert server.make_url("/").port != int(stack.base.rsplit(":", 1)[1]), "another origin"
        ice = await call(elsewhere, "GET", f"{stack.base}/iceservers")
        assert ice.get("status") == 200 and isinstance(json.loads(ice["body"]), list), ice
        assert ice["proc"], "X-Pbx-Proc is readable"
        listed = await call(elsewhere, "GET", f"{stack.base}/call/lists")
        assert listed["status"] == 200 and "calls" in json.loads(listed["body"]), listed
        # A JSON body makes the browser ask first (preflight); RustPBX apps kill calls this way.
        kill = await call(
            elsewhere, "POST", f"{stack.base}/call/kill/nope", {"Content-Type": "application/json"}, "{}"
        )
        assert kill["status"] == 404 and json.loads(kill["body"])["code"] == "CALL_NOT_FOUND", kill
        # active-call's routes alike.
        active = await call(elsewhere, "GET", f"{stack.base}/list")
        assert active["status"] == 200 and "active_calls" in json.loads(active["body"]), active
        sent = await call(
            elsewhere,
            "POST",
            f"{stack.base}/command/nope",
            {"Content-Type": "application/json"},
            '{"command": "hangup"}',
        )
        assert sent["status"] == 404 and json.loads(sent["body"])["status"] == "not_found", sent
    finally:
        await server.close()


@dataclass
class NarrowStack:
    info: StackInfo
    page_port: int
    llm_port: int


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NarrowStack]:
    """A stack with a token whose CORS_ORIGINS lists one page's origin only."""
    page_port, llm_port = free_port(), free_port()
    with running_stack(
        tmp_path_factory.mktemp("cors"),
        1,
        1,
        API_TOKEN=TOKEN,
        CORS_ORIGINS=f"http://127.0.0.1:{page_port}",
        OPENAI_BASE_URL=f"http://127.0.0.1:{llm_port}/v1",
    ) as info:
        yield NarrowStack(info, page_port, llm_port)


@pytest.fixture
async def upstream(narrow: NarrowStack) -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", fake.handle)
    async with TestServer(app, host="127.0.0.1", port=narrow.llm_port):
        yield fake


async def test_the_listed_page_with_the_token(
    narrow: NarrowStack, elsewhere: Page, upstream: FakeOpenAI
) -> None:
    base = narrow.info.base
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    server = await visit(elsewhere, narrow.page_port)
    try:
        refused = await call(elsewhere, "GET", f"{base}/call/lists")
        assert refused.get("status") == 401 and json.loads(refused["body"])["code"] == "UNAUTHORIZED", refused
        assert refused["challenge"].startswith("Bearer")
        listed = await call(elsewhere, "GET", f"{base}/call/lists", bearer)
        assert listed["status"] == 200, listed
        kill = await call(elsewhere, "POST", f"{base}/call/kill/nope", bearer)
        assert kill["status"] == 404, kill

        # A streamed completion is read chunk by chunk: the first arrives while the service holds the rest.
        body = json.dumps({"model": "gpt-test", "messages": [], "stream": True})
        streaming = asyncio.create_task(
            elsewhere.evaluate(
                "([u, h, b]) => window.stream(u, h, b)",
                [f"{base}/llm/v1/chat/completions", {**bearer, "Content-Type": "application/json"}, body],
            )
        )
        first = await elsewhere.wait_for_function("() => window.first", timeout=10_000)
        assert PIECES[0] in await first.json_value()
        upstream.release.set()
        done = await streaming
        assert done["status"] == 200 and "[DONE]" in done["rest"], done
    finally:
        await server.close()


async def test_another_page_cannot_read(narrow: NarrowStack, elsewhere: Page) -> None:
    server = await visit(elsewhere)
    try:
        for method in ("GET", "POST"):
            path = "/call/lists" if method == "GET" else "/call/kill/nope"
            got = await call(
                elsewhere, method, f"{narrow.info.base}{path}", {"Authorization": f"Bearer {TOKEN}"}
            )
            assert got == {"thrown": "TypeError"}, got
    finally:
        await server.close()
