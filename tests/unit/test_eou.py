"""End-of-utterance decisions: local silence rule, and the HTTP EOU service with its fallback."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from common.errors import ProviderError
from common.protocol import EouOption
from tests.local_http import serve_app
from worker.speech.eou import EouDetector
from worker.urlguard import UrlGuard

# The mock service listens on 127.0.0.1: ALLOW_PRIVATE_URLS=1, as the test stacks run.
LOOPBACK = UrlGuard(allow_private=True)


class Sink:
    def __init__(self) -> None:
        self.eous: list[tuple[bool, str | None, float]] = []
        self.errors: list[ProviderError] = []
        self.t0 = time.monotonic()

    def emit(self, completed: bool, text: str | None) -> None:
        self.eous.append((completed, text, time.monotonic() - self.t0))


async def test_local_waits_for_silence_and_joins_the_turns_text() -> None:
    sink = Sink()
    eou = EouDetector(
        EouOption(type="local", timeout=200), "c1", sink.emit, sink.errors.append, guard=LOOPBACK
    )
    eou.turn_may_end("book a table")
    await asyncio.sleep(0.1)
    eou.speech_started()  # the caller goes on: no decision yet
    eou.turn_may_end("for two")
    await asyncio.sleep(0.35)
    assert [(c, t) for c, t, _ in sink.eous] == [(True, "book a table for two")]
    assert 0.29 <= sink.eous[0][2] <= 0.5
    eou.turn_may_end(None)
    await asyncio.sleep(0.3)
    assert sink.eous[-1][:2] == (True, None)
    await eou.close()


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="unknown type"):
        EouDetector(EouOption(type="magic"), "c", lambda c, t: None, lambda e: None, guard=LOOPBACK)
    with pytest.raises(ValueError, match="endpoint"):
        EouDetector(EouOption(type="tencent"), "c", lambda c, t: None, lambda e: None, guard=LOOPBACK)


async def test_service_answers_and_failures_fall_back() -> None:
    seen: list[tuple[dict[str, str], dict[str, str]]] = []
    mode = {"answer": "ok"}

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((body, dict(request.headers)))
        if mode["answer"] == "slow":
            await asyncio.sleep(1)
        if mode["answer"] == "broken":
            return web.Response(status=500)
        return web.json_response({"completed": body["text"].endswith(".")})

    app = web.Application()
    app.router.add_post("/eou", handle)
    runner, port = await serve_app(app)
    sink = Sink()
    option = EouOption(
        type="tencent",
        endpoint=f"http://127.0.0.1:{port}/eou",
        timeout=300,
        secret_id="sid",
        secret_key="skey",
    )
    eou = EouDetector(option, "c2", sink.emit, sink.errors.append, guard=LOOPBACK)
    try:
        eou.turn_may_end("I want")
        await asyncio.sleep(0.1)
        assert sink.eous[-1][:2] == (False, "I want"), "the service said the turn goes on"
        eou.turn_may_end("a table.")
        await asyncio.sleep(0.1)
        assert sink.eous[-1][:2] == (True, "I want a table.")
        body, headers = seen[-1]
        assert body == {"text": "I want a table.", "trackId": "c2"}
        assert headers["X-Secret-Id"] == "sid" and headers["X-Secret-Key"] == "skey"
        for failure in ("broken", "slow"):
            mode["answer"] = failure
            n = len(sink.eous)
            eou.turn_may_end("hello")
            await asyncio.sleep(0.9)
            assert len(sink.errors) >= 1 and "eou service" in sink.errors[-1].message
            assert sink.eous[n:] and sink.eous[-1][0] is True, (
                "the silence rule decides when the service fails"
            )
    finally:
        await eou.close()
        await runner.cleanup()


async def test_a_private_endpoint_is_refused_once_and_the_local_rule_decides() -> None:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"completed": False})

    app = web.Application()
    app.router.add_post("/eou", handle)
    runner, port = await serve_app(app)
    sink = Sink()
    option = EouOption(type="tencent", endpoint=f"http://127.0.0.1:{port}/eou?token=abc", timeout=100)
    eou = EouDetector(option, "c3", sink.emit, sink.errors.append, guard=UrlGuard())
    try:
        for text in ("book", "a table"):
            eou.turn_may_end(text)
            await asyncio.sleep(0.3)
        assert [c for c, _t, _ in sink.eous] == [True, True], "the silence rule decided both turns"
        [err] = sink.errors
        assert err.status == 403
        assert err.message == (
            f"option.eou.endpoint: http://127.0.0.1:{port}/eou?token=*** refused: 127.0.0.1 is a private "
            "address (loopback); set ALLOW_PRIVATE_URLS=1 to allow; the local rule decides"
        )
        assert not seen
    finally:
        await eou.close()
        await runner.cleanup()
