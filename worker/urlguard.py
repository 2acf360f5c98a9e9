"""The one rule for outbound requests a client can steer: where they may go, and how they get there.

A call makes its media process open URLs the client chose: `play` files, the `mediaPass` bot, a speech
provider's or the EOU service's `endpoint`; the SIP webhook posts to the operator's URL. Each of them goes
through a session made by `UrlGuard.session`, which

- takes only its caller's schemes on the first URL (http/https for downloads, ws/wss for sockets);
- resolves a name once, with the event loop's getaddrinfo, and hands aiohttp only the addresses the rule
  allows, so the connection goes to an address that was checked: nothing can rebind the name between the
  check and the connect (TLS and `Host` still use the name);
- checks an address written in the URL itself (aiohttp never asks its resolver about those) before the
  request, and every redirect's target again, up to MAX_REDIRECTS of them;
- refuses loopback, private, link-local (cloud metadata at 169.254.169.254), shared (CGNAT), multicast,
  unspecified, documentation and reserved addresses, IPv4 and IPv6 alike (an IPv6 address that carries
  an IPv4 one, mapped, NAT64 or 6to4, is judged by the IPv4 address), unless ALLOW_PRIVATE_URLS (or
  TRUST_CLIENTS) is set or the host and port are a destination the operator configured.

A refusal raises `UrlRefused` before any connection is opened, so it reads the same whether anything
listens at that address or not.

SIP destinations a client names (an outbound call's callee, a bridged refer's target) are not URLs aiohttp
fetches: the SIP stack resolves them and asks `pick_address` which of the answers it may send to.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from common.config import Settings

HTTP = frozenset({"http", "https"})
WS = frozenset({"ws", "wss"})
MAX_REDIRECTS = 5
HINT = "set ALLOW_PRIVATE_URLS=1 to allow"
# SIP destinations: a PBX on the operator's LAN is the usual one, and listing it is the narrow way in.
SIP_HINT = "set ALLOW_PRIVATE_URLS=1 or list the host in ALLOWED_URL_HOSTS"

# A WebSocket handshake is an HTTP request: a redirect may name either form of the scheme.
_TWIN = {"http": "ws", "https": "wss", "ws": "http", "wss": "https"}

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _table(rows: Iterable[tuple[str, str]]) -> tuple[tuple[_Net, str], ...]:
    return tuple((ipaddress.ip_network(net), kind) for net, kind in rows)


# Everything that is not public unicast (IANA's special-purpose registries), first match wins.
_V4 = _table(
    [
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private network"),
        ("100.64.0.0/10", "shared, CGNAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private network"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private network"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # 255.255.255.255, the broadcast address, among them
    ]
)
_V6 = _table(
    [
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "local NAT64"),  # inside ::/8, as NAT64's well-known prefix (judged before)
        ("::/8", "reserved"),  # IPv4-compatible addresses among them (mapped ones are judged before)
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_kind(address: str) -> str | None:
    """Why an IP address is not public ("loopback", "private network", ...), or None when it is.

    Raises ValueError for text that is not an IP address."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        carried = ip.ipv4_mapped or ip.sixtofour
        if carried is None and ip in _NAT64:
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if carried is not None:
            return address_kind(str(carried))
        table: tuple[tuple[_Net, str], ...] = _V6
    else:
        table = _V4
    for net, kind in table:
        if ip in net:
            return kind
    return None


def _norm_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def destination(url: str) -> tuple[str, int | None]:
    """(host, port) of a URL, the scheme's port when it names none; a bare `host[:port]` keeps its port
    or None (any port). Raises ValueError for text that names no host."""
    parsed = URL(url if "://" in url else f"//{url.strip()}")
    if not parsed.host:
        raise ValueError(f"{url!r} names no host")
    return _norm_host(parsed.host), parsed.port


class UrlRefused(Exception):
    """An outbound URL the rule does not allow; the text says why (without the field or the URL)."""

    def for_field(self, field: str, shown_url: str) -> str:
        """The error-event text: the field, the URL as it may be shown, and why."""
        return f"{field}: {shown_url} refused: {self}"


