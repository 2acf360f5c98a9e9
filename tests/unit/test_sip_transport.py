"""SIP transports on loopback: stream framing, UDP on the shared and own ports, TCP both ways."""

from __future__ import annotations

import asyncio
import socket

import pytest

from common.embedded import free_port
from worker.sip.transport import SipTransport, Source, split_stream

INVITE = (
    b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
    b"Call-ID: a\r\nCSeq: 1 INVITE\r\nContent-Length: 4\r\n\r\nv=0\n"
)


def test_stream_framing() -> None:
    buf = bytearray(b"\r\n\r\n" + INVITE + INVITE[:30])
    assert split_stream(buf) == [INVITE] and bytes(buf) == INVITE[:30]
    buf += INVITE[30:] + b"\r\n" + INVITE.replace(b"Content-Length: 4", b"l: 4")
    assert split_stream(buf) == [INVITE, INVITE.replace(b"Content-Length: 4", b"l: 4")] and not buf
    with pytest.raises(ValueError, match="Content-Length"):
        split_stream(bytearray(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: b\r\n\r\n"))
    with pytest.raises(ValueError, match="limit"):
        split_stream(bytearray(b"X" * 70_000))


async def test_udp_shared_and_own_ports_and_tcp() -> None:
    shared = free_port()
    got: list[tuple[bytes, Source]] = []
    a = SipTransport("127.0.0.1", shared, lambda d, s: got.append((d, s)))
    b = SipTransport("127.0.0.1", shared, lambda d, s: got.append((d, s)))
    await a.start()
    await b.start()  # SO_REUSEPORT: both hold the shared port
    assert a.own_port != b.own_port
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.sendto(INVITE, ("127.0.0.1", shared))
    udp.sendto(INVITE, ("127.0.0.1", a.own_port))
    udp.sendto(b"\r\n\r\n", ("127.0.0.1", a.own_port))  # keep-alive: not a message
    for _ in range(100):
        if len(got) >= 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(s.local_port for _, s in got) == sorted([shared, a.own_port])
    assert all(d == INVITE and s.transport == "udp" for d, s in got)
    a.send(b"SIP/2.0 200 OK\r\n\r\n", *udp.getsockname(), local_port=shared)
    udp.settimeout(1)
    data, src = udp.recvfrom(2048)
    assert data.startswith(b"SIP/2.0 200") and src[1] == shared, "a response leaves from the port it is for"
    got.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", b.own_port)
    writer.write(INVITE + INVITE)
    await writer.drain()
    for _ in range(100):
        if len(got) >= 2:
            break
        await asyncio.sleep(0.01)
    assert [d for d, _ in got] == [INVITE, INVITE] and got[0][1].transport == "tcp"
    peer = got[0][1]
    b.send(b"SIP/2.0 100 Trying\r\nContent-Length: 0\r\n\r\n", peer.host, peer.port, "tcp")
    line = await asyncio.wait_for(reader.readline(), 1)
    assert line.startswith(b"SIP/2.0 100")
    writer.close()
    await writer.wait_closed()
    udp.close()
    await a.close()
    await b.close()


def test_content_length_anywhere_in_the_headers() -> None:
    # Found by tests/fuzz/test_sip_fuzz.py: the pattern only matched Content-Length on the last header line
    # (the CR of the others stood before `$`), so a peer writing it earlier had its TCP connection closed.
    first = INVITE.replace(b"Content-Length: 4\r\n", b"").replace(
        b"Call-ID: a", b"Content-Length: 4\r\nCall-ID: a"
    )
    second = INVITE.replace(b"Content-Length: 4\r\n", b"").replace(b"Call-ID: a", b"l:4  \r\nCall-ID: a")
    buf = bytearray(first + second)
    assert split_stream(buf) == [first, second] and not buf
