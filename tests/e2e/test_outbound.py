"""What a client can make the server reach, on a stack set up as for exposure: ALLOW_PRIVATE_URLS unset,
the server's own Tencent credentials in its environment, two local services listed in ALLOWED_URL_HOSTS.

A canary listens on loopback where nothing is allowed: play URLs, mediaPass bots, provider and EOU
endpoints pointed at it are refused with an error naming the field, and it never sees a connection.
"""

from __future__ import annotations

import asyncio
import json
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.embedded import free_port
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.test_recorder import stream
from tests.providers.tencent_asr import TencentAsrServer
from tests.speech import speech, with_silence

pytestmark = pytest.mark.e2e

SERVER_APPID, SERVER_SECRET_ID, SERVER_SECRET_KEY = "1300", "AKIDserverOwn", "server-secret-key"
HINT = "; set ALLOW_PRIVATE_URLS=1 to allow"


class Canary:
    """A loopback TCP port that counts every connection made to it (and answers HTTP 200 to a request)."""

    def __init__(self) -> None:
        self.connections = 0
        canary = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                canary.connections += 1
                self.request.settimeout(1)
                try:
                    self.request.recv(4096)
                    self.request.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    )
                except OSError:
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EouService:
    """An EOU endpoint (`POST /eou`) that records the headers of each request and says the turn goes on."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                service.headers.append(dict(self.headers))
                body = json.dumps({"completed": False}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Exposed:
    info: StackInfo
    canary: Canary
    eou: EouService
    tencent_port: int  # listed in ALLOWED_URL_HOSTS; a test starts the mock service on it


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposed]:
    canary, eou, tencent_port = Canary(), EouService(), free_port()
    try:
        with running_stack(
            tmp_path_factory.mktemp("exposed"),
            1,
            1,
            ALLOW_PRIVATE_URLS="0",
            ALLOWED_URL_HOSTS=f"127.0.0.1:{tencent_port},127.0.0.1:{eou.port}",
            TENCENT_APPID=SERVER_APPID,
            TENCENT_SECRET_ID=SERVER_SECRET_ID,
            TENCENT_SECRET_KEY=SERVER_SECRET_KEY,
        ) as info:
            yield Exposed(info, canary, eou, tencent_port)
    finally:
        canary.close()
        eou.close()


def speech_frames() -> list[bytes]:
    audio, _ = with_silence(0.3, speech("Please book a table for two."), 1.2)
    return [audio[i : i + 320].astype("<i2").tobytes() for i in range(0, len(audio) - 319, 320)]


async def test_play_of_a_private_url_is_refused_before_any_connection(exposed: Exposed, call_id: str) -> None:
    port = exposed.canary.port
    urls = {
        f"http://127.0.0.1:{port}/internal-admin?x=1": "127.0.0.1 is a private address (loopback)",
        f"http://[::ffff:127.0.0.1]:{port}/a.wav": "::ffff:7f00:1 is a private address (loopback)",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a private address (link-local)",
        f"http://localhost:{port}/a.wav": "localhost resolves to",
        # Nothing listens there: the same answer, so a client learns nothing about the ports inside.
        f"http://127.0.0.1:{free_port()}/internal-admin?x=1": "127.0.0.1 is a private address (loopback)",
    }
    c = await CallClient.open(exposed.info.ws, call_id=call_id)
    try:
        await c.invite()
        for url, why in urls.items():
            await c.send({"command": "play", "url": url})
            error = await c.event("error", sender=f"filetrack: {url}")
            assert error["code"] == 403
            assert error["error"].startswith(f"play.url: {url} refused: {why}"), error["error"]
            assert error["error"].endswith(HINT)
            await c.event("trackEnd", playId=url)
        assert exposed.canary.connections == 0
    finally:
        await c.close()


async def test_a_media_pass_bot_at_a_private_address_is_refused(exposed: Exposed, call_id: str) -> None:
    url = f"ws://127.0.0.1:{exposed.canary.port}/bot?token=s3cret"
    c = await CallClient.open(exposed.info.ws, call_id=call_id)
    try:
        await c.send({"command": "invite", "option": {"mediaPass": {"url": url}}})
        error = await c.event("error", sender="mediaPass")
        shown = f"ws://127.0.0.1:{exposed.canary.port}/bot?token=***"
        assert error["code"] == 403
        assert error["error"] == (
            f"option.mediaPass.url: {shown} refused: 127.0.0.1 is a private address (loopback){HINT}"
        )
        reject = await c.event("reject")
        assert reject["code"] == 403
        await c.event("hangup")
        assert exposed.canary.connections == 0
    finally:
        await c.close()


async def test_provider_endpoints_at_private_addresses_are_refused(exposed: Exposed, call_id: str) -> None:
    endpoint = f"ws://127.0.0.1:{exposed.canary.port}"
    c = await CallClient.open(exposed.info.ws, call_id=call_id)
    try:
        await c.invite(asr={"provider": "voiceapi", "endpoint": endpoint})
        error = await c.event("error", sender="voiceapi_asr")
        assert error["code"] == 403
        assert (
            error["error"]
            == f"option.asr.endpoint: {endpoint} refused: 127.0.0.1 is a private address (loopback){HINT}"
        )
        await c.send(
            {"command": "tts", "text": "hello", "option": {"provider": "voiceapi", "endpoint": endpoint}}
        )
        error = await c.event("error", sender="voiceapi_tts")
        assert error["code"] == 403 and error["error"].startswith(
            f"option.tts.endpoint: {endpoint} refused: "
        )
        await asyncio.sleep(0.5)  # a retry would come within this
        assert len([e for e in c.events if e.get("sender") == "voiceapi_asr"]) == 1, (
            "refused once, not retried"
        )
        assert exposed.canary.connections == 0
    finally:
        await c.close()


async def test_the_server_credentials_do_not_go_to_a_client_endpoint(exposed: Exposed, call_id: str) -> None:
    """An endpoint the operator allowed is reachable, but the server's own Tencent credentials are only
    sent to Tencent: a client's endpoint needs credentials of its own."""
    server = TencentAsrServer(SERVER_APPID, SERVER_SECRET_ID, SERVER_SECRET_KEY)
    server.port = exposed.tencent_port
    async with server:
        c = await CallClient.open(exposed.info.ws, call_id=call_id)
        try:
            await c.invite(asr={"provider": "tencent", "endpoint": server.ws_url}, vad={"type": "webrtc"})
            error = await c.event("error", sender="tencent_asr")
            assert error["code"] == 400
            assert error["error"] == (
                "option.asr.endpoint: a custom endpoint needs its own appId, secretId, secretKey in the "
                "option; the server's credentials are only sent to asr.cloud.tencent.com"
            )
            tts = {"provider": "tencent", "endpoint": server.ws_url}
            await c.send({"command": "tts", "text": "hello", "option": tts})
            error = await c.event("error", sender="tencent_tts")
            assert error["code"] == 400 and error["error"].startswith(
                "option.tts.endpoint: a custom endpoint"
            )
        finally:
            await c.close()
        assert not server.connections, "nothing reached the client's endpoint"


