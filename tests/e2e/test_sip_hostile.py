"""Hostile SIP on the live port: the RFC 4475 torture messages (when the corpus is installed), our own tricky
messages and a few thousand mutations of them, sent to the shared SIP port of the running stack. Every
message the RFC says to reject gets its 400 (or 505) back, every valid request gets an answer that is not
a 400, responses to nothing are dropped, and afterwards both media processes are alive and still answer."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from tests.e2e.conftest import StackInfo
from tests.unit.test_sip_message import CORPUS, EXPECT, OWN_SEEDS, mutate
from worker.sip.message import Response, SipParseError, parse

pytestmark = pytest.mark.e2e

OPTIONS = (
    b"OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKprobe%d\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=p\r\nTo: <sip:probe@127.0.0.1>\r\n"
    b"Call-ID: probe-%d@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


async def exchange(port: int, data: bytes, wait: float = 1.0) -> Response | None:
    """Send `data` from a fresh socket; the first final response that comes back (or None)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        s.sendto(data, ("127.0.0.1", port))
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            try:
                reply = await asyncio.wait_for(loop.sock_recv(s, 65536), left)
            except TimeoutError:
                return None
            try:
                message = parse(reply)
            except SipParseError:
                text = reply.decode("utf-8", "replace")
                status = int(text.split(" ", 2)[1])  # our 400s copy the broken header, as RFC 3261 asks
                if status >= 200:
                    return Response(status, "")
                continue
            if isinstance(message, Response) and message.status >= 200:
                return message
    return None


async def still_answers(stack: StackInfo) -> None:
    """Both media processes (the kernel spreads source ports over them) still answer OPTIONS."""
    for i in range(16):
        reply = await exchange(stack.sip_port, OPTIONS % (i, i))
        assert reply is not None and reply.status == 200
    assert stack.health()["media_processes"] == 2


@pytest.mark.parametrize("tag", sorted(EXPECT))
async def test_torture_message_on_the_live_port(stack: StackInfo, tag: str) -> None:
    if tag not in CORPUS:
        pytest.skip("RFC 4475 corpus not installed (tests/sip/torture/README.md)")
    data = CORPUS[tag]
    _, rejections = EXPECT[tag]
    is_response = data.lstrip(b"\r\n").startswith(b"SIP/")
    is_ack = data.lstrip(b"\r\n").startswith(b"ACK ")
    reply = await exchange(stack.sip_port, data, wait=0.5 if is_response or is_ack else 2.0)
    if is_response or is_ack:
        assert reply is None
    elif rejections:
        assert reply is not None and reply.status in rejections, f"{tag}: {reply and reply.status}"
    else:
        assert reply is not None and reply.status not in (400, 505), f"{tag}: {reply and reply.status}"


async def test_own_tricky_messages_and_mutations_do_no_harm(stack: StackInfo) -> None:
    rng = random.Random(3261)
    seeds = list(OWN_SEEDS) + [CORPUS[t] for t in sorted(CORPUS)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        for i in range(3000):
            data = mutate(rng, rng.choice(seeds)) if i % 10 else bytes(rng.randrange(256) for _ in range(200))
            s.sendto(data, ("127.0.0.1", stack.sip_port))
            if i % 50 == 0:
                await asyncio.sleep(0.01)  # paced, so the test measures handling and not socket overflow
        await asyncio.sleep(0.5)
        replies = 0
        while True:
            try:
                s.recv(65536)
                replies += 1
            except BlockingIOError:
                break
    assert replies > 100  # the answerable ones were answered
    await still_answers(stack)