def _refused_address(host: str, kind: str, hint: str = HINT) -> UrlRefused:
    return UrlRefused(f"{host} is a private address ({kind}); {hint}")


def _refused_addresses(host: str, refused: list[tuple[str, str]], hint: str = HINT) -> UrlRefused:
    if len(refused) == 1:
        address, kind = refused[0]
        return UrlRefused(f"{host} resolves to a private address ({address}, {kind}); {hint}")
    listed = ", ".join(f"{address} {kind}" for address, kind in refused[:4])
    return UrlRefused(f"{host} resolves to private addresses only ({listed}); {hint}")


class GuardedResolver(AbstractResolver):
    """Resolves through `inner` (the loop's getaddrinfo by default) and keeps only allowed addresses."""

    def __init__(self, guard: UrlGuard, inner: AbstractResolver | None = None) -> None:
        self.guard = guard
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is None:
            self._inner = self.guard.new_resolver()
        found = await self._inner.resolve(host, port, family)
        if self.guard.allows_any_address(host, port):
            return found
        kept: list[ResolveResult] = []
        refused: list[tuple[str, str]] = []
        for result in found:
            kind = address_kind(result["host"])
            if kind is None:
                kept.append(result)
            else:
                refused.append((result["host"], kind))
        if not kept:
            # Every answer was private: fail before connecting, and say which addresses they were. (Mixed
            # answers keep their public addresses: a connection to them reaches nothing internal.)
            raise _refused_addresses(host, refused) if refused else UrlRefused(f"{host} has no address")
        return kept

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def _default_resolver() -> AbstractResolver:
    # getaddrinfo on the loop's executor: never blocks the event loop, follows /etc/hosts and nsswitch.
    return aiohttp.ThreadedResolver()


