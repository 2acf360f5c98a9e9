"""The rule for outbound requests (worker/urlguard.py): address classes, resolution, redirects, schemes.

"Public" names are tested without the internet: a fake resolver answers for them, and the servers the
sessions reach listen on 127.0.0.1, allowed as a trusted destination where a test needs a reachable one.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from common.config import Settings
from common.embedded import free_port
from worker.urlguard import HTTP, MAX_REDIRECTS, WS, GuardedResolver, UrlGuard, UrlRefused, address_kind


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private network"),
        ("172.16.0.1", "private network"),
        ("172.31.255.255", "private network"),
        ("192.168.1.1", "private network"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("100.64.0.1", "shared, CGNAT"),
        ("100.127.255.254", "shared, CGNAT"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.0.8", "IETF protocol assignments"),
        ("192.0.2.10", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private network"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::127.0.0.1", "reserved"),  # IPv4-compatible, deprecated
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b:1::1", "local NAT64"),
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("2001::1", "IETF protocol assignments"),  # Teredo
        ("100::1", "discard-only"),
    ],
)
def test_non_public_addresses(address: str, kind: str) -> None:
    assert address_kind(address) == kind


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "172.32.0.1",  # just past 172.16/12
        "100.128.0.1",  # just past 100.64/10
        "11.0.0.1",
        "223.255.255.254",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses(address: str) -> None:
    assert address_kind(address) is None


def test_text_that_is_no_address() -> None:
    with pytest.raises(ValueError):
        address_kind("localhost")


# --- resolution ---------------------------------------------------------------------------------------


class FakeResolver(AbstractResolver):
    """Answers from a table of names; counts the lookups."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        host = host.lower().rstrip(".")
        if host not in self.table:
            raise OSError(f"{host}: no such name")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in self.table[host]
        ]

    async def close(self) -> None:
        pass


NAMES = {
    "public.test": ["93.184.216.34", "2606:2800:220:1::1"],
    "mixed.test": ["10.0.0.5", "93.184.216.34", "::1", "fd00::1", "2606:2800:220:1::1"],
    "internal.test": ["10.0.0.5"],
    "loopback.test": ["127.0.0.1", "::1"],
    "metadata.test": ["169.254.169.254"],
}


async def resolved(guard: UrlGuard, host: str, port: int = 443) -> list[str]:
    resolver = GuardedResolver(guard, FakeResolver(NAMES))
    return [r["host"] for r in await resolver.resolve(host, port, socket.AF_UNSPEC)]


async def test_public_answers_pass() -> None:
    assert await resolved(UrlGuard(), "public.test") == NAMES["public.test"]


async def test_mixed_answers_keep_only_the_public_addresses() -> None:
    # A connection goes only to what the resolver returns: never to the private half.
    assert await resolved(UrlGuard(), "mixed.test") == ["93.184.216.34", "2606:2800:220:1::1"]


@pytest.mark.parametrize(
    ("host", "text"),
    [
        ("internal.test", "internal.test resolves to a private address (10.0.0.5, private network)"),
        ("metadata.test", "metadata.test resolves to a private address (169.254.169.254, link-local)"),
        (
            "loopback.test",
            "loopback.test resolves to private addresses only (127.0.0.1 loopback, ::1 loopback)",
        ),
    ],
)
async def test_private_answers_are_refused(host: str, text: str) -> None:
    with pytest.raises(UrlRefused) as info:
        await resolved(UrlGuard(), host)
    assert str(info.value) == f"{text}; set ALLOW_PRIVATE_URLS=1 to allow"


async def test_allowed_private_answers_and_trusted_destinations() -> None:
    assert await resolved(UrlGuard(allow_private=True), "loopback.test") == NAMES["loopback.test"]
    trusted = UrlGuard(trusted=frozenset({("internal.test", 8000), ("loopback.test", None)}))
    assert await resolved(trusted, "internal.test", 8000) == ["10.0.0.5"]
    assert await resolved(trusted, "INTERNAL.test.", 8000) == ["10.0.0.5"]
    assert await resolved(trusted, "loopback.test", 1234) == NAMES["loopback.test"]
    with pytest.raises(UrlRefused):
        await resolved(trusted, "internal.test", 8001)  # another port of that host is not the destination


