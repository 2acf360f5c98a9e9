"""SDP parsing and RFC 3264 offer/answer on descriptions written the way real phones and PBXes send them."""

from __future__ import annotations

import pytest

from worker.sip.sdp import (
    Direction,
    Negotiated,
    NoCommonMedia,
    RtpMap,
    answer,
    bump,
    is_hold,
    negotiated_from_answer,
    offer,
    parse,
)


def sdp(*lines: str, end: str = "\r\n") -> str:
    return end.join(lines) + end


# Linphone: opus and speex first, static G.711 without rtpmaps, one telephone-event per clock, a=rtcp.
LINPHONE = sdp(
    "v=0",
    "o=alice 3482 1234 IN IP4 192.168.1.20",
    "s=Talk",
    "c=IN IP4 192.168.1.20",
    "t=0 0",
    "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
    "m=audio 7078 RTP/AVP 96 97 98 0 8 101 99 100",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:97 speex/16000",
    "a=fmtp:97 vbr=on",
    "a=rtpmap:98 speex/8000",
    "a=fmtp:98 vbr=on",
    "a=rtpmap:101 telephone-event/48000",
    "a=rtpmap:99 telephone-event/16000",
    "a=rtpmap:100 telephone-event/8000",
    "a=rtcp:7079",
    "a=rtcp-fb:* trr-int 1000",
    "a=rtcp-fb:* ccm tmmbr",
)

# baresip, sent with bare LF line ends and trailing blanks.
BARESIP = sdp(
    "v=0",
    "o=- 1725432075 3213520734 IN IP4 10.0.0.5 ",
    "s=-",
    "c=IN IP4 10.0.0.5",
    "t=0 0",
    "m=audio 10000 RTP/AVP 96 9 0 8 101",
    "b=AS:128",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 stereo=1;sprop-stereo=1",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=rtcp-rsize",
    "a=ptime:20",
    "a=sendrecv",
    "a=label:1",
    end="\n",
)

# Asterisk (chan_pjsip): many codecs, maxptime, explicit a=sendrecv.
ASTERISK = sdp(
    "v=0",
    "o=- 1866294213 1866294213 IN IP4 203.0.113.10",
    "s=Asterisk",
    "c=IN IP4 203.0.113.10",
    "t=0 0",
    "m=audio 18262 RTP/AVP 107 8 0 3 9 18 111 101",
    "a=rtpmap:107 opus/48000/2",
    "a=fmtp:107 useinbandfec=1",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:3 GSM/8000",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:111 G726-32/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:30",
    "a=maxptime:150",
    "a=sendrecv",
)

# The same Asterisk putting us on hold with a re-INVITE: version + 1, sendonly.
ASTERISK_HOLD = ASTERISK.replace("1866294213 IN", "1866294214 IN").replace("a=sendrecv", "a=sendonly")

# Video first, audio with its own c= and recvonly.
VIDEO_AND_AUDIO = sdp(
    "v=0",
    "o=user 53655765 2353687637 IN IP4 198.51.100.7",
    "s=-",
    "c=IN IP4 198.51.100.7",
    "t=3034423619 3042462419",
    "m=video 51372 RTP/AVP 99",
    "a=rtpmap:99 H264/90000",
    "a=fmtp:99 profile-level-id=42e01f",
    "m=audio 49170 RTP/AVP 0 101",
    "c=IN IP4 198.51.100.8",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=recvonly",
)


def test_parse_linphone_offer() -> None:
    sd = parse(LINPHONE)
    assert sd.origin.username == "alice" and sd.origin.session_id == "3482" and sd.origin.version == 1234
    assert sd.origin.address == "192.168.1.20" and sd.session_name == "Talk"
    assert sd.connection == "192.168.1.20" and sd.direction is None
    assert sd.attributes[0][0] == "rtcp-xr"
    (m,) = sd.media
    assert (m.kind, m.port, m.proto) == ("audio", 7078, "RTP/AVP")
    assert m.payload_types == (96, 97, 98, 0, 8, 101, 99, 100)
    assert m.codec(96) == RtpMap(96, "opus", 48000, 2) and m.fmtp[96] == "useinbandfec=1"
    assert m.codec(0) == RtpMap(0, "PCMU", 8000) and m.codec(8) == RtpMap(8, "PCMA", 8000), "static"
    assert [e.pt for e in m.telephone_events] == [101, 99, 100]
    assert m.rtcp_port == 7079 and m.connection == "192.168.1.20" and m.direction == "sendrecv"
    assert [name for name, _ in m.attributes][-2:] == ["rtcp-fb", "rtcp-fb"], "order kept"
    assert m.attribute("rtcp-fb") == "* trr-int 1000" and m.attribute("sendrecv") is None


