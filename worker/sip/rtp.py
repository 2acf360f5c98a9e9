"""RTP and RTCP for SIP calls (RFC 3550): one UDP port pair per call, G.711 / G.722 audio, RFC 4733 events.

- Ports: an even RTP port and the next odd one for RTCP, from `RTP_PORT_MIN..RTP_PORT_MAX` (RFC 3550 §11).
- Symmetric RTP (RFC 4961): audio is sent to the address the peer's RTP comes from once it has come, so a
  phone behind NAT is reached on the mapping its own packets opened; until then, to the SDP address.
- A small reordering jitter buffer: packets are released in sequence order once `depth` newer ones have
  arrived or the missing one is given up; late duplicates are dropped. The caller pipeline after it keeps
  its own clock, so the buffer only has to restore order, not pace.
- RTCP: a sender report every 5 s (RFC 3550 §6.4.1); whatever arrives counts as a sign of life.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from worker.media.codecs import Codec, make_codec
from worker.media.telephone_event import TelephoneEventDecoder

log = logging.getLogger("pbx.worker.sip.rtp")

# G.722's RTP clock is 8000 though it samples at 16 kHz (RFC 3551 §4.5.2).
SAMPLES_PER_FRAME = 160  # 20 ms at the RTP clock of all three
RTCP_EVERY = 5.0
_NTP_EPOCH = 2208988800


@dataclass(slots=True)
class RtpHeader:
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int


def parse_rtp(data: bytes) -> tuple[RtpHeader, bytes] | None:
    """The header and payload of an RTP packet, or None for anything that is not one (RFC 3550 §5.1)."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    end = len(data)
    if first & 0x20:  # padding: the last byte counts it
        end -= data[-1]
    if offset > end:
        return None
    return RtpHeader(bool(second & 0x80), second & 0x7F, seq, ts, ssrc), data[offset:end]


def build_rtp(header: RtpHeader, payload: bytes) -> bytes:
    second = (0x80 if header.marker else 0) | header.payload_type
    return struct.pack("!BBHII", 0x80, second, header.sequence, header.timestamp, header.ssrc) + payload


class JitterBuffer:
    """Restores sequence order; releases a packet once `depth` packets after it have arrived."""

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth
        self._held: dict[int, bytes] = {}
        self._next: int | None = None
        self.lost = 0
        self.late = 0

    def push(self, seq: int, payload: bytes) -> list[bytes]:
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) & 0xFFFF
        if ahead >= 0x8000:  # behind what was already released: too late, or a duplicate
            self.late += 1
            return []
        self._held[seq] = payload
        out: list[bytes] = []
        while self._held:
            assert self._next is not None
            if self._next in self._held:
                out.append(self._held.pop(self._next))
                self._next = (self._next + 1) & 0xFFFF
            elif len(self._held) > self.depth:
                self.lost += 1  # the missing packet is given up
                self._next = (self._next + 1) & 0xFFFF
            else:
                break
        return out


