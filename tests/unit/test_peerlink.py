"""Direct links between processes (common/peerlink.py), on real loopback sockets: the handshake, both
directions, the token, the switch from the inbox stream without reordering, and what a broken link does."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import msgpack
import pytest

from common import peerlink, wire
from common.bus import Outbox, read_inbox
from common.keys import Keys
from common.metrics import LINK_DROPS
from common.peerlink import InboxCursor, Links

KEYS = Keys("pbx:")


class Side:
    """One process's links and what reached it."""

    def __init__(self, proc: str, lookup: peerlink.Lookup | None = None) -> None:
        self.got: list[dict[str, Any]] = []
        self.cursor = InboxCursor()
        self.links = Links(proc, self.got.extend, self.cursor, lookup)

    def bodies(self) -> list[Any]:
        return [m["b"] for m in self.got]


async def until(check: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def batch(*bodies: Any) -> bytes:
    return wire.pack([wire.msg("c1", wire.CMD, b) for b in bodies])


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Side, Side]]:
    """A listening media process and a frontend that dials it with the right token."""
    media = Side("media-1")
    host, port = await media.links.listen("127.0.0.1")

    async def lookup(proc: str) -> tuple[str, int, str] | None:
        return (host, port, media.links.token) if proc == "media-1" else None

    web = Side("web-1", lookup)
    yield media, web
    await web.links.close()
    await media.links.close()


async def linked(web: Side, media: Side) -> None:
    assert not web.links.send("media-1", batch("early"), None), "no link yet: the stream carries it"
    await until(lambda: web.links.linked("media-1") and media.links.linked("web-1"))


async def test_batches_flow_both_ways_once_linked(pair: tuple[Side, Side]) -> None:
    media, web = pair
    await linked(web, media)
    assert web.links.send("media-1", batch(1, 2), None)
    assert web.links.send("media-1", batch(3), None)
    assert media.links.send("web-1", batch("a"), None)
    await until(lambda: len(media.got) == 3 and len(web.got) == 1)
    assert media.bodies() == [1, 2, 3]
    assert web.bodies() == ["a"]
    assert not media.links.send("web-2", batch("x"), None), "a listener never dials"


async def test_a_wrong_token_gets_no_link(pair: tuple[Side, Side], monkeypatch: pytest.MonkeyPatch) -> None:
    media, _ = pair
    host, port = media.links.address or ("", 0)

    async def wrong(proc: str) -> tuple[str, int, str]:
        return host, port, "not-the-token"

    intruder = Side("web-9", wrong)
    drops = LINK_DROPS.labels().value
    try:
        assert not intruder.links.send("media-1", batch("x"), None)
        await until(lambda: LINK_DROPS.labels().value > drops)
        await asyncio.sleep(0.05)
        assert not intruder.links.linked("media-1")
        assert not media.links.linked("web-9")
        assert media.got == []
    finally:
        await intruder.links.close()


async def test_garbage_and_oversized_frames_drop_the_connection(pair: tuple[Side, Side]) -> None:
    media, _ = pair
    host, port = media.links.address or ("", 0)
    for junk in (b"GET / HTTP/1.1\r\n\r\n", peerlink.HEADER.pack(peerlink.MAX_FRAME + 1, peerlink.HELLO)):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(junk)
        assert await asyncio.wait_for(reader.read(), 2.0) == b"", "closed without an answer"
        writer.close()
    assert media.got == []


async def test_a_batch_after_the_switch_waits_for_the_stream_entries_before_it(
    pair: tuple[Side, Side],
) -> None:
    media, web = pair
    await linked(web, media)
    media.cursor.advance(b"5-0")
    assert web.links.send("media-1", batch("via link"), b"7-1")
    assert web.links.send("media-1", batch("then this"), None)
    await asyncio.sleep(0.1)
    assert media.got == [], "held until the inbox reader has handled entry 7-1"
    media.got.append(wire.msg("c1", wire.CMD, "from the stream"))
    media.cursor.advance(b"7-1")
    assert media.bodies() == ["from the stream", "via link", "then this"]


async def test_a_hold_ends_after_the_limit(pair: tuple[Side, Side], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peerlink, "HOLD_LIMIT", 0.1)
    media, web = pair
    await linked(web, media)
    assert web.links.send("media-1", batch("late"), b"99-0")  # an entry a Redis restart lost
    await asyncio.sleep(0.03)
    assert media.got == []
    await until(lambda: media.bodies() == ["late"], timeout=1.0)