@dataclass(frozen=True, slots=True)
class UrlGuard:
    """The rule of one process (or one destination, see `trusting`), and the sessions that apply it."""

    allow_private: bool = False
    # Destinations that may be private: (host, port), port None for any.
    trusted: frozenset[tuple[str, int | None]] = frozenset()
    # Makes the resolver that names are looked up with (tests hand in one that knows fake names).
    new_resolver: Callable[[], AbstractResolver] = field(default=_default_resolver, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings, default_hosts: Iterable[str] = ()) -> UrlGuard:
        """The operator's rule: ALLOW_PRIVATE_URLS (or TRUST_CLIENTS), and as trusted destinations the
        hosts of ALLOWED_URL_HOSTS, VOICEAPI_ENDPOINT, SIP_WEBHOOK_URL and `default_hosts`."""
        trusted: set[tuple[str, int | None]] = set()
        for entry in (*settings.allowed_url_hosts, *default_hosts):
            trusted.add(destination(entry))
        for url in (settings.voiceapi_endpoint, settings.sip_webhook_url):
            if url:
                try:
                    trusted.add(destination(_as_ws(url)))
                except ValueError:
                    pass  # a setting that names no host is refused where it is used
        return cls(
            allow_private=settings.allow_private_urls or settings.trust_clients, trusted=frozenset(trusted)
        )

    def trusting(self, url: str) -> UrlGuard:
        """This rule, with `url`'s destination trusted too: for a URL the server chose (a provider's default
        endpoint), never for one a client wrote."""
        try:
            return dataclasses.replace(self, trusted=self.trusted | {destination(_as_ws(url))})
        except ValueError:
            return self  # names no host: the request fails on its own

    def allows_any_address(self, host: str, port: int | None) -> bool:
        """Whether `host:port` may be reached at whatever address it has."""
        if self.allow_private:
            return True
        host = _norm_host(host)
        return (host, port) in self.trusted or (host, None) in self.trusted

    def with_trusted(self, destinations: Iterable[tuple[str, int | None]]) -> UrlGuard:
        """This rule, with more operator-configured destinations trusted: (host, port), port None for any."""
        added = frozenset((_norm_host(host), port) for host, port in destinations)
        return dataclasses.replace(self, trusted=self.trusted | added) if added else self

    def pick_address(self, host: str, port: int, addresses: Sequence[str], hint: str = HINT) -> str:
        """The address to reach `host:port` at, for a connection made outside aiohttp (SIP): the first of
        `addresses` (what the name resolved to, or the address `host` is) the rule allows. The caller sends
        to exactly that address, so no second lookup can change it. Raises UrlRefused when none is allowed."""
        if not addresses:
            raise UrlRefused(f"{host} has no address")
        if self.allows_any_address(host, port):
            return addresses[0]
        refused: list[tuple[str, str]] = []
        for address in addresses:
            kind = address_kind(address)
            if kind is None:
                return address  # mixed answers: reached at a public one, as GuardedResolver does
            refused.append((address, kind))
        if len(refused) == 1 and _norm_host(host) == refused[0][0]:
            raise _refused_address(host, refused[0][1], hint)
        raise _refused_addresses(host, refused, hint)

    def check(self, url: URL, schemes: frozenset[str]) -> None:
        """Raise UrlRefused for a URL whose scheme is not among `schemes`, that names no host, or whose
        host is an IP address the rule refuses. (Names are judged when they are resolved.)"""
        if url.scheme not in schemes:
            allowed = ", ".join(sorted(schemes))
            raise UrlRefused(f"the scheme {url.scheme or '(none)'!r} is not allowed here (only {allowed})")
        host = url.host
        if not host:
            raise UrlRefused("the URL names no host")
        if self.allows_any_address(host, url.port):
            return
        for written in {host, url.raw_host or host}:
            try:
                kind = address_kind(written.strip("[]"))
            except ValueError:
                if _looks_numeric(written):
                    # aiohttp connects to what looks like an address without asking the resolver, and the
                    # system reads odd forms (`2130706433`, `127.1`, `127.0.0.1.`) as addresses too.
                    raise UrlRefused(f"{written} is not an IP address in its usual form") from None
                continue
            if kind is not None:
                raise _refused_address(written, kind)

    def session(
        self, schemes: frozenset[str], *, connections: int = 100, **kwargs: Any
    ) -> aiohttp.ClientSession:
        """An aiohttp session whose every request and redirect obeys this rule (`kwargs` go to the session;
        `connections`: its pool limit, 0 for none). Create it inside the running event loop."""
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self), limit=connections)
        return aiohttp.ClientSession(
            connector=connector, trace_configs=[self._tracing(schemes)], trust_env=False, **kwargs
        )

    def _tracing(self, schemes: frozenset[str]) -> aiohttp.TraceConfig:
        hop_schemes = schemes | {_TWIN[s] for s in schemes if s in _TWIN}

        async def on_start(_s: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams) -> None:
            ctx.hops = 0
            self.check(params.url, schemes)

        async def on_redirect(
            _s: Any, ctx: SimpleNamespace, params: aiohttp.TraceRequestRedirectParams
        ) -> None:
            ctx.hops += 1
            if ctx.hops > MAX_REDIRECTS:
                raise UrlRefused(f"more than {MAX_REDIRECTS} redirects")
            headers = params.response.headers
            location = headers.get("Location") or headers.get("URI")
            if location is None:
                return  # aiohttp ends the request with this response
            try:
                target = params.url.join(URL(location))
            except ValueError:
                return  # aiohttp refuses it itself
            try:
                self.check(target, hop_schemes)
            except UrlRefused as exc:
                raise UrlRefused(f"redirected to {target.with_query(None)}: {exc}") from None

        tracing = aiohttp.TraceConfig()
        tracing.on_request_start.append(on_start)
        tracing.on_request_redirect.append(on_redirect)
        return tracing


def _looks_numeric(host: str) -> bool:
    """Whether a host is what aiohttp takes for an IP address (digits and dots, or anything with a colon)."""
    return ":" in host or host.replace(".", "").isdigit()


def _as_ws(url: str) -> str:
    # A bare host (VOICEAPI_ENDPOINT may be one) means wss, as worker/speech/endpoints.py reads it.
    return url if "://" in url else f"wss://{url}"
