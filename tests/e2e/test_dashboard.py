"""The operations dashboard (`/dashboard`) in Chromium against the real stack: its charts follow calls the
test drives (active calls up and down, audio frames, latencies), and it works behind `API_TOKEN`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.load import CallLoad, LoadCall
from tests.e2e.test_playground import CHROMIUM

pytestmark = pytest.mark.e2e

TOKEN = "tok-dash-e2e-7c1d"
# The picture in the docs: written when missing or asked for, so a test run leaves the checkout clean.
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
UPDATE_SCREENSHOT = os.environ.get("PBX_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists()
VIEWPORT = {"width": 1280, "height": 860}
CALLS = 3
SILENCE = bytes(640)  # 20 ms of 16 kHz PCM


@pytest.fixture(scope="module")
def token_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    with running_stack(tmp_path_factory.mktemp("dash-token"), 1, 1, API_TOKEN=TOKEN) as info:
        yield info


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: ./scripts/setup.sh dev installs Debian's chromium"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            await browser.close()


class Dashboard:
    """The page in a browser tab, with everything it logged as an error and every request it made."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("request", lambda r: self.requests.append((r.url, r.headers)))

    @classmethod
    async def open(cls, browser: Browser, url: str) -> Dashboard:
        context = await browser.new_context(viewport=VIEWPORT)
        dash = cls(await context.new_page())
        await dash.page.goto(url)
        await dash.until("window.dash && window.dash.polls >= 2", "two answers drawn")
        return dash

    async def until(self, condition: str, what: str, timeout: float = 10.0) -> Any:
        """Wait until the JS expression `condition` (over `window.dash`) holds; explain a timeout."""
        try:
            handle = await self.page.wait_for_function(
                f"() => {condition}", timeout=timeout * 1000, polling=100
            )
        except PlaywrightTimeout:
            latest = await self.page.evaluate("window.dash && [window.dash.latest, window.dash.lastError]")
            raise AssertionError(f"{what}: not within {timeout}s; the page shows {latest}") from None
        return await handle.json_value()

    async def latest(self, chart: str) -> dict[str, float | None]:
        values: dict[str, float | None] = await self.page.evaluate(f"window.dash.latest[{chart!r}]")
        return values


async def feed(calls: list[LoadCall]) -> None:
    """Caller audio on every call, a frame every 20 ms, until cancelled."""
    while True:
        for c in calls:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                await c.ws.send_bytes(SILENCE)
        await asyncio.sleep(0.02)


async def test_charts_follow_calls(stack: StackInfo, chromium: Browser, tmp_path: Path) -> None:
    # The shortest span (30 s) draws the few seconds of this test widest in the picture for the docs.
    dash = await Dashboard.open(chromium, f"{stack.base}/dashboard?span=30")
    page = dash.page
    # The page's arithmetic, on figures with known answers (as Prometheus's histogram_quantile works).
    assert await page.evaluate("window.dash.quantile(0.5, [0.1, 1], [0, 10, 0])") == pytest.approx(0.55)
    assert await page.evaluate("window.dash.quantile(0.99, [0.1, 1], [10, 0, 0])") == pytest.approx(0.099)
    assert await page.evaluate("window.dash.quantile(0.5, [0.1, 1], [0, 0, 4])") == 1, "+Inf: the top bound"
    assert await page.evaluate("window.dash.quantile(0.5, [0.1, 1], [0, 0, 0])") is None
    cpu, rss = await dash.latest("cpu"), await dash.latest("rss")
    # Every process: 2 frontends, 2 media processes (and for up to 5 s one that an earlier test replaced).
    assert len(cpu) == len(rss) >= 4, rss
    assert all(v is None or v >= 0 for v in cpu.values()) and all(v and v > 10e6 for v in rss.values())

    load = CallLoad(stack.ws, stack.redis_url, tmp_path)
    feeder: asyncio.Task[None] | None = None
    latest = "window.dash.latest"
    try:
        if UPDATE_SCREENSHOT:
            await asyncio.sleep(8)  # a quiet stretch to the left of the calls in the picture
        calls = await load.start(CALLS, "dash")
        feeder = asyncio.create_task(feed(calls))
        # One synthesis that misses the cache, for the speech chart.
        tts = {"command": "tts", "text": f"Figures {uuid.uuid4().hex[:6]}."}
        await calls[0].ws.send_str(json.dumps(tts))
        active = f"{latest}['active-type'].all"
        peak = await dash.until(f"{active} >= {CALLS} && {active}", "active calls up")
        await dash.until(f"{latest}.frames.out > 40 && {latest}.frames.in > 40", "frames/s")
        # A rate shows for a second or so: the chart's history says whether it showed.
        drawn = "(name) => Math.max(...window.dash.series('calls')[name].map(([, v]) => v || 0))"
        await dash.until(f"({drawn})('started') > 0 && ({drawn})('answered') > 0", "setups")
        await dash.until(f"{latest}.command.p50 > 0 && {latest}.setup.p99 > 0", "latencies")
        await dash.until(f"{latest}.speech['TTS first audio p50'] > 0", "the synthesis's latency")
        hosts = await dash.latest("active-host")
        assert sum(v or 0 for v in hosts.values()) >= CALLS, hosts
        # Some more seconds of figures, then the picture for the docs, with the calls still up.
        await asyncio.sleep(10 if UPDATE_SCREENSHOT else 2)
        if UPDATE_SCREENSHOT:
            await page.screenshot(path=str(SCREENSHOT), full_page=True)
        feeder.cancel()
        await load.close()
        await dash.until(f"{active} <= {peak - CALLS}", "active calls down")
        await dash.until(f"({drawn})('ended') > 0", "ends")
    finally:
        if feeder is not None:
            feeder.cancel()
        await load.close()
    assert not dash.errors, f"the page logged errors: {dash.errors}"


async def test_works_with_the_api_token(token_stack: StackInfo, chromium: Browser) -> None:
    base = token_stack.base
    async with aiohttp.ClientSession() as http:
        for path in ("/dashboard", "/dashboard/data"):
            async with http.get(base + path) as resp:
                assert resp.status == 401
        async with http.get(base + "/static/dashboard.js") as resp:
            assert resp.status == 200, "the page's files are open, like the playground's"
    dash = await Dashboard.open(chromium, f"{base}/dashboard?token={TOKEN}")
    assert await dash.page.evaluate("window.dash.failures") == 0
    assert await dash.page.inner_text("#state") == "live"
    assert await dash.page.inner_text("#sum-procs") == "1 web + 1 media"
    data_requests = [headers for url, headers in dash.requests if url.endswith("/dashboard/data")]
    assert data_requests and all(h.get("authorization") == f"Bearer {TOKEN}" for h in data_requests)
    assert not any(TOKEN in h.get("referer", "") for _, h in dash.requests), "no Referer passes the token on"
    assert not dash.errors, f"the page logged errors: {dash.errors}"

    # A wrong token (the page's own file is open): the page says so, and keeps trying.
    page = await (await chromium.new_context()).new_page()
    await page.goto(f"{base}/static/dashboard.html?token=nope")
    await page.wait_for_function("() => window.dash && window.dash.failures >= 1", timeout=10_000)
    assert await page.inner_text("#state") == "no data"
    assert "refused" in (await page.get_attribute("#state", "title") or "")