def test_trusted_destinations_from_the_settings() -> None:
    settings = Settings.from_env(
        {
            "ALLOWED_URL_HOSTS": "bots.internal, 10.0.0.7:9000, [fd00::5]:80",
            "VOICEAPI_ENDPOINT": "voiceapi.internal",  # a bare host means wss
            "SIP_WEBHOOK_URL": "http://127.0.0.1:8111/hook?token=x",
        },
        dotenv=None,
    )
    guard = UrlGuard.from_settings(settings, ["asr.cloud.tencent.com:443"])
    assert not guard.allow_private
    assert guard.trusted == {
        ("bots.internal", None),
        ("10.0.0.7", 9000),
        ("fd00::5", 80),
        ("voiceapi.internal", 443),
        ("127.0.0.1", 8111),
        ("asr.cloud.tencent.com", 443),
    }
    for env in ({"ALLOW_PRIVATE_URLS": "1"}, {"TRUST_CLIENTS": "true"}):
        assert UrlGuard.from_settings(Settings.from_env(env, dotenv=None)).allow_private
    assert not UrlGuard.from_settings(Settings.from_env({}, dotenv=None)).allow_private


def test_trusting_adds_one_destination() -> None:
    guard = UrlGuard().trusting("ws://localhost:8000")
    assert guard.allows_any_address("localhost", 8000)
    assert not guard.allows_any_address("localhost", 8001)
    assert not UrlGuard().allows_any_address("localhost", 8000)


# --- sessions against real sockets ---------------------------------------------------------------------


@dataclass
class Site:
    port: int
    hits: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def serve(site: Site) -> web.AppRunner:
    async def hit(request: web.Request) -> web.StreamResponse:
        site.hits.append(request.path_qs)
        if request.path == "/redirect":
            raise web.HTTPFound(request.query["to"])
        if request.path == "/loop":
            raise web.HTTPFound("/loop")
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close()
            return ws
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hit)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", site.port).start()
    return runner


@pytest.fixture
async def sites() -> AsyncIterator[tuple[Site, Site]]:
    a, b = Site(free_port()), Site(free_port())
    runners = [await serve(a), await serve(b)]
    yield a, b
    for runner in runners:
        await runner.cleanup()


def fake_names(guard: UrlGuard, table: dict[str, list[str]]) -> UrlGuard:
    return UrlGuard(guard.allow_private, guard.trusted, new_resolver=lambda: FakeResolver(table))


async def get(guard: UrlGuard, url: str, schemes: frozenset[str] = HTTP) -> str:
    async with guard.session(schemes) as http, http.get(url) as resp:
        return await resp.text()


async def refusal(guard: UrlGuard, url: str, schemes: frozenset[str] = HTTP) -> str:
    with pytest.raises(UrlRefused) as info:
        await get(guard, url, schemes)
    return str(info.value)