def test_parse_baresip_with_lf_and_trailing_blanks() -> None:
    sd = parse(BARESIP)
    assert sd.origin.address == "10.0.0.5" and sd.origin.version == 3213520734
    (m,) = sd.media
    assert m.ptime == 20 and m.direction == "sendrecv" and m.attribute("rtcp-rsize") == ""
    assert [c.name for c in m.codecs] == ["OPUS", "G722", "PCMU", "PCMA", "TELEPHONE-EVENT"]
    assert "b=AS:128" in m.lines and str(sd).endswith("a=label:1\r\n")


def test_parse_asterisk_and_session_vs_media_connection() -> None:
    m = parse(ASTERISK).media[0]
    assert m.ptime == 30 and m.maxptime == 150 and m.fmtp[18] == "annexb=no" and m.fmtp[101] == "0-16"
    assert m.codec(111) == RtpMap(111, "G726-32", 8000)
    video, audio = parse(VIDEO_AND_AUDIO).media
    assert video.kind == "video" and video.connection == "198.51.100.7", "inherits the session c="
    assert audio.connection == "198.51.100.8" and audio.direction == "recvonly", "its own c= wins"


def test_session_level_direction_and_multicast_suffix() -> None:
    text = sdp(
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 233.252.0.1/127",
        "t=0 0",
        "a=sendonly",
        "m=audio 5004/2 RTP/AVP 0",
        "m=audio 5008 RTP/AVP 8",
        "a=inactive",
    )
    sd = parse(text)
    assert sd.direction == "sendonly" and sd.connection == "233.252.0.1"
    assert [m.direction for m in sd.media] == ["sendonly", "inactive"]
    assert sd.media[0].port_count == 2


def test_round_trip_keeps_every_line() -> None:
    for text in (LINPHONE, ASTERISK, VIDEO_AND_AUDIO):
        assert str(parse(text)) == text
        assert parse(str(parse(text))) == parse(text)
    assert str(parse(BARESIP)) == BARESIP.replace(" \n", "\n").replace("\n", "\r\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("\r\n\r\n", "empty"),
        ("hello world", "line 1"),
        ("v=1\r\no=- 1 1 IN IP4 h\r\n", "must start with v=0"),
        ("o=- 1 1 IN IP4 h\r\nv=0\r\n", "must start with v=0"),
        ("v=0\r\ns=-\r\n", "no o= line"),
        ("v=0\r\no=- 1 one IN IP4 h\r\n", "o= must be"),
        ("v=0\r\no=- 1 1 IN IP4\r\n", "o= must be"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4\r\n", "c= must be"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nc=ATM NSAP x\r\n", "c= must be"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio\r\n", "m-line 1"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n", "bad port"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio x RTP/AVP 0\r\n", "bad port"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000 RTP/AVP\r\n", "no formats"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n", "bad rtpmap"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:300 X/8000\r\n", "bad rtpmap"),
        ("v=0\r\no=- 1 1 IN IP4 h\r\nINVITE sip:x SIP/2.0\r\n", "line 3"),
    ],
)
def test_garbage_is_a_clear_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_malformed_hints_are_ignored_not_fatal() -> None:
    m = parse(
        sdp("v=0", "o=- 1 1 IN IP4 h", "c=IN IP4 h", "m=audio 4000 RTP/AVP 0", "a=ptime:abc", "a=rtcp:x")
    ).media[0]
    assert m.ptime is None and m.rtcp_port is None and len(m.attributes) == 2


