"""`/llm/v1/{path}` between the official `openai` client and a local OpenAI-compatible stand-in.

The proxy runs in-process with only its own routes (no Redis). Streaming is checked by ordering, not timing:
the stand-in holds back the rest of a stream until the test has seen its first chunk.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from common.config import Settings
from common.embedded import free_port
from frontend import llm
from frontend.errors import errors_middleware
from frontend.keys import SETTINGS

SERVER_KEY = "sk-server-0123456789-s3cret"
CLIENT_KEY = "sk-client-abcdef"
MODELS = {"object": "list", "data": [{"id": "gpt-test", "object": "model", "created": 0, "owned_by": "test"}]}
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-test",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello there!"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}
PIECES = ["Hel", "lo", " there", "!"]
MESSAGES: Any = [{"role": "user", "content": "Hi"}]


def sse_chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    chunk = {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


@dataclass
class Seen:
    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]
    body: bytes


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeOpenAI:
    """An OpenAI-compatible service under `/v1`: records every request; `answer` overrides the reply."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.answer: Answer | None = None
        # A stream's first chunk goes out at once, the rest only once `release` is set.
        self.release = asyncio.Event()
        self.release_timed_out = False
        # Set when the proxy dropped the connection under a stream that was still going.
        self.closed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.rel_url.raw_query_string,
                CIMultiDict(request.headers),
                body,
            )
        )
        if self.answer is not None:
            return await self.answer(request)
        tail = request.match_info["tail"]
        if tail == "models":
            return web.json_response(MODELS, headers={"X-Request-Id": "req-models"})
        if tail == "chat/completions":
            if json.loads(body).get("stream"):
                return await self._stream(request)
            return web.json_response(COMPLETION)
        return web.json_response({"error": {"message": "no such route"}}, status=404)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(sse_chunk(PIECES[0]))
        try:
            await asyncio.wait_for(self.release.wait(), 10)
        except TimeoutError:
            self.release_timed_out = True
        for piece in PIECES[1:]:
            await resp.write(sse_chunk(piece))
        await resp.write(sse_chunk(None, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def silent_stream(self, request: web.Request) -> web.StreamResponse:
        """One chunk, then nothing until the proxy goes away (a model that is still thinking)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse_chunk(PIECES[0]))
        try:
            await asyncio.Event().wait()
        finally:
            # The stand-in's server cancels its handler when the connection drops.
            self.closed.set()
        return resp

    async def endless_stream(self, request: web.Request) -> web.StreamResponse:
        """A chunk every 10 ms until a write fails or the connection drops."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(sse_chunk("tok"))
                await asyncio.sleep(0.01)
        except ConnectionError:
            self.closed.set()
            return resp
        finally:
            self.closed.set()

    @property
    def last(self) -> Seen:
        assert self.seen, "the stand-in saw no request"
        return self.seen[-1]


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    """The stand-in and its base URL (`http://127.0.0.1:<port>/v1`)."""
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, str(server.make_url("/v1"))
    finally:
        await server.close()


def proxy_app(base: str, api_key: str = SERVER_KEY, **settings: Any) -> web.Application:
    """An app with only the llm routes (and the JSON error middleware), as `create_app` wires them; open
    (`LLM_PROXY_OPEN`: the key is lent to any caller) unless `settings` say otherwise."""
    app = web.Application(middlewares=[errors_middleware])
    settings = {"llm_proxy_open": True, **settings}
    app[SETTINGS] = Settings(openai_base_url=base, openai_api_key=api_key, **settings)
    app.cleanup_ctx.append(llm.session_ctx)
    llm.setup_routes(app)
    return app


@pytest.fixture
async def start_proxy() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Start a proxy in front of `base`; returns its root URL.

    `cancel_on_disconnect=False` serves it as gunicorn's aiohttp worker does, where a handler is not cancelled
    when its client leaves; aiohttp's TestServer does cancel it.
    """
    closers: list[Callable[[], Awaitable[None]]] = []

    async def start(
        base: str, api_key: str = SERVER_KEY, cancel_on_disconnect: bool = True, **settings: Any
    ) -> str:
        app = proxy_app(base, api_key, **settings)
        if cancel_on_disconnect:
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            closers.append(server.close)
            return str(server.make_url("")).rstrip("/")
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        closers.append(runner.cleanup)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for close in reversed(closers):
        await close()


def openai_client(proxy: str, api_key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{proxy}/llm/v1", api_key=api_key, max_retries=0, timeout=20)


async def test_chat_completion(upstream: tuple[FakeOpenAI, str], start_proxy: Any) -> None:
    fake, base = upstream
    async with openai_client(await start_proxy(base)) as client:
        completion = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello there!"
    assert completion.usage is not None and completion.usage.total_tokens == 6
    seen = fake.last
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert json.loads(seen.body) == {"model": "gpt-test", "messages": MESSAGES}
    assert seen.headers["Content-Type"] == "application/json"


async def test_streaming_chat_completion_arrives_chunk_by_chunk(
    upstream: tuple[FakeOpenAI, str], start_proxy: Any
) -> None:
    fake, base = upstream
    pieces: list[str] = []
    async with openai_client(await start_proxy(base)) as client:
        stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        async for chunk in stream:
            content = chunk.choices[0].delta.content
            if content:
                pieces.append(content)
                # The stand-in sends the rest only now: a proxy that buffered would never get here in time.
                fake.release.set()
    assert pieces == PIECES
    assert not fake.release_timed_out


async def test_models_list(upstream: tuple[FakeOpenAI, str], start_proxy: Any) -> None:
    fake, base = upstream
    proxy = await start_proxy(base)
    async with openai_client(proxy) as client:
        page = await client.models.list()
    assert [m.id for m in page.data] == ["gpt-test"]
    assert (fake.last.method, fake.last.path) == ("GET", "/v1/models")
    async with aiohttp.ClientSession() as session, session.get(f"{proxy}/llm/v1/models") as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "req-models"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert await resp.json() == MODELS


@pytest.mark.parametrize(
    ("status", "error_type", "headers"),
    [(401, openai.AuthenticationError, {}), (429, openai.RateLimitError, {"Retry-After": "7"})],
)
async def test_upstream_errors_pass_through(
    upstream: tuple[FakeOpenAI, str],
    start_proxy: Any,
    status: int,
    error_type: type[openai.APIStatusError],
    headers: dict[str, str],
) -> None:
    fake, base = upstream
    payload = {
        "error": {"message": f"nope {status}", "type": "test_error", "param": None, "code": str(status)}
    }

    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.json_response(payload, status=status, headers=headers)

    fake.answer = refuse
    async with openai_client(await start_proxy(base)) as client:
        with pytest.raises(error_type) as caught:
            await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert caught.value.status_code == status
    assert caught.value.response.json() == payload
    for name, value in headers.items():
        assert caught.value.response.headers[name] == value
    assert len(fake.seen) == 1


async def test_upstream_down_is_a_502_json_error(start_proxy: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    proxy = await start_proxy(f"http://127.0.0.1:{port}/v1")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy}/llm/v1/chat/completions", json={"model": "gpt-test", "messages": MESSAGES}
        ) as resp,
    ):
        assert resp.status == 502
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["code"] == "PROVIDER_ERROR"
    assert set(body) == {"error", "code", "details"}
    assert f"127.0.0.1:{port}" in body["details"]
    assert SERVER_KEY not in json.dumps(body)
    assert SERVER_KEY not in caplog.text

    async with openai_client(proxy) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.models.list()
    assert caught.value.status_code == 502


async def test_connect_timeout_is_a_502_json_error(start_proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A TLS handshake that never gets an answer: the connection is not made within the connect timeout.
    monkeypatch.setattr(llm, "CONNECT_TIMEOUT", 0.2)
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await start_proxy(f"https://127.0.0.1:{port}/v1")
        async with aiohttp.ClientSession() as session, session.get(f"{proxy}/llm/v1/models") as resp:
            assert resp.status == 502
            body = await resp.json()
        assert body == {
            "error": "the LLM service is unreachable",
            "code": "PROVIDER_ERROR",
            "details": f"127.0.0.1:{port}: no connection within 0.2 s",
        }
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_key_added_when_the_client_sends_none(
    upstream: tuple[FakeOpenAI, str], start_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake, base = upstream
    proxy = await start_proxy(base)
    async with aiohttp.ClientSession() as session, session.get(f"{proxy}/llm/v1/models") as resp:
        assert resp.status == 200
    assert fake.last.headers.getall("Authorization") == [f"Bearer {SERVER_KEY}"]
    assert SERVER_KEY not in caplog.text


async def test_the_clients_own_key_wins(upstream: tuple[FakeOpenAI, str], start_proxy: Any) -> None:
    fake, base = upstream
    async with openai_client(await start_proxy(base)) as client:
        await client.models.list()
    assert fake.last.headers.getall("Authorization") == [f"Bearer {CLIENT_KEY}"]


async def test_no_key_configured_adds_none(upstream: tuple[FakeOpenAI, str], start_proxy: Any) -> None:
    fake, base = upstream
    proxy = await start_proxy(base, api_key="")
    async with aiohttp.ClientSession() as session, session.get(f"{proxy}/llm/v1/models") as resp:
        assert resp.status == 200
    assert "Authorization" not in fake.last.headers


async def test_a_closed_proxy_lends_no_key(
    upstream: tuple[FakeOpenAI, str], start_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # OPENAI_API_KEY set, no API_TOKEN, not opened: an open relay unless requests without a key stop here.
    caplog.set_level(logging.DEBUG)
    fake, base = upstream
    proxy = await start_proxy(base, llm_proxy_open=False)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy}/llm/v1/chat/completions", json={"model": "gpt-test"}) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            body = await resp.json()
        assert fake.seen == [], "nothing went upstream"
        assert body["code"] == "UNAUTHORIZED" and set(body) == {"error", "code", "details"}
        assert "LLM_PROXY_OPEN" in body["details"] and "API_TOKEN" in body["details"]
        assert SERVER_KEY not in json.dumps(body)
        # A caller with a key of its own is served with it, as before.
        async with openai_client(proxy) as client:
            await client.models.list()
        assert fake.last.headers.getall("Authorization") == [f"Bearer {CLIENT_KEY}"]
    assert SERVER_KEY not in caplog.text


async def test_trust_clients_opens_the_proxy(upstream: tuple[FakeOpenAI, str], start_proxy: Any) -> None:
    fake, base = upstream
    proxy = await start_proxy(base, llm_proxy_open=False, trust_clients=True)
    async with aiohttp.ClientSession() as session, session.get(f"{proxy}/llm/v1/models") as resp:
        assert resp.status == 200
    assert fake.last.headers.getall("Authorization") == [f"Bearer {SERVER_KEY}"]


async def test_a_closed_proxy_without_a_key_forwards_as_before(
    upstream: tuple[FakeOpenAI, str], start_proxy: Any
) -> None:
    # No OPENAI_API_KEY (a local model server that needs none): nothing to lend, nothing to refuse.
    fake, base = upstream
    proxy = await start_proxy(base, api_key="", llm_proxy_open=False)
    async with aiohttp.ClientSession() as session, session.get(f"{proxy}/llm/v1/models") as resp:
        assert resp.status == 200
    assert "Authorization" not in fake.last.headers


async def test_browser_and_network_headers_stay_here(
    upstream: tuple[FakeOpenAI, str], start_proxy: Any
) -> None:
    fake, base = upstream

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({}, headers={"Set-Cookie": "__cf_bm=abc; Path=/", "X-Up": "1"})

    fake.answer = answer
    proxy = await start_proxy(base)
    headers = {
        "Origin": "https://app.example.com",
        "Referer": "https://app.example.com/private/page?user=42",
        "Cookie": "session=other-apps-cookie",
        "Sec-Fetch-Site": "cross-site",
        "Sec-Fetch-Mode": "cors",
        "Sec-CH-UA": '"Chromium";v="130"',
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Real-IP": "203.0.113.7",
        "Forwarded": "for=203.0.113.7",
        "Via": "1.1 lb",
        "X-Custom": "kept",
        "Accept-Language": "fr",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy}/llm/v1/chat/completions", data=b"{}", headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Up"] == "1"
        assert "Set-Cookie" not in resp.headers, "the service's cookies are not set on this server's origin"
    seen = fake.last.headers
    for name in headers:
        if name not in ("X-Custom", "Accept-Language"):
            assert name not in seen, name
    assert seen["X-Custom"] == "kept" and seen["Accept-Language"] == "fr"


async def test_hop_by_hop_headers_are_not_forwarded(
    upstream: tuple[FakeOpenAI, str], start_proxy: Any
) -> None:
    fake, base = upstream

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({}, headers={"Keep-Alive": "timeout=99", "X-Up": "1"})

    fake.answer = answer
    proxy = await start_proxy(base)
    headers = {
        "Connection": "keep-alive, X-Only-This-Hop",
        "X-Only-This-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Trailer": "X-Checksum",
        "Proxy-Authorization": "Basic dTpw",
        "X-Custom": "kept",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy}/llm/v1/chat/completions",
            data=b"{}",
            headers=headers,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["X-Up"] == "1"
        assert resp.headers.get("Keep-Alive") != "timeout=99"
    seen = fake.last.headers
    for name in ("X-Only-This-Hop", "Keep-Alive", "TE", "Trailer", "Proxy-Authorization", "Accept-Encoding"):
        assert name not in seen, name
    assert seen.get("Connection", "keep-alive").lower() == "keep-alive"  # aiohttp's own, not the client's
    assert seen["X-Custom"] == "kept"
    assert seen["Host"] == URL(base).raw_authority
    assert seen["Content-Length"] == "2"
    assert fake.last.body == b"{}"


async def test_path_and_query_are_forwarded_as_sent(
    upstream: tuple[FakeOpenAI, str], start_proxy: Any
) -> None:
    fake, base = upstream
    proxy = await start_proxy(base)
    url = URL(f"{proxy}/llm/v1/files/file-1/content?limit=2&after=a%20b&flag", encoded=True)
    async with aiohttp.ClientSession() as session:
        async with session.delete(url) as resp:
            assert resp.status == 404  # the stand-in's own answer, passed through
        assert (fake.last.method, fake.last.path) == ("DELETE", "/v1/files/file-1/content")
        assert fake.last.query_string == "limit=2&after=a%20b&flag"


async def test_dot_segments_are_refused(upstream: tuple[FakeOpenAI, str], start_proxy: Any) -> None:
    fake, base = upstream
    proxy = await start_proxy(base)
    async with aiohttp.ClientSession() as session:
        for path in ("/llm/v1/../admin", "/llm/v1/%2e%2e/admin", "/llm/v1/./models"):
            async with session.get(URL(proxy + path, encoded=True)) as resp:
                assert resp.status == 400, path
                assert (await resp.json())["code"] == "BAD_REQUEST"
    assert fake.seen == []


async def test_compressed_bodies_pass_through_unchanged(
    upstream: tuple[FakeOpenAI, str], start_proxy: Any
) -> None:
    fake, base = upstream
    packed = gzip.compress(json.dumps(MODELS).encode())

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=packed, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    fake.answer = answer
    proxy = await start_proxy(base)
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(f"{proxy}/llm/v1/models", headers={"Accept-Encoding": "gzip"}) as resp,
    ):
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(packed))
        assert await resp.read() == packed
    assert fake.last.headers["Accept-Encoding"] == "gzip"
    async with openai_client(proxy) as client:
        page = await client.models.list()
    assert [m.id for m in page.data] == ["gpt-test"]


async def read_first_chunk_and_leave(proxy: str) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{proxy}/llm/v1/chat/completions",
            json={"model": "gpt-test", "messages": MESSAGES, "stream": True},
        )
        assert resp.status == 200
        assert (await resp.content.readany()).startswith(b"data: ")
        # Drops the connection mid-body (the answer is not read to its end).
        resp.close()


@pytest.mark.parametrize("cancel_on_disconnect", [True, False], ids=["handler-cancelled", "gunicorn-like"])
async def test_client_leaving_a_silent_stream_cancels_the_upstream(
    upstream: tuple[FakeOpenAI, str], start_proxy: Any, cancel_on_disconnect: bool
) -> None:
    fake, base = upstream
    fake.answer = fake.silent_stream
    await read_first_chunk_and_leave(await start_proxy(base, cancel_on_disconnect=cancel_on_disconnect))
    # Nothing more comes from upstream, so only noticing the client itself can end the request.
    await asyncio.wait_for(fake.closed.wait(), 10)


async def test_client_leaving_a_running_stream_closes_the_upstream(
    upstream: tuple[FakeOpenAI, str],
    start_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pbx.frontend.llm")
    # Only the failing write to the client can notice it left.
    monkeypatch.setattr(llm, "CLIENT_CHECK_INTERVAL", 3600.0)
    fake, base = upstream
    fake.answer = fake.endless_stream
    await read_first_chunk_and_leave(await start_proxy(base, cancel_on_disconnect=False))
    await asyncio.wait_for(fake.closed.wait(), 10)
    assert "client left after" in caplog.text


async def test_upstream_failing_mid_stream_cuts_the_clients_body(
    upstream: tuple[FakeOpenAI, str], start_proxy: Any
) -> None:
    fake, base = upstream

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse_chunk(PIECES[0]))
        assert request.transport is not None
        request.transport.close()  # no final chunk: the body is incomplete
        return resp

    fake.answer = cut
    proxy = await start_proxy(base)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{proxy}/llm/v1/chat/completions", json={"stream": True})
        assert resp.status == 200
        # The client must see the cut, not a body that ends normally after the first chunk.
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        resp.close()
