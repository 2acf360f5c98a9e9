"""The per-address call bucket (its Redis script, on a virtual clock) and how a client's address is found."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import fakeredis
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from redis.exceptions import ConnectionError as RedisConnectionError

from common.config import Settings
from common.embedded import EmbeddedRedis
from common.keys import Keys
from frontend.callrate import CallRate
from frontend.clientaddr import client_address, limit_key

T0 = 1_800_000_000.0


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    r = fakeredis.FakeAsyncRedis()
    yield r
    await r.aclose()


async def test_the_burst_then_the_rate(redis: fakeredis.FakeAsyncRedis) -> None:
    rate = CallRate(redis, Keys("pbx:"), per_minute=60, burst=5)
    assert [await rate.take("203.0.113.7", T0) for _ in range(5)] == [0.0] * 5
    assert await rate.take("203.0.113.7", T0) == pytest.approx(1.0), "the next token comes in a second"
    assert await rate.take("203.0.113.7", T0 + 0.4) == pytest.approx(0.6), "a refusal spends nothing"
    assert await rate.take("203.0.113.7", T0 + 1.0) == 0.0
    assert await rate.take("203.0.113.7", T0 + 1.0) > 0
    # Another address has a bucket of its own.
    assert await rate.take("198.51.100.1", T0 + 1.0) == 0.0
    # One a second goes on for as long as it is kept to; faster is refused.
    granted = sum([await rate.take("203.0.113.7", T0 + 2 + i * 0.5) == 0.0 for i in range(120)])
    assert granted == 60
    # Left alone, the bucket fills up to its burst, no further, and its key expires once it is full.
    later = T0 + 3600
    assert [await rate.take("203.0.113.7", later) == 0.0 for _ in range(6)] == [True] * 5 + [False]
    ttl = await redis.pttl("pbx:rate:calls:203.0.113.7")
    assert 5000 < ttl <= 6000


async def test_every_frontend_draws_from_one_bucket(redis: fakeredis.FakeAsyncRedis) -> None:
    one, two = (CallRate(redis, Keys("pbx:"), per_minute=6, burst=2) for _ in range(2))
    assert await one.take("203.0.113.7", T0) == 0.0
    assert await two.take("203.0.113.7", T0) == 0.0
    assert await one.take("203.0.113.7", T0) == pytest.approx(10.0)
    assert await two.take("203.0.113.7", T0 + 5) == pytest.approx(5.0)


async def test_on_a_real_redis_by_its_clock() -> None:
    # The script reads Redis's TIME and then writes: allowed from Redis 5 on (effects replication).
    with EmbeddedRedis() as server:
        r = aioredis.Redis.from_url(server.url)
        try:
            rate = CallRate(r, Keys("pbx:"), per_minute=6, burst=3)
            assert [await rate.take("203.0.113.7") for _ in range(3)] == [0.0] * 3
            assert 9.0 < await rate.take("203.0.113.7") <= 10.0
        finally:
            await r.aclose()


async def test_no_limit_asks_nothing(redis: fakeredis.FakeAsyncRedis) -> None:
    rate = CallRate(redis, Keys("pbx:"), per_minute=0, burst=100)
    assert not rate.enabled
    assert all([await rate.take("203.0.113.7", T0) == 0.0 for _ in range(1000)])
    assert await redis.keys("*") == []


async def test_redis_down_lets_calls_through(caplog: pytest.LogCaptureFixture) -> None:
    class Down:
        def register_script(self, script: str) -> object:
            async def run(**_: object) -> object:
                raise RedisConnectionError("refused")

            return run

    rate = CallRate(Down(), Keys("pbx:"), per_minute=1, burst=1)  # type: ignore[arg-type]
    assert [await rate.take("203.0.113.7") for _ in range(3)] == [0.0] * 3
    assert caplog.text.count("let through unchecked") == 1, "one warning, not one a call"


def request(peer: str, *forwarded: str) -> object:
    headers = CIMultiDict([("X-Forwarded-For", value) for value in forwarded])
    return make_mocked_request("GET", "/call", headers=headers, transport=_Transport(peer))


class _Transport:
    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.peer, 40000) if name == "peername" else default


PROXIES = Settings.from_env(
    {"TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1, fd00::/8"}, dotenv=None
).trusted_proxies


@pytest.mark.parametrize(
    ("peer", "forwarded", "proxies", "client"),
    [
        # The header is nobody's word unless the peer is a trusted proxy.
        ("203.0.113.7", ["198.51.100.1"], PROXIES, "203.0.113.7"),
        ("10.1.2.3", ["198.51.100.1"], (), "10.1.2.3"),
        # From the right, past every trusted proxy: what the client wrote itself (further left) is ignored.
        ("10.1.2.3", ["198.51.100.1"], PROXIES, "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6, 198.51.100.1, 192.0.2.1"], PROXIES, "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6", "198.51.100.1, 10.9.9.9"], PROXIES, "198.51.100.1"),
        # No header, or only proxies in it: the farthest proxy is the nearest thing to a client.
        ("10.1.2.3", [], PROXIES, "10.1.2.3"),
        ("10.1.2.3", ["192.0.2.1"], PROXIES, "192.0.2.1"),
        # Junk where an address should be: the last address a trusted proxy vouched for.
        ("10.1.2.3", ["junk, 10.4.4.4"], PROXIES, "10.4.4.4"),
        ("10.1.2.3", ["junk"], PROXIES, "10.1.2.3"),
        # IPv6, IPv4 mapped into IPv6, brackets.
        ("fd00::1", ["[2001:db8::7]"], PROXIES, "2001:db8::7"),
        ("::ffff:10.1.2.3", ["::ffff:198.51.100.1"], PROXIES, "198.51.100.1"),
    ],
)
def test_client_address(peer: str, forwarded: list[str], proxies: tuple[object, ...], client: str) -> None:
    got = client_address(request(peer, *forwarded), proxies)  # type: ignore[arg-type]
    assert got == ipaddress.ip_address(client)


def test_limit_key_counts_ipv6_by_its_64() -> None:
    assert limit_key(ipaddress.ip_address("203.0.113.7")) == "203.0.113.7"
    a, b = ipaddress.ip_address("2001:db8:1:2::1"), ipaddress.ip_address("2001:db8:1:2:ffff::9")
    assert limit_key(a) == limit_key(b) == "2001:db8:1:2::/64"
    assert limit_key(ipaddress.ip_address("2001:db8:1:3::1")) != limit_key(a)
    assert limit_key(None) == "unix"


def test_trusted_proxies_are_checked_at_start() -> None:
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, lb.example.com"}, dotenv=None)
