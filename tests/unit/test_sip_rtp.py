"""RTP sessions on loopback: audio both ways in each codec, reordering, RFC 4733 events, symmetric RTP."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

from tests.audio_util import peak_freq, tone
from worker.media.telephone_event import payload
from worker.sip.rtp import JitterBuffer, PortPool, RtpHeader, RtpSession, build_rtp, parse_rtp


def test_header_round_trip_and_garbage() -> None:
    packet = build_rtp(RtpHeader(True, 0, 65535, 4_000_000_000, 0xDEADBEEF), b"\xff" * 160)
    header, body = parse_rtp(packet) or (None, b"")
    assert header == RtpHeader(True, 0, 65535, 4_000_000_000, 0xDEADBEEF) and body == b"\xff" * 160
    assert parse_rtp(b"\x00" * 20) is None and parse_rtp(b"\x80") is None
    padded = bytearray(build_rtp(RtpHeader(False, 8, 1, 2, 3), b"abcd\x00\x00\x03"))
    padded[0] |= 0x20
    assert parse_rtp(bytes(padded)) == (RtpHeader(False, 8, 1, 2, 3), b"abcd")


def test_jitter_buffer_restores_order_and_gives_up_on_losses() -> None:
    jb = JitterBuffer(depth=2)
    out: list[bytes] = []
    for seq in (65534, 0, 65535, 1, 3, 4, 5, 1):  # wraps, reorders, loses 2, repeats 1
        out += jb.push(seq, bytes([seq & 0xFF]))
    assert out == [bytes([x]) for x in (0xFE, 0xFF, 0, 1, 3, 4, 5)]
    assert jb.lost == 1 and jb.late == 1


def test_port_pool_uses_even_pairs_in_range() -> None:
    pool = PortPool(40000, 40010)
    socks = [pool.bind("127.0.0.1") for _ in range(3)]
    ports = [rtp.getsockname()[1] for rtp, _ in socks]
    assert all(p % 2 == 0 and 40000 <= p < 40010 for p in ports) and len(set(ports)) == 3
    assert all(rtcp.getsockname()[1] == rtp.getsockname()[1] + 1 for rtp, rtcp in socks)
    for rtp, rtcp in socks:
        pool.release(rtp.getsockname()[1])
        rtp.close()
        rtcp.close()


@pytest.mark.parametrize(("codec", "pt"), [("pcmu", 0), ("pcma", 8), ("g722", 9)])
async def test_audio_both_ways(codec: str, pt: int) -> None:
    pool = PortPool(41000, 41100)
    heard: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    a = RtpSession(codec, pt, ("127.0.0.1", 9), heard["a"].append, lambda d: None)
    b = RtpSession(codec, pt, ("127.0.0.1", 9), heard["b"].append, lambda d: None)
    port_a = await a.start(pool, "127.0.0.1")
    port_b = await b.start(pool, "127.0.0.1")
    a.update_remote(("127.0.0.1", port_b))
    b.update_remote(("127.0.0.1", port_a))
    signal = tone(1000, 1.0)
    for i in range(0, len(signal), 320):
        a.send(signal[i : i + 320])
        b.send(signal[i : i + 320] // 2)
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.1)
    got_b, got_a = np.concatenate(heard["b"]), np.concatenate(heard["a"])
    assert len(got_b) >= 16000 - 4 * 320, "all but the jitter buffer's last packets"
    assert abs(peak_freq(got_b[1600:]) - 1000) < 10 and abs(peak_freq(got_a[1600:]) - 1000) < 10
    await a.close()
    await b.close()


async def test_telephone_events_and_symmetric_rtp() -> None:
    pool = PortPool(42000, 42100)
    digits: list[str] = []
    session = RtpSession("pcmu", 0, ("127.0.0.1", 9), lambda p: None, digits.append, telephone_event_pt=101)
    port = await session.start(pool, "127.0.0.1")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    seq = 0
    for ts, event in ((1000, 5), (2000, 11)):
        for step in range(6):
            body = payload(event, step >= 3, 160 * (step + 1))
            peer.sendto(build_rtp(RtpHeader(step == 0, 101, seq, ts, 7), body), ("127.0.0.1", port))
            seq += 1
    await asyncio.sleep(0.1)
    assert digits == ["5", "#"], "one digit a press, end retransmissions ignored"
    assert session.remote == peer.getsockname(), "audio now goes where the peer's packets come from"
    session.send(np.zeros(320, dtype=np.int16))
    peer.settimeout(1)
    data, _ = peer.recvfrom(2048)
    parsed = parse_rtp(data)
    assert parsed is not None and parsed[0].payload_type == 0 and len(parsed[1]) == 160
    peer.close()
    await session.close()