async def test_eou_sends_only_the_options_secrets(exposed: Exposed, call_id: str) -> None:
    c = await CallClient.open(exposed.info.ws, call_id=call_id)
    try:
        eou = {"type": "tencent", "endpoint": f"http://127.0.0.1:{exposed.eou.port}/eou", "timeout": 300}
        await c.invite(eou=eou)
        await stream(c, speech_frames())
        await c.event("eou", timeout=5)
        assert exposed.eou.headers, "the allowed EOU service was asked"
        for headers in exposed.eou.headers:
            sent = {k.lower(): v for k, v in headers.items()}
            assert "x-secret-id" not in sent and "x-secret-key" not in sent
            assert SERVER_SECRET_ID not in json.dumps(headers)
    finally:
        await c.close()


async def test_eou_at_a_private_address_is_refused_and_the_local_rule_decides(
    exposed: Exposed, call_id: str
) -> None:
    endpoint = f"http://127.0.0.1:{exposed.canary.port}/eou"
    c = await CallClient.open(exposed.info.ws, call_id=call_id)
    try:
        await c.invite(eou={"type": "tencent", "endpoint": endpoint, "timeout": 300})
        await stream(c, speech_frames())
        error = await c.event("error", sender="eou", timeout=5)
        assert error["code"] == 403
        assert error["error"] == (
            f"option.eou.endpoint: {endpoint} refused: 127.0.0.1 is a private address (loopback){HINT}; "
            "the local rule decides"
        )
        assert (await c.event("eou", timeout=5))["completed"] is True
        assert exposed.canary.connections == 0
    finally:
        await c.close()
