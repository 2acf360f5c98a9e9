"""The direct frontend ⇄ media process links (common/peerlink.py) seen from outside: turned off, every message
goes through Redis and calls work the same; on, their tokens never show in any API."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from common.keys import Keys
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.test_metrics import short_call, until

KEYS = Keys()

pytestmark = pytest.mark.e2e


async def test_with_links_off_everything_goes_through_redis(tmp_path: Path) -> None:
    with running_stack(tmp_path / "stack", 1, 1, MEDIA_LINK="0") as info:
        c = await CallClient.open(info.ws, call_id="nolink")
        try:
            await short_call(c, tmp_path)
            assert sum(len(f) for _, f in c.frames) >= 20 * 640, "every played frame arrived"
            await c.send({"command": "hangup"})
            await c.wait_closed()
        finally:
            await c.close()
        beat = json.loads(
            next(
                v
                for k in info.redis.scan_iter(match=KEYS.proc_pattern("media-*"))
                if (v := info.redis.get(k))
            )
        )
        assert beat["link"] is None, "a media process with links off announces none"
        figures = await until(  # media processes publish their figures about once a second
            info.base, lambda f: f.value("pbx_bus_batches_total", path="redis", role="media") >= 3
        )
        assert figures.value("pbx_bus_batches_total", path="link") == 0
        assert figures.value("pbx_bus_batches_total", path="redis", role="web") >= 3
        assert figures.value("pbx_bus_batches_total", path="redis", role="media") >= 3


async def test_link_tokens_stay_out_of_the_apis(stack: StackInfo, call_id: str) -> None:
    tokens = []
    for key in stack.redis.scan_iter(match=KEYS.proc_pattern("media-*")):
        raw = stack.redis.get(key)
        if raw and (link := json.loads(raw).get("link")):
            tokens.append(link["token"])
    assert tokens, "every media process of the shared stack announces a link"
    c = await CallClient.open(stack.ws, call_id=call_id)
    try:
        await c.invite()
        async with aiohttp.ClientSession() as http:
            for path in ("/health", "/call/lists", "/metrics"):
                async with http.get(stack.base + path) as resp:
                    text = await resp.text()
                assert not any(t in text for t in tokens), path
        dumped = json.dumps(c.events)
        assert not any(t in dumped for t in tokens)
    finally:
        await c.close()
