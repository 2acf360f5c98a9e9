"""The WebRTC pieces that can be checked without a stack: SDP edits, RFC 4733 decoding, trickle ICE."""

from __future__ import annotations

import numpy as np

from common.config import Settings
from tests.e2e.rtc_client import RtcCaller
from worker.media.telephone_event import TelephoneEventDecoder, parse, payload
from worker.rtc import sdp as rtc_sdp
from worker.rtc.peer import RtcPeer

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 9 0 8 110 126\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n"
    "a=candidate:1 1 udp 2122260223 192.168.1.5 50000 typ host\r\n"
    "a=candidate:2 1 udp 2122262783 2001:db8::5 50001 typ host\r\n"
)


def test_codec_choice_follows_rustpbx_order() -> None:
    assert rtc_sdp.choose_codec(OFFER) == ("opus", 48000)
    no_opus = OFFER.replace("a=rtpmap:111 opus/48000/2\r\n", "")
    assert rtc_sdp.choose_codec(no_opus) == ("g722", 8000)
    only_ulaw = "v=0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    assert rtc_sdp.choose_codec(only_ulaw) == ("pcmu", 8000)
    assert rtc_sdp.choose_codec("v=0\r\nm=audio 9 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n") is None


def test_telephone_event_at_the_codec_clock() -> None:
    assert rtc_sdp.telephone_event_pt(OFFER, 48000) == 110
    assert rtc_sdp.telephone_event_pt(OFFER, 8000) == 126
    answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 x\r\n"
    out = rtc_sdp.add_telephone_event(answer, 110, 48000)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111 110\r\n" in out
    assert "a=rtpmap:110 telephone-event/48000\r\na=fmtp:110 0-15\r\n" in out


def test_candidates_ipv6_and_public_address() -> None:
    stripped = rtc_sdp.strip_ipv6_candidates(OFFER)
    assert "2001:db8" not in stripped and "192.168.1.5" in stripped
    public = rtc_sdp.add_public_address(stripped, "203.0.113.7")
    assert "c=IN IP4 203.0.113.7" in public
    assert (
        "a=candidate:1n 1 udp 2122260222 203.0.113.7 50000 typ srflx raddr 192.168.1.5 rport 50000" in public
    )


def test_rfc4733_key_presses() -> None:
    assert parse(payload(11, True, 800)) == (11, True, 800)
    decoder = TelephoneEventDecoder()
    got = []
    for ts, event in ((100, 1), (100, 1), (100, 1), (900, 5), (900, 5), (1700, 5), (2500, 16)):
        got.append(decoder.feed(payload(event, False, 160), ts))
    assert got == ["1", None, None, "5", None, "5", None], (
        "one digit a press; the same key twice counts twice"
    )
    assert decoder.feed(b"\x01", 3000) is None


async def test_trickled_candidates_reach_the_ice_agent() -> None:
    caller = RtcCaller()
    offer = await caller.offer(candidates=False)
    [line] = caller.candidates()
    settings = Settings(rtc_addresses=("127.0.0.1",))
    peer = RtcPeer("c", settings, lambda pcm: None, lambda d: None, lambda r, i: None)
    try:
        await peer.add_candidate(line)  # before the offer: kept
        answer = await peer.answer(offer, 5, enable_ipv6=False)
        assert "telephone-event/48000" in answer
        ice = peer.pc.getTransceivers()[0].receiver.transport.transport
        remote = ice.getRemoteCandidates()
        port = int(line.split()[5])
        assert [c.port for c in remote] == [port], "the candidate given before the offer was added"
        await peer.add_candidate(f"candidate:9 1 udp 100 127.0.0.1 {port + 1} typ host", "0", 0)
        assert sorted(c.port for c in ice.getRemoteCandidates()) == [port, port + 1]
        try:
            await peer.add_candidate("candidate:nonsense")
        except ValueError as exc:
            assert "not an ICE candidate" in str(exc)
        else:
            raise AssertionError("a broken candidate is refused")
        peer.push(np.zeros(320, dtype=np.int16))
    finally:
        await peer.close()
        await caller.close()


def test_offers_with_numbers_past_any_bound_are_read_not_raised_on() -> None:
    # Found by tests/fuzz/test_sip_fuzz.py: int() refuses more than 4300 digits with a ValueError about
    # integer conversion, which reached the client as the reason its offer failed.
    huge = "9" * 5000
    offer = OFFER.replace("a=rtpmap:111 opus/48000/2", f"a=rtpmap:{huge} opus/48000/2")
    assert rtc_sdp.choose_codec(offer) == ("g722", 8000)
    assert rtc_sdp.choose_codec(OFFER.replace("G722/8000", f"G722/{huge}")) == ("opus", 48000)
    assert rtc_sdp.choose_codec(OFFER.replace("rtpmap:111", "rtpmap:200")) == ("g722", 8000)
    candidate = f"a=candidate:1 1 udp {huge} 192.168.1.5 50000 typ host"
    assert rtc_sdp.add_public_address(OFFER.replace(OFFER.splitlines()[-2], candidate), "198.51.100.1")