async def test_a_lost_link_falls_back_and_is_dialed_again(
    pair: tuple[Side, Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peerlink, "REDIAL_AFTER", 0.1)
    media, web = pair
    await linked(web, media)
    accepted = media.links._links["web-1"]
    assert accepted.transport is not None
    accepted.transport.abort()  # as when the frontend's process dies
    await until(lambda: not web.links.linked("media-1"))
    assert not media.links.send("web-1", batch("x"), None)
    assert not web.links.send("media-1", batch("x"), None), "back to the stream at once"
    await asyncio.sleep(0.15)
    await linked(web, media)
    assert web.links.send("media-1", batch("again"), None)
    await until(lambda: media.bodies() == ["again"])


async def test_a_link_whose_peer_stops_reading_is_dropped(
    pair: tuple[Side, Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    media, web = pair
    await linked(web, media)
    link = web.links._links["media-1"]
    monkeypatch.setattr(link, "backlog", lambda: peerlink.MAX_BACKLOG + 1)
    assert not web.links.send("media-1", batch("x"), None)
    await until(lambda: not web.links.linked("media-1"))


async def test_a_process_that_announces_no_link_is_not_dialed_for_a_while() -> None:
    asked: list[str] = []

    async def lookup(proc: str) -> None:
        asked.append(proc)

    side = Side("web-1", lookup)
    try:
        for _ in range(5):
            assert not side.links.send("media-2", batch("x"), None)
            await asyncio.sleep(0.01)
        assert not side.links.send("web-2", batch("x"), None), "frontends have no link"
        assert asked == ["media-2"]
    finally:
        await side.links.close()


async def test_an_unreachable_process_is_not_dialed_for_a_while() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    asked: list[str] = []

    async def lookup(proc: str) -> tuple[str, int, str]:
        asked.append(proc)
        return "127.0.0.1", port, "t"

    side = Side("web-1", lookup)
    try:
        side.links.send("media-2", batch("x"), None)
        await asyncio.sleep(0.1)
        side.links.send("media-2", batch("x"), None)
        await asyncio.sleep(0.05)
        assert asked == ["media-2"]
        assert not side.links.linked("media-2")
    finally:
        await side.links.close()


async def test_the_outbox_moves_a_destination_to_its_link_without_reordering(pair: tuple[Side, Side]) -> None:
    """Messages written to the stream before the link was up are handled before those sent over it, even
    when the link's arrive first."""
    media, web = pair
    redis = fakeredis.FakeAsyncRedis()
    outbox = Outbox(redis, KEYS, linger=0.0, links=web.links)
    writer = asyncio.create_task(outbox.run())
    try:
        for i in range(3):
            outbox.send("media-1", wire.msg("c1", wire.CMD, i))  # the first dials; all go to the stream
            await asyncio.sleep(0)
        await until(lambda: web.links.linked("media-1"))
        for i in range(3, 6):
            outbox.send("media-1", wire.msg("c1", wire.CMD, i))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert media.got == [], "the link's batches wait for the stream's"

        async def read() -> None:
            async for got in read_inbox(redis, KEYS, "media-1", block_ms=50, cursor=media.cursor):
                media.got.extend(got)

        inbox = asyncio.create_task(read())
        await until(lambda: len(media.got) >= 6)
        inbox.cancel()
        assert media.bodies() == [0, 1, 2, 3, 4, 5]
        assert len(await redis.xrange(KEYS.inbox("media-1"))) in (1, 2, 3), "only the first went by Redis"
    finally:
        writer.cancel()
        await redis.aclose()


async def test_hello_is_msgpack_with_the_dialers_name(pair: tuple[Side, Side]) -> None:
    """The wire format other implementations (and a later version) must keep: length, kind, payload."""
    media, _ = pair
    host, port = media.links.address or ("", 0)
    reader, writer = await asyncio.open_connection(host, port)
    hello = msgpack.packb({"proc": "web-raw", "token": media.links.token})
    writer.write(peerlink.frame(peerlink.HELLO, hello))
    head = await asyncio.wait_for(reader.readexactly(peerlink.HEADER.size), 2.0)
    size, kind = peerlink.HEADER.unpack(head)
    assert kind == peerlink.WELCOME
    assert msgpack.unpackb(await reader.readexactly(size)) == {"proc": "media-1"}
    writer.write(peerlink.frame(peerlink.AFTER, b""))
    writer.write(peerlink.frame(peerlink.BATCH, batch("raw")))
    await writer.drain()
    await until(lambda: media.bodies() == ["raw"])
    writer.close()


def test_a_wildcard_bind_announces_a_routable_address() -> None:
    assert peerlink.advertised_host("10.1.2.3") == "10.1.2.3"
    announced = peerlink.advertised_host("0.0.0.0")
    assert announced != "0.0.0.0"
    socket.inet_aton(announced)  # an IPv4 address (the default route's interface, or loopback)
