"""Fuzzing the rule for outbound URLs (worker/urlguard.py) with hostile spellings of loopback.

Contract: a client's URL whose host is loopback, however it is written (decimal, hex, octal and short IPv4
forms, IPv4-mapped IPv6, full-width digits, a trailing dot, `localhost`, a name that resolves there,
behind a user part, a fragment or a redirect), never gets a connection: the request ends with `UrlRefused`
or with aiohttp's own refusal of the URL, and canaries listening on 127.0.0.1 and ::1 see nothing.
Besides, wherever aiohttp would connect to an address written in the URL without resolving it, the
rule's check has judged that very address.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import ResolveResult
from aiohttp.helpers import is_ip_address
from hypothesis import given, note, settings
from hypothesis import strategies as st
from yarl import URL

from common.embedded import free_port
from tests.fuzz.conftest import scale
from tests.fuzz.stack_probe import Loop
from tests.unit.test_urlguard import FakeResolver
from worker.urlguard import HTTP, WS, UrlGuard, UrlRefused, address_kind


class Canary:
    """A listening socket that counts the connections it accepts."""

    def __init__(self, family: socket.AddressFamily, host: str) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture(scope="module")
def canaries() -> Iterator[tuple[Canary, Canary | None]]:
    v4 = Canary(socket.AF_INET, "127.0.0.1")
    try:
        v6: Canary | None = Canary(socket.AF_INET6, "::1")
    except OSError:
        v6 = None  # no IPv6 loopback here
    yield v4, v6
    v4.close()
    if v6 is not None:
        v6.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    runner = Loop()
    yield runner
    runner.close()


_FULL_WIDTH = str.maketrans("0123456789.", "０１２３４５６７８９．")
# 127.0.0.1 as it can be written in a URL's host (some of them only glibc's inet_aton or IDNA understands).
V4_SPELLINGS = [
    "127.0.0.1",
    "127.0.0.1.",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0x7f.0.0.1",
    "0x7f.1",
    "0177.0.0.1",
    "0177.0.0.01",
    "017700000001",
    "127.000.000.001",
    "127.0.0.1".translate(_FULL_WIDTH),
    "%31%32%37.0.0.1",
    "localhost",
    "LOCALHOST",
    "localhost.",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:7f00:1]",
    "[::FFFF:127.0.0.1]",
]
V6_SPELLINGS = ["[::1]", "[0:0:0:0:0:0:0:1]", "[0000::0001]", "[::0:1]"]
NAMES = ["svc.test", "a.b.example", "xn--nxasmq6b.test", "bots.internal"]

USER = st.sampled_from(["", "user@", "user:pw@", "public.example@", "8.8.8.8@"])
TAIL = st.sampled_from(["/", "/a.wav", "/internal-admin?x=1", "/#@8.8.8.8", "/?u=http://8.8.8.8/", ""])


def _urls(scheme: str, host: str, port: int) -> st.SearchStrategy[str]:
    return st.builds(lambda user, tail: f"{scheme}://{user}{host}:{port}{tail}", USER, TAIL)


def hostile(v4: Canary, v6: Canary | None, scheme: str) -> st.SearchStrategy[str]:
    spellings = [_urls(scheme, h, v4.port) for h in (*V4_SPELLINGS, *NAMES)]
    if v6 is not None:
        spellings += [_urls(scheme, h, v6.port) for h in V6_SPELLINGS]
    return st.one_of(*spellings)


class NamesToLoopback(FakeResolver):
    """NAMES resolve to loopback, as a rebinding attacker's names would; anything else as the system says."""

    def __init__(self) -> None:
        super().__init__({n: ["127.0.0.1", "::1"] for n in NAMES})

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower().rstrip(".") in self.table:
            return await super().resolve(host, port, family)
        return await aiohttp.ThreadedResolver().resolve(host, port, family)


def guard_with_names() -> UrlGuard:
    return UrlGuard(new_resolver=NamesToLoopback)


async def attempt(guard: UrlGuard, url: str, schemes: frozenset[str]) -> str:
    timeout = aiohttp.ClientTimeout(total=3)
    async with guard.session(schemes, timeout=timeout) as http:
        try:
            if schemes == WS:
                async with http.ws_connect(url):
                    return "connected"
            async with http.get(url) as resp:
                return f"answered {resp.status}"
        except UrlRefused:
            return "refused"
        except (aiohttp.ClientError, ValueError) as exc:
            return f"aiohttp: {type(exc).__name__}"


@settings(max_examples=scale(150))
@given(data=st.data())
def test_no_spelling_of_loopback_gets_a_connection(
    data: st.DataObject, canaries: tuple[Canary, Canary | None], loop: Loop
) -> None:
    v4, v6 = canaries
    scheme = data.draw(st.sampled_from(["http", "https", "ws", "wss"]))
    url = data.draw(hostile(v4, v6, scheme))
    schemes = HTTP if scheme.startswith("http") else WS
    outcome = loop.run(attempt(guard_with_names(), url, schemes))
    note(f"{url} -> {outcome}")
    assert outcome == "refused" or outcome.startswith("aiohttp: "), outcome
    assert v4.connections == 0 and (v6 is None or v6.connections == 0), url


@settings(max_examples=scale(150))
@given(data=st.data())
def test_no_redirect_to_loopback_gets_a_connection(
    data: st.DataObject, canaries: tuple[Canary, Canary | None], loop: Loop
) -> None:
    """A public-looking host (trusted here, so that it can be a local server) redirects to loopback."""
    v4, v6 = canaries
    target = data.draw(hostile(v4, v6, data.draw(st.sampled_from(["http", "https"]))))
    status = data.draw(st.sampled_from([301, 302, 303, 307, 308]))
    outcome = loop.run(_redirected(target, status))
    note(f"{status} to {target} -> {outcome}")
    assert outcome == "refused" or outcome.startswith("aiohttp: "), outcome
    assert v4.connections == 0 and (v6 is None or v6.connections == 0), target


async def _redirected(target: str, status: int) -> str:
    async def redirect(_request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": target})

    app = web.Application()
    app.router.add_get("/", redirect)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.2", port).start()  # not the canaries' address
    try:
        guard = guard_with_names().trusting(f"http://127.0.0.2:{port}")
        return await attempt(guard, f"http://127.0.0.2:{port}/", HTTP)
    finally:
        await runner.cleanup()


@settings(max_examples=scale(400))
@given(
    st.one_of(
        st.builds(
            lambda host, user, tail: f"http://{user}{host}:80{tail}",
            st.sampled_from([*V4_SPELLINGS, *V6_SPELLINGS, "[fe80::1%25eth0]", "169.254.169.254", "[::]"]),
            USER,
            TAIL,
        ),
        st.text(max_size=60).map(lambda s: "http://" + s),
        st.text(st.sampled_from("0123456789abcdefxX.:%f"), max_size=30).map(lambda s: f"http://[{s}]:80/"),
        st.text(st.sampled_from("0123456789xX."), min_size=1, max_size=20).map(lambda s: f"http://{s}:80/"),
    )
)
def test_an_address_aiohttp_would_connect_to_unresolved_has_been_judged(text: str) -> None:
    try:
        url = URL(text)
    except ValueError:
        return  # neither would aiohttp take it
    try:
        UrlGuard().check(url, HTTP)
    except UrlRefused:
        return
    host = url.raw_host or ""
    if host and is_ip_address(host):
        # aiohttp skips its resolver for this host: the check must have judged it a public address.
        assert address_kind(host) is None, text
