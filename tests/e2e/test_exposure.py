"""A stack without API_TOKEN, attacked from outside: the LLM proxy lends its key to nobody unless opened, new
calls from one address are held to the per-address limit by every frontend, and the start-up report says
what is open, once."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from common.embedded import free_port
from tests.e2e.conftest import StackInfo, running_stack
from tests.unit.test_llm_proxy import COMPLETION, FakeOpenAI

pytestmark = pytest.mark.e2e

SERVER_KEY = "sk-server-exposure-0123456789"
CLIENT_KEY = "sk-client-exposure-abcdef"
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}
# New calls one address may open at once on the closed stack (and one more a minute).
BURST = 4


@dataclass
class Exposed:
    info: StackInfo
    log: Path
    llm_port: int


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposed]:
    """The defaults a first deployment has (no API_TOKEN, CORS `*`) with an OPENAI_API_KEY, and a per-address
    call limit small enough to reach; bound to loopback, as every test stack is (the report of the default
    bind, every interface, is tests/unit/test_exposure.py's)."""
    root = tmp_path_factory.mktemp("closed")
    log, llm_port = root / "stack.log", free_port()
    with running_stack(
        root,
        1,
        2,
        log=log,
        OPENAI_BASE_URL=f"http://127.0.0.1:{llm_port}/v1",
        OPENAI_API_KEY=SERVER_KEY,
        CALLS_PER_IP_PER_MIN="1",
        CALLS_PER_IP_BURST=str(BURST),
        ALLOW_PRIVATE_URLS="0",  # a first deployment's default (the test stacks otherwise allow them)
    ) as info:
        yield Exposed(info, log, llm_port)


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposed]:
    """The LLM proxy opened (LLM_PROXY_OPEN=1), private URLs allowed, on loopback only."""
    root = tmp_path_factory.mktemp("opened")
    log, llm_port = root / "stack.log", free_port()
    with running_stack(
        root,
        1,
        1,
        log=log,
        OPENAI_BASE_URL=f"http://127.0.0.1:{llm_port}/v1",
        OPENAI_API_KEY=SERVER_KEY,
        LLM_PROXY_OPEN="1",
        ALLOW_PRIVATE_URLS="1",
    ) as info:
        yield Exposed(info, log, llm_port)


async def serve_fake(port: int) -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", fake.handle)
    async with TestServer(app, host="127.0.0.1", port=port):
        yield fake


@pytest.fixture
async def closed_upstream(closed: Exposed) -> AsyncIterator[FakeOpenAI]:
    async for fake in serve_fake(closed.llm_port):
        yield fake


@pytest.fixture
async def opened_upstream(opened: Exposed) -> AsyncIterator[FakeOpenAI]:
    async for fake in serve_fake(opened.llm_port):
        yield fake


def report(log: Path) -> list[str]:
    """The start-up report's lines in a stack's output; there must be exactly one report."""
    text = log.read_text(errors="replace")
    assert text.count("start-up report for") == 1, "one report per start, not one per frontend"
    lines = text.splitlines()
    (at,) = [i for i, line in enumerate(lines) if "start-up report for" in line]
    block = [lines[at]]
    for line in lines[at + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line)
    assert SERVER_KEY not in text
    return block


async def test_the_proxy_lends_its_key_to_nobody(closed: Exposed, closed_upstream: FakeOpenAI) -> None:
    url = f"{closed.info.base}/llm/v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=BODY, headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            error = await resp.json()
        assert closed_upstream.seen == [], "nothing went upstream, with or without the key"
        assert error["code"] == "UNAUTHORIZED" and "LLM_PROXY_OPEN" in error["details"]
        # A caller with a key of its own is a plain proxy's client, as before.
        own = {"Authorization": f"Bearer {CLIENT_KEY}", "Origin": "https://app.example", "Cookie": "a=b"}
        async with s.post(url, json=BODY, headers=own) as resp:
            assert resp.status == 200 and await resp.json() == COMPLETION
    seen = closed_upstream.last.headers
    assert seen.getall("Authorization") == [f"Bearer {CLIENT_KEY}"]
    assert "Origin" not in seen and "Cookie" not in seen


async def test_an_opened_proxy_lends_it(opened: Exposed, opened_upstream: FakeOpenAI) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{opened.info.base}/llm/v1/chat/completions", json=BODY) as resp:
            assert resp.status == 200 and await resp.json() == COMPLETION
    assert opened_upstream.last.headers.getall("Authorization") == [f"Bearer {SERVER_KEY}"]


def test_the_report_of_the_defaults_on_loopback(closed: Exposed) -> None:
    block = report(closed.log)
    assert re.search(
        r"WARNING web\[\d+\] pbx\.frontend\.exposure .*start-up report for 127\.0\.0\.1:\d+: 1 open", block[0]
    )
    assert block[1].startswith("  OPEN  CORS_ORIGINS=*")
    assert any("no API_TOKEN, but bound to loopback only" in line for line in block)
    assert any(line.startswith("  ok    LLM proxy: OPENAI_API_KEY is lent to nobody") for line in block)
    assert any(
        line.startswith("  ok    new calls: 1 a minute per client address, 4 at once") for line in block
    )


def test_the_report_of_an_opened_proxy_on_loopback(opened: Exposed) -> None:
    block = report(opened.log)
    assert "start-up report for 127.0.0.1:" in block[0] and "3 open" in block[0]
    assert [line.split(":")[0] for line in block[1:4]] == [
        "  OPEN  LLM proxy open (LLM_PROXY_OPEN)",
        "  OPEN  ALLOW_PRIVATE_URLS",
        "  OPEN  CORS_ORIGINS=*",
    ]
    assert any("no API_TOKEN, but bound to loopback only" in line for line in block)


async def _open(session: aiohttp.ClientSession, base: str) -> tuple[int, str]:
    """(101 or the refusal's status, the frontend that answered) for one new call socket."""
    try:
        ws = await session.ws_connect(f"{base}/call")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.headers is not None
        return exc.status, exc.headers.get("X-Pbx-Proc", "")
    proc = ws._response.headers.get("X-Pbx-Proc", "")
    await ws.close()
    return 101, proc


async def test_new_calls_per_address_are_counted_by_every_frontend(closed: Exposed) -> None:
    opened_on: list[str] = []
    refused_by: set[str] = set()
    # A connection of its own for each attempt: a refused one is kept alive and would stay on its frontend.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        # Until both frontends have refused one: a frontend counting alone would let BURST more through.
        for _ in range(60):
            status, proc = await _open(s, closed.info.ws)
            if status == 101:
                opened_on.append(proc)
            else:
                assert status == 429
                refused_by.add(proc)
            if len(refused_by) == 2:
                break
        assert len(refused_by) == 2, "every refusal came from one frontend"
        assert len(opened_on) == BURST, f"{len(opened_on)} calls opened from one address"
        async with s.get(f"{closed.info.base}/call") as resp:  # as a WebSocket would, minus the upgrade
            assert resp.status == 400, "a plain GET is still a 400: only upgrades count"
        resp = await s.get(
            f"{closed.info.base}/call",
            headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
        )  # fmt: skip
        assert resp.status == 429
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        body = await resp.json()
        assert body["code"] == "RATE_LIMITED" and body["error"] == "too many new calls from this address"
        assert "127.0.0.1" in body["details"] and "CALLS_PER_IP_PER_MIN" in body["details"]
        resp.release()