class PortPool:
    """Even RTP ports (RTCP on the next) taken from a range, each used by one call at a time."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low + (low % 2)
        self.high = high
        self._busy: set[int] = set()
        self._cursor = random.randrange(self.low, max(self.low + 2, self.high), 2)

    def bind(self, host: str) -> tuple[socket.socket, socket.socket]:
        """Bound RTP and RTCP sockets on the first free pair after the cursor."""
        span = max(2, self.high - self.low)
        for _ in range(span // 2):
            port = self._cursor
            self._cursor = self.low + (self._cursor - self.low + 2) % span
            if port in self._busy or port + 1 > self.high:
                continue
            rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtp.bind((host, port))
                rtcp.bind((host, port + 1))
            except OSError:
                rtp.close()
                rtcp.close()
                continue
            rtp.setblocking(False)
            rtcp.setblocking(False)
            self._busy.add(port)
            return rtp, rtcp
        raise OSError(f"no free RTP port pair in {self.low}-{self.high}")

    def release(self, port: int) -> None:
        self._busy.discard(port)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_packet: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_packet = on_packet

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_packet(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("rtp socket error: %s", exc)  # ICMP port unreachable while the peer is not up yet


class RtpSession:
    """One call's media stream. `on_audio` gets 16 kHz int16; `on_digit` each RFC 4733 key press."""

    def __init__(
        self,
        codec: str,
        payload_type: int,
        remote: tuple[str, int],
        on_audio: Callable[[np.ndarray], None],
        on_digit: Callable[[str], None],
        telephone_event_pt: int | None = None,
    ) -> None:
        self.codec_name = codec
        self.payload_type = payload_type
        self.telephone_event_pt = telephone_event_pt
        self.remote = remote
        self.remote_rtcp = (remote[0], remote[1] + 1)
        self.on_audio = on_audio
        self.on_digit = on_digit
        self._encoder: Codec = make_codec(codec)
        self._decoder: Codec = make_codec(codec)
        self._jitter = JitterBuffer()
        self._events = TelephoneEventDecoder()
        self.ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._first = True
        self._latched = False
        self.sent = 0
        self.received = 0
        self.octets = 0
        self.last_packet = time.monotonic()
        self._seq_first: int | None = None
        self._seq_high = 0  # highest extended sequence number seen (RFC 3550 A.1, simplified)
        self.audio_received = 0
        self.local_port = 0
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._pool: PortPool | None = None
        self._reports: asyncio.Task[None] | None = None

    async def start(self, pool: PortPool, host: str) -> int:
        """Bind a port pair and start receiving; returns the RTP port (for the SDP)."""
        loop = asyncio.get_running_loop()
        rtp, rtcp = pool.bind(host)
        self._pool = pool
        self.local_port = rtp.getsockname()[1]
        self._rtp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self._on_rtp), sock=rtp)
        self._rtcp, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self._on_rtcp), sock=rtcp)
        self._reports = asyncio.create_task(self._report(), name=f"rtcp:{self.local_port}")
        return self.local_port

    def update_remote(self, remote: tuple[str, int], codec: str | None = None, pt: int | None = None) -> None:
        """A re-INVITE moved the stream (or changed its codec)."""
        if not self._latched:
            self.remote = remote
            self.remote_rtcp = (remote[0], remote[1] + 1)
        if codec is not None and codec != self.codec_name:
            self.codec_name = codec
            self._encoder, self._decoder = make_codec(codec), make_codec(codec)
        if pt is not None:
            self.payload_type = pt

    # --- out ---------------------------------------------------------------------------------------------

    def send(self, frame: np.ndarray) -> None:
        """One 20 ms frame (320 samples at 16 kHz) as one RTP packet."""
        if self._rtp is None:
            return
        payload = self._encoder.encode(frame)
        header = RtpHeader(self._first, self.payload_type, self._seq, self._ts, self.ssrc)
        self._first = False
        self._rtp.sendto(build_rtp(header, payload), self.remote)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + SAMPLES_PER_FRAME) & 0xFFFFFFFF
        self.sent += 1
        self.octets += len(payload)

    # --- in ----------------------------------------------------------------------------------------------

    def _on_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        parsed = parse_rtp(data)
        if parsed is None:
            return
        header, payload = parsed
        self.last_packet = time.monotonic()
        self.received += 1
        if addr != self.remote:
            # Symmetric RTP: answer where the peer's packets come from (its NAT mapping).
            self.remote = addr
            self.remote_rtcp = (addr[0], addr[1] + 1)
            self._latched = True
        if header.payload_type == self.telephone_event_pt:
            digit = self._events.feed(payload, header.timestamp)
            if digit is not None:
                self.on_digit(digit)
            return
        if header.payload_type != self.payload_type:
            return  # comfort noise and other payloads are not audio for the pipeline
        self._count(header.sequence)
        for chunk in self._jitter.push(header.sequence, payload):
            try:
                self.on_audio(self._decoder.decode(chunk))
            except Exception:
                log.debug("undecodable %s payload of %d bytes", self.codec_name, len(chunk))

    def _count(self, seq: int) -> None:
        self.audio_received += 1
        if self._seq_first is None:
            self._seq_first = self._seq_high = seq
            return
        delta = (seq - self._seq_high) & 0xFFFF
        if delta < 0x8000:  # ahead (maybe across a wrap)
            self._seq_high += delta

    @property
    def lost(self) -> int:
        """Audio packets that never came (cumulative, as RTCP counts it; duplicates can make it negative)."""
        if self._seq_first is None:
            return 0
        return self._seq_high - self._seq_first + 1 - self.audio_received

    def _on_rtcp(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last_packet = time.monotonic()

    async def _report(self) -> None:
        try:
            while True:
                await asyncio.sleep(RTCP_EVERY)
                self._send_report()
        except Exception:
            log.exception("rtp port %d: RTCP reports stopped", self.local_port)

    def _send_report(self) -> None:
        if self._rtcp is None or not self.sent:
            return
        now = time.time() + _NTP_EPOCH
        ntp_hi, ntp_lo = int(now), int((now % 1) * (1 << 32))
        # SR (RFC 3550 §6.4.1) with no report blocks, then an SDES CNAME chunk (§6.5), as a compound.
        sr = struct.pack(
            "!BBHIIIIII", 0x80, 200, 6, self.ssrc, ntp_hi, ntp_lo, self._ts, self.sent, self.octets
        )
        cname = b"pbx"
        item = bytes([1, len(cname)]) + cname + b"\0"
        item += b"\0" * (-(len(item)) % 4)
        sdes = struct.pack("!BBHI", 0x81, 202, (4 + len(item)) // 4, self.ssrc) + item
        self._rtcp.sendto(sr + sdes, self.remote_rtcp)

    async def close(self) -> None:
        if self._rtp is not None:
            log.info(
                "rtp port %d: sent %d, received %d, lost %d",
                *(self.local_port, self.sent, self.audio_received, self.lost),
            )
        if self._reports is not None:
            self._reports.cancel()
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        self._rtp = self._rtcp = None
        if self._pool is not None:
            self._pool.release(self.local_port)
