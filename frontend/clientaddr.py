"""Which client a request comes from, as far as this server can tell: the address its limits are kept by.

The socket's peer, unless that peer is one of `TRUSTED_PROXIES` (a load balancer or reverse proxy in front of
this server): then `X-Forwarded-For` is read from its right end, where the nearest proxy wrote the address it
saw, leftwards past every trusted proxy; the first address that is not one is the client. Entries further left
were written by the client itself and prove nothing. Without TRUSTED_PROXIES the header is ignored: anyone
could write it.

IPv6 clients are counted by their /64: one subscriber is handed at least that many addresses, and could
otherwise take a fresh one for every call.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from common.config import Network

IPV6_PREFIX = 64

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> Address | None:
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        # A zone (fe80::1%eth0) names an interface of ours, not part of the client's address.
        if addr.scope_id:
            return ipaddress.IPv6Address(text.strip().strip("[]").split("%", 1)[0])
    return addr


def _trusted(addr: Address, proxies: tuple[Network, ...]) -> bool:
    return any(addr.version == net.version and addr in net for net in proxies)


def client_address(request: web.BaseRequest, proxies: tuple[Network, ...] = ()) -> Address | None:
    """The client's address; None when the peer has none (a Unix socket)."""
    peer = _parse(request.remote or "")
    if peer is None or not _trusted(peer, proxies):
        return peer
    hops = [hop for value in request.headers.getall("X-Forwarded-For", ()) for hop in value.split(",")]
    nearest = peer
    for hop in reversed(hops):
        addr = _parse(hop)
        if addr is None:
            # Not an address: the trusted proxy that wrote the entry to its right is as far as we can see.
            return nearest
        if not _trusted(addr, proxies):
            return addr
        nearest = addr
    return nearest


def limit_key(addr: Address | None) -> str:
    """What a client's limits are counted under: its IPv4 address, or its IPv6 /64."""
    if addr is None:
        return "unix"
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, IPV6_PREFIX), strict=False))
    return str(addr)