def test_offer_text() -> None:
    text = offer("192.0.2.10", 40000, session_id="42", version=3)
    assert text == sdp(
        "v=0",
        "o=- 42 3 IN IP4 192.0.2.10",
        "s=-",
        "c=IN IP4 192.0.2.10",
        "t=0 0",
        "m=audio 40000 RTP/AVP 0 8 9 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    )


def test_offer_variants_and_errors() -> None:
    text = offer("2001:db8::1", 40002, codecs=("g722", "pcmu"), telephone_event=False, direction="sendonly")
    sd = parse(text)
    assert sd.origin.addr_type == "IP6" and "c=IN IP6 2001:db8::1" in text
    assert sd.media[0].payload_types == (9, 0) and not sd.media[0].telephone_events
    assert sd.media[0].direction == "sendonly" and int(sd.origin.session_id) > 0
    assert parse(offer("h", 4000)).origin.session_id != parse(offer("h", 4000)).origin.session_id
    with pytest.raises(ValueError, match="opus"):
        offer("192.0.2.1", 4000, codecs=("opus",))
    with pytest.raises(ValueError, match="no codec"):
        offer("192.0.2.1", 4000, codecs=())
    with pytest.raises(ValueError, match="port"):
        offer("192.0.2.1", 0)
    with pytest.raises(ValueError, match="direction"):
        offer("192.0.2.1", 4000, direction="both")  # type: ignore[arg-type]


def test_answer_linphone_takes_first_common_codec_and_its_event_clock() -> None:
    text, neg = answer(parse(LINPHONE), "192.0.2.10", 40000, session_id="7")
    assert neg == Negotiated(
        codec="PCMU",
        payload_type=0,
        clock_rate=8000,
        telephone_event_pt=100,  # the 8000 Hz one, not the first (48000) listed
        remote_address="192.168.1.20",
        remote_port=7078,
        remote_rtcp_port=7079,
        direction="sendrecv",
        ptime=20,
    )
    assert text == sdp(
        "v=0",
        "o=- 7 1 IN IP4 192.0.2.10",
        "s=-",
        "c=IN IP4 192.0.2.10",
        "t=0 0",
        "m=audio 40000 RTP/AVP 0 100",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:100 telephone-event/8000",
        "a=fmtp:100 0-16",
        "a=ptime:20",
        "a=sendrecv",
    )


def test_answer_order_follows_offer_or_prefer() -> None:
    assert answer(parse(BARESIP), "h", 4000)[1].codec == "G722"
    asterisk = parse(ASTERISK)
    _, neg = answer(asterisk, "h", 4000)
    assert (neg.codec, neg.payload_type, neg.ptime, neg.remote_rtcp_port) == ("PCMA", 8, 30, 18263)
    assert answer(asterisk, "h", 4000, prefer=("G722", "PCMU"))[1].codec == "G722"
    assert answer(asterisk, "h", 4000, prefer=("OPUS",))[1].codec == "PCMA", (
        "prefer outside common: offer order"
    )
    assert answer(asterisk, "h", 4000, supported=("pcmu",))[1].payload_type == 0
    text, neg = answer(asterisk, "h", 4000, telephone_event=False)
    assert neg.telephone_event_pt is None and "telephone-event" not in text


def test_answer_echoes_dynamic_payload_types() -> None:
    offer_text = sdp(
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.7",
        "s=-",
        "c=IN IP4 192.0.2.7",
        "t=0 0",
        "m=audio 5000 RTP/AVP 112 96",
        "a=rtpmap:112 pcmu/8000",
        "a=rtpmap:96 telephone-event/8000",
    )
    text, neg = answer(parse(offer_text), "h", 4000)
    assert (neg.codec, neg.payload_type, neg.telephone_event_pt) == ("PCMU", 112, 96)
    assert "m=audio 4000 RTP/AVP 112 96" in text and "a=rtpmap:112 pcmu/8000" in text


def test_answer_rejects_video_and_keeps_line_order() -> None:
    text, neg = answer(parse(VIDEO_AND_AUDIO), "192.0.2.10", 40000)
    ans = parse(text)
    assert [(m.kind, m.port) for m in ans.media] == [("video", 0), ("audio", 40000)]
    assert ans.media[0].formats == ("99",) and ans.media[0].proto == "RTP/AVP"
    assert "t=3034423619 3042462419" in text, "RFC 3264 §6: the answer's t= equals the offer's"
    assert neg.remote_address == "198.51.100.8" and neg.remote_port == 49170
    assert neg.direction == "sendonly" and ans.media[1].direction == "sendonly", "recvonly offer mirrored"


def test_answer_takes_one_audio_stream_and_skips_srtp_and_rejected_lines() -> None:
    offer_text = sdp(
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.7",
        "s=-",
        "c=IN IP4 192.0.2.7",
        "t=0 0",
        "m=audio 0 RTP/AVP 0",
        "m=audio 5000 RTP/SAVP 0",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "m=audio 5002 RTP/AVP 18 8",
        "m=audio 5004 RTP/AVP 0",
    )
    text, neg = answer(parse(offer_text), "h", 4000)
    assert [m.port for m in parse(text).media] == [0, 0, 4000, 0]
    assert neg.codec == "PCMA" and neg.remote_port == 5002 and neg.telephone_event_pt is None


@pytest.mark.parametrize(
    ("media", "reason"),
    [
        (["m=audio 5000 RTP/AVP 96 18", "a=rtpmap:96 opus/48000/2"], "no codec in common.*opus/48000"),
        (["m=audio 5000 RTP/AVP 96", "a=rtpmap:96 PCMU/16000"], "no codec in common"),
        (["m=audio 5000 UDP/TLS/RTP/SAVPF 0"], "not plain RTP"),
        (["m=video 5000 RTP/AVP 99", "a=rtpmap:99 VP8/90000"], "not audio"),
        (["m=application 5000 UDP/DTLS/SCTP webrtc-datachannel"], "not audio"),
        ([], "no m-lines"),
    ],
)
def test_no_common_media(media: list[str], reason: str) -> None:
    sd = parse(sdp("v=0", "o=- 1 1 IN IP4 192.0.2.7", "s=-", "c=IN IP4 192.0.2.7", "t=0 0", *media))
    with pytest.raises(NoCommonMedia, match=reason):
        answer(sd, "h", 4000)


def test_answer_without_any_connection_address_is_rejected() -> None:
    sd = parse(sdp("v=0", "o=- 1 1 IN IP4 192.0.2.7", "s=-", "t=0 0", "m=audio 5000 RTP/AVP 0"))
    with pytest.raises(NoCommonMedia, match="no connection address"):
        answer(sd, "h", 4000)


@pytest.mark.parametrize(
    ("offered", "local", "expected"),
    [
        ("sendrecv", "sendrecv", "sendrecv"),
        ("sendonly", "sendrecv", "recvonly"),
        ("recvonly", "sendrecv", "sendonly"),
        ("inactive", "sendrecv", "inactive"),
        ("sendrecv", "sendonly", "sendonly"),  # we hold while they offer
        ("sendonly", "sendonly", "inactive"),  # both hold
        ("recvonly", "recvonly", "inactive"),
    ],
)
def test_direction_mirroring(offered: Direction, local: Direction, expected: Direction) -> None:
    sd = parse(offer("192.0.2.7", 5000, direction=offered))
    text, neg = answer(sd, "h", 4000, direction=local)
    assert neg.direction == expected and parse(text).media[0].direction == expected


def test_hold_detection_and_legacy_hold() -> None:
    assert not is_hold(parse(ASTERISK)) and is_hold(parse(ASTERISK_HOLD))
    assert is_hold(parse(offer("h", 4000, direction="inactive")))
    assert not is_hold(parse(offer("h", 4000, direction="recvonly")))
    legacy = parse(ASTERISK.replace("c=IN IP4 203.0.113.10", "c=IN IP4 0.0.0.0"))
    assert is_hold(legacy)
    _, neg = answer(legacy, "h", 4000)
    assert neg.direction == "recvonly" and neg.remote_address == "0.0.0.0", "RFC 3264 §8.4: send nothing"
    _, neg = answer(parse(ASTERISK_HOLD), "h", 4000)
    assert neg.direction == "recvonly"
    assert not is_hold(
        parse(VIDEO_AND_AUDIO.replace("a=recvonly", "a=sendrecv").replace("m=video 51372", "m=video 0"))
    )


def test_offerer_side_reads_what_the_remote_chose() -> None:
    ours = offer("192.0.2.10", 40000, session_id="5")
    theirs = sdp(
        "v=0",
        "o=- 99 1 IN IP4 198.51.100.1",
        "s=-",
        "c=IN IP4 198.51.100.1",
        "t=0 0",
        "m=audio 30000 RTP/AVP 9 96",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:96 telephone-event/8000",  # the answerer renumbered it (allowed, RFC 3264 §6.1)
        "a=ptime:40",
        "a=rtcp:30011 IN IP4 198.51.100.1",
        "a=recvonly",
    )
    neg = negotiated_from_answer(ours, parse(theirs))
    assert neg == Negotiated(
        codec="G722",
        payload_type=9,
        clock_rate=8000,
        telephone_event_pt=96,
        remote_address="198.51.100.1",
        remote_port=30000,
        remote_rtcp_port=30011,
        direction="sendonly",
        ptime=40,
    )


def test_offer_answer_round_trip_between_two_agents() -> None:
    our_offer = offer("192.0.2.10", 40000, codecs=("G722", "PCMA"), direction="sendonly")
    their_answer, theirs = answer(parse(our_offer), "192.0.2.20", 50000, supported=("PCMA", "G722"))
    ours = negotiated_from_answer(our_offer, parse(their_answer))
    assert (theirs.codec, ours.codec) == ("G722", "G722") and ours.telephone_event_pt == 101
    assert (theirs.direction, ours.direction) == ("recvonly", "sendonly")
    assert (ours.remote_address, ours.remote_port, theirs.remote_port) == ("192.0.2.20", 50000, 40000)


def test_offerer_side_rejects_answers_that_do_not_fit() -> None:
    ours = offer("192.0.2.10", 40000, codecs=("PCMU",))
    head = ("v=0", "o=- 1 1 IN IP4 h", "s=-", "c=IN IP4 198.51.100.1", "t=0 0")
    with pytest.raises(ValueError, match="2 m-lines for an offer of 1"):
        negotiated_from_answer(ours, parse(sdp(*head, "m=audio 1 RTP/AVP 0", "m=video 0 RTP/AVP 99")))
    with pytest.raises(ValueError, match="no codec we offered"):
        negotiated_from_answer(ours, parse(sdp(*head, "m=audio 30000 RTP/AVP 8")))
    with pytest.raises(NoCommonMedia, match="rejected"):
        negotiated_from_answer(ours, parse(sdp(*head, "m=audio 0 RTP/AVP 0")))


def test_bump_raises_the_version_only() -> None:
    text = offer("192.0.2.10", 40000, session_id="1234", version=7)
    bumped = bump(text)
    assert parse(bumped).origin.version == 8 and parse(bumped).origin.session_id == "1234"
    assert bumped.replace("o=- 1234 8 ", "o=- 1234 7 ") == text
    assert bump(BARESIP).count("\r") == 0 and "3213520735" in bump(BARESIP)
    assert parse(bump(bump(ASTERISK))).origin.version == 1866294215
    with pytest.raises(ValueError, match="o="):
        bump("v=0\r\ns=-\r\n")


# Found by tests/fuzz/test_sip_fuzz.py: values that parsed and were negotiated, then failed in uvloop's
# sendto() on every 20 ms frame (the RTP sockets are IPv4; nothing resolves host names) or RTCP report.
@pytest.mark.parametrize(
    "address", ["pbx.example.com", "2001:db8::1", "sendrecv", "192.0.2.", "192.0.2.300", "::ffff:192.0.2.1"]
)
def test_a_connection_address_rtp_cannot_reach_is_refused(address: str) -> None:
    kind = "IP6" if ":" in address else "IP4"
    head = ("v=0", "o=- 1 1 IN IP4 192.0.2.7", "s=-", f"c=IN {kind} {address}", "t=0 0")
    with pytest.raises(NoCommonMedia, match="not an IPv4 address"):
        answer(parse(sdp(*head, "m=audio 5000 RTP/AVP 0")), "192.0.2.1", 4000)
    # one audio line the RTP layer can reach is still taken
    text, neg = answer(
        parse(sdp(*head, "m=audio 5000 RTP/AVP 0", "m=audio 5002 RTP/AVP 0", "c=IN IP4 192.0.2.8")),
        "192.0.2.1",
        4000,
    )
    assert neg.remote_address == "192.0.2.8" and parse(text).media[0].port == 0
    with pytest.raises(ValueError, match="not an IPv4 address"):
        negotiated_from_answer(offer("192.0.2.1", 4000), parse(sdp(*head, "m=audio 5000 RTP/AVP 0")))


def test_rtcp_ports_stay_ports() -> None:
    head = ("v=0", "o=- 1 1 IN IP4 192.0.2.7", "s=-", "c=IN IP4 192.0.2.7", "t=0 0")
    _, neg = answer(parse(sdp(*head, "m=audio 5000 RTP/AVP 0", "a=rtcp:99999")), "192.0.2.1", 4000)
    assert neg.remote_rtcp_port == 5001, "an a=rtcp past 65535 is ignored like any malformed hint"
    _, neg = answer(parse(sdp(*head, "m=audio 65535 RTP/AVP 0")), "192.0.2.1", 4000)
    assert neg.remote_rtcp_port == 65535, "no port 65536"
    sd = parse(sdp(*head, "m=audio 5000 RTP/AVP 0 \u00b2 " + "9" * 5000, "a=ptime:" + "9" * 5000))
    assert sd.media[0].payload_types == (0,) and sd.media[0].ptime is None
    assert answer(sd, "192.0.2.1", 4000)[1].codec == "PCMU"