async def test_a_loopback_literal_is_refused_before_connecting(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    url = f"{a.base}/internal-admin?x=1"
    text = await refusal(UrlGuard(), url)
    assert text == "127.0.0.1 is a private address (loopback); set ALLOW_PRIVATE_URLS=1 to allow"
    assert UrlRefused(text).for_field("play.url", url) == f"play.url: {url} refused: {text}"
    for written in (f"http://[::ffff:127.0.0.1]:{a.port}/", f"http://0.0.0.0:{a.port}/"):
        await refusal(UrlGuard(), written)
    assert not a.hits


@pytest.mark.parametrize("host", ["2130706433", "127.1", "127.0.0.1.", "0x7f000001", "0177.0.0.1"])
async def test_odd_forms_of_an_address_are_refused(host: str) -> None:
    # The system reads each as 127.0.0.1, and aiohttp would not ask the resolver about the digits-only ones.
    text = await refusal(UrlGuard(), f"http://{host}:{free_port()}/")
    assert text in (
        f"{host} is not an IP address in its usual form",
        f"{host} resolves to a private address (127.0.0.1, loopback); set ALLOW_PRIVATE_URLS=1 to allow",
    )


async def test_names_are_refused_by_what_they_resolve_to(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    assert "localhost resolves to" in await refusal(UrlGuard(), f"http://localhost:{a.port}/")
    guard = fake_names(UrlGuard(), {"rebind.test": ["127.0.0.1"]})
    assert "rebind.test resolves to a private address (127.0.0.1" in await refusal(
        guard, f"http://rebind.test:{a.port}/"
    )
    assert not a.hits


async def test_allowed_private_and_trusted_destinations_are_reached(sites: tuple[Site, Site]) -> None:
    a, b = sites
    assert await get(UrlGuard(allow_private=True), f"http://localhost:{a.port}/x") == "ok"
    assert await get(UrlGuard().trusting(a.base), f"{a.base}/y") == "ok"
    await refusal(UrlGuard().trusting(a.base), f"{b.base}/z")
    assert a.hits == ["/x", "/y"] and not b.hits


async def test_a_name_is_resolved_once_per_connection_and_reached_at_the_checked_address(
    sites: tuple[Site, Site],
) -> None:
    a, _ = sites
    lookups = FakeResolver({"svc.test": ["127.0.0.1"]})
    guard = UrlGuard(trusted=frozenset({("svc.test", a.port)}), new_resolver=lambda: lookups)
    assert await get(guard, f"http://svc.test:{a.port}/one") == "ok"
    assert lookups.lookups == ["svc.test"]
    assert a.hits == ["/one"]


async def test_redirects_are_checked_at_every_hop(sites: tuple[Site, Site]) -> None:
    a, b = sites
    guard = fake_names(UrlGuard().trusting(a.base), {"evil.test": ["127.0.0.1"]})
    start = f"{a.base}/redirect?to="
    # To the same trusted destination: followed.
    assert await get(guard, start + "/fine") == "ok"
    # To another port of that address, written as an address: refused before connecting.
    text = await refusal(guard, start + f"{b.base}/secret?k=v")
    assert text.startswith(f"redirected to {b.base}/secret: 127.0.0.1 is a private address (loopback)")
    # To a name that resolves to a private address: refused by the resolver.
    assert "evil.test resolves to a private address" in await refusal(
        guard, start + f"http://evil.test:{b.port}/secret"
    )
    # Out of the allowed schemes' family.
    assert "the scheme 'ftp' is not allowed" in await refusal(guard, start + "ftp://example.org/")
    assert not b.hits
    assert a.hits[:2] == ["/redirect?to=/fine", "/fine"]


async def test_too_many_redirects(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    assert (
        await refusal(UrlGuard().trusting(a.base), f"{a.base}/loop") == f"more than {MAX_REDIRECTS} redirects"
    )
    assert len(a.hits) == MAX_REDIRECTS + 1


async def test_schemes_are_per_use(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    guard = UrlGuard(allow_private=True)
    ws_url = f"ws://127.0.0.1:{a.port}/ws"
    assert await refusal(guard, ws_url, HTTP) == "the scheme 'ws' is not allowed here (only http, https)"
    with pytest.raises(UrlRefused, match=r"the scheme 'http' is not allowed here \(only ws, wss\)"):
        async with guard.session(WS) as http:
            await http.ws_connect(f"{a.base}/ws")
    async with guard.session(WS) as http, http.ws_connect(ws_url) as ws:
        assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
    assert a.hits == ["/ws"]


async def test_a_websocket_handshake_redirect_is_checked(sites: tuple[Site, Site]) -> None:
    a, b = sites
    guard = UrlGuard().trusting(a.base)
    with pytest.raises(
        UrlRefused, match=r"^redirected to ws://127\.0\.0\.1:\d+/ws: 127\.0\.0\.1 is a private"
    ):
        async with guard.session(WS) as http:
            await http.ws_connect(f"ws://127.0.0.1:{a.port}/redirect?to=ws://127.0.0.1:{b.port}/ws")
    assert not b.hits
