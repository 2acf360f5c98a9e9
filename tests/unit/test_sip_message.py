"""SIP messages: the RFC 4475 torture corpus, tricky messages of our own, the header multi-map, URIs, Via and
name-addr values, response_to, and fuzzing for the contract that `parse` raises SipParseError and nothing
else, and that whatever it accepts survives serialize -> parse unchanged."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.sip.message import (
    Headers,
    Request,
    Response,
    SipParseError,
    Via,
    canonical_name,
    parse,
    parse_cseq,
    parse_media_type,
    parse_via,
    response_to,
)
from worker.sip.uri import AbsoluteUri, NameAddr, SipUri, TelUri, parse_name_addr, parse_uri

# The corpus is RFC 4475 Appendix A (see tests/sip/torture/README.md): here when checked in, else where the
# shared fixtures keep it. Without it the corpus cases are skipped, not failed.
CORPUS_DIRS = (
    Path(__file__).resolve().parents[1] / "sip" / "torture",
    Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "rfc4475",  # beside the checkout
)


def _load_corpus() -> dict[str, bytes]:
    for folder in CORPUS_DIRS:
        files = sorted(folder.glob("*.dat")) if folder.is_dir() else []
        if files:
            return {f.stem: f.read_bytes() for f in files}
    return {}


CORPUS = _load_corpus()

# RFC 4475 tag -> (section, statuses a rejection may carry; empty: must parse). Accepted invalid ones are
# those the RFC lets an element take (baddate) or whose fault is for a later layer (416, 420, 415, ...).
EXPECT: dict[str, tuple[str, frozenset[int]]] = {
    "wsinv": ("3.1.1.1", frozenset()),
    "intmeth": ("3.1.1.2", frozenset()),
    "esc01": ("3.1.1.3", frozenset()),
    "escnull": ("3.1.1.4", frozenset()),
    "esc02": ("3.1.1.5", frozenset()),
    "lwsdisp": ("3.1.1.6", frozenset()),
    "longreq": ("3.1.1.7", frozenset()),
    "dblreq": ("3.1.1.8", frozenset()),
    "semiuri": ("3.1.1.9", frozenset()),
    "transports": ("3.1.1.10", frozenset()),
    "mpart01": ("3.1.1.11", frozenset()),
    "unreason": ("3.1.1.12", frozenset()),
    "noreason": ("3.1.1.13", frozenset()),
    "badinv01": ("3.1.2.1", frozenset({400})),
    "clerr": ("3.1.2.2", frozenset({400})),
    "ncl": ("3.1.2.3", frozenset({400})),
    "scalar02": ("3.1.2.4", frozenset({400})),
    "scalarlg": ("3.1.2.5", frozenset({400})),  # a response: dropped whatever the status
    "quotbal": ("3.1.2.6", frozenset({400})),
    "ltgtruri": ("3.1.2.7", frozenset({400})),
    "lwsruri": ("3.1.2.8", frozenset({400})),
    "lwsstart": ("3.1.2.9", frozenset({400})),
    "trws": ("3.1.2.10", frozenset({400})),
    "escruri": ("3.1.2.11", frozenset({400})),
    "baddate": ("3.1.2.12", frozenset()),
    "regbadct": ("3.1.2.13", frozenset({400})),
    "badaspec": ("3.1.2.14", frozenset({400})),
    "baddn": ("3.1.2.15", frozenset({400})),
    "badvers": ("3.1.2.16", frozenset({505})),
    "mismatch01": ("3.1.2.17", frozenset({400})),
    "mismatch02": ("3.1.2.18", frozenset({400, 501})),
    "bigcode": ("3.1.2.19", frozenset({400})),  # a response: dropped
    "badbranch": ("3.2.1", frozenset()),
    "insuf": ("3.3.1", frozenset({400})),
    "unkscm": ("3.3.2", frozenset()),
    "novelsc": ("3.3.3", frozenset()),
    "unksm2": ("3.3.4", frozenset()),
    "bext01": ("3.3.5", frozenset()),
    "invut": ("3.3.6", frozenset()),
    "regaut01": ("3.3.7", frozenset()),
    "multi01": ("3.3.8", frozenset({400})),
    "mcl01": ("3.3.9", frozenset({400})),
    "bcast": ("3.3.10", frozenset()),
    "zeromf": ("3.3.11", frozenset()),
    "cparam01": ("3.3.12", frozenset()),
    "cparam02": ("3.3.13", frozenset()),
    "regescrt": ("3.3.14", frozenset()),
    "sdp01": ("3.3.15", frozenset()),
    "inv2543": ("3.4.1", frozenset()),
}


def corpus(tag: str) -> bytes:
    if tag not in CORPUS:
        pytest.skip("RFC 4475 corpus not installed (tests/sip/torture/README.md)")
    return CORPUS[tag]


def same(a: Request | Response, b: Request | Response) -> None:
    """Two messages are the same one: start line, every header value in order, body."""
    assert type(a) is type(b)
    if isinstance(a, Request) and isinstance(b, Request):
        assert (a.method, str(a.uri)) == (b.method, str(b.uri))
    if isinstance(a, Response) and isinstance(b, Response):
        assert (a.status, a.reason) == (b.status, b.reason)
    assert list(a.headers) == list(b.headers)
    assert a.body == b.body


def round_trips(message: Request | Response) -> Request | Response:
    """serialize -> parse gives the same message, and serializing is then stable."""
    wire = message.serialize()
    again = parse(wire)
    same(message, again)
    assert again.serialize() == wire
    assert (again.call_id, again.cseq, len(again.headers)) == (
        message.call_id,
        message.cseq,
        len(message.headers),
    )
    return again


def test_corpus_files_all_have_an_expectation() -> None:
    if not CORPUS:
        pytest.skip("RFC 4475 corpus not installed (tests/sip/torture/README.md)")
    assert set(CORPUS) - {"test"} <= set(EXPECT)  # test.dat is in the archive but in no section


@pytest.mark.parametrize("tag", sorted(EXPECT))
def test_rfc4475(tag: str) -> None:
    data = corpus(tag)
    statuses = EXPECT[tag][1]
    if statuses:
        with pytest.raises(SipParseError) as caught:
            parse(data)
        assert caught.value.status in statuses, caught.value.reason
        partial = caught.value.partial
        if partial is not None:  # a UAS can still answer it
            answer = response_to(partial, caught.value.status)
            assert answer.serialize().startswith(f"SIP/2.0 {caught.value.status} ".encode())
        return
    message = parse(data)
    round_trips(message)
    CHECKS.get(tag, lambda m: None)(message)


def test_baddn_without_the_final_empty_line_is_rejected_too() -> None:
    data = corpus("baddn")
    with pytest.raises(SipParseError):
        parse(data[:-2] if data.endswith(b"\r\n\r\n") else data)


def _wsinv(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert m.method == "INVITE" and m.max_forwards == 68 and str(m.cseq) == "9 INVITE"
    assert m.to.tag == "1918181833n" and m.from_.tag == "98asjd8"
    assert m.from_.display == 'J Rosenberg \\"'
    assert [v.sent_by for v in m.via] == ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    assert [v.branch for v in m.via] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert m.headers.get("Subject") == ""
    assert m.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    (contact,) = m.contacts
    assert contact.display == 'Quoted string ""' and contact.q == 0.33 and contact.has_param("secondparam")
    assert m.routes[0].uri.lr  # type: ignore[union-attr]
    assert len(m.body) == 150


def _intmeth(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert isinstance(m.uri, SipUri)
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-" and m.from_.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"


def _esc01(m: Request | Response) -> None:
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert m.uri.user == "sips%3Auser%40example.com" and m.uri.host == "example.net"
    assert m.to.uri.equivalent(parse_uri("sip:user@example.com"))
    contact = m.contacts[0].uri
    assert isinstance(contact, SipUri) and contact.lr and contact.param("name") == "v%61lue%25%34%31"


def _esc02(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.method == "RE%47IST%45R"
    assert [str(c.uri) for c in m.contacts] == [
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"  # an extension header, not Contact


def _escnull(m: Request | Response) -> None:
    assert [c.uri.user for c in m.contacts] == ["%00", "%00%00"]  # type: ignore[union-attr]


def _lwsdisp(m: Request | Response) -> None:
    assert m.from_.display == "caller" and m.from_.tag == "323"


def _longreq(m: Request | Response) -> None:
    assert len(m.via) == 34 and m.via[-1].received == "192.0.2.5"
    assert m.to.uri.port == 6000  # type: ignore[union-attr]
    assert m.from_.has_param(
        "unknownvaluelessparamnameparamnameparamnameparamnameparamnameparamnameparamname"
        "paramnameparamnameparamname"
    )


def _dblreq(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.method == "REGISTER" and m.body == b""
    assert any("ignored" in d for d in m.defects)


def _semiuri(m: Request | Response) -> None:
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert m.uri.user == "user;par=u%40example.net" and m.uri.host == "example.com" and not m.uri.params
    assert len(m.headers.get_all("Accept")) == 6


def _transports(m: Request | Response) -> None:
    assert [v.transport for v in m.via] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def _mpart01(m: Request | Response) -> None:
    assert len(m.body) == 553 and m.body.count(b"\n") > m.body.count(b"\r\n")  # bare LFs kept
    assert m.content_type is not None and m.content_type.param("boundary") == "7a9cbec02ceef655"
    assert m.top_via.has_param("rport") and m.top_via.rport is None


def _unreason(m: Request | Response) -> None:
    assert isinstance(m, Response) and m.status == 200 and m.reason.startswith("= 2**3 * 5**2 но ")


def _noreason(m: Request | Response) -> None:
    assert isinstance(m, Response) and m.status == 100 and m.reason == ""


def _unksm2(m: Request | Response) -> None:
    assert isinstance(m.to.uri, AbsoluteUri) and str(m.to.uri) == "isbn:2983792873"
    assert str(m.from_.uri) == "http://www.example.com" and str(m.contacts[0].uri) == "name:John_Smith"


def _unkscm(m: Request | Response) -> None:
    assert (
        isinstance(m, Request) and isinstance(m.uri, AbsoluteUri) and m.uri.scheme == "nobodyknowsthisscheme"
    )


def _cparam01(m: Request | Response) -> None:
    contact = m.contacts[0]
    assert contact.has_param("unknownparam") and not contact.uri.params  # type: ignore[union-attr]


def _cparam02(m: Request | Response) -> None:
    contact = m.contacts[0]
    assert not contact.params and contact.uri.has_param("unknownparam")  # type: ignore[union-attr]


def _regescrt(m: Request | Response) -> None:
    assert m.contacts[0].uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)  # type: ignore[union-attr]


def _regaut01(m: Request | Response) -> None:
    assert m.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


def _inv2543(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.max_forwards is None and m.top_via.branch is None
    assert m.from_.tag is None and m.body.endswith(b"RTP/AVP 0\r\n")
    assert len(m.defects) == 2


def _zeromf(m: Request | Response) -> None:
    assert m.max_forwards == 0


CHECKS: dict[str, Callable[[Request | Response], None]] = {
    "wsinv": _wsinv,
    "intmeth": _intmeth,
    "esc01": _esc01,
    "esc02": _esc02,
    "escnull": _escnull,
    "lwsdisp": _lwsdisp,
    "longreq": _longreq,
    "dblreq": _dblreq,
    "semiuri": _semiuri,
    "transports": _transports,
    "mpart01": _mpart01,
    "unreason": _unreason,
    "noreason": _noreason,
    "unksm2": _unksm2,
    "unkscm": _unkscm,
    "cparam01": _cparam01,
    "cparam02": _cparam02,
    "regescrt": _regescrt,
    "regaut01": _regaut01,
    "inv2543": _inv2543,
    "zeromf": _zeromf,
}

# --- messages of our own

BASE = (
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-base-1",
    "Max-Forwards: 70",
    'From: "Ada" <sip:ada@example.com>;tag=f-100',
    "To: <sip:grace@example.org>",
    "Call-ID: base-call-1@192.0.2.10",
    "CSeq: 7 OPTIONS",
)


def wire(start: str, *headers: str, body: bytes = b"", length: bool = True) -> bytes:
    lines = [start, *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def options(
    *extra: str, drop: tuple[str, ...] = (), start: str = "OPTIONS sip:grace@example.org SIP/2.0"
) -> bytes:
    kept = [h for h in BASE if h.split(":", 1)[0] not in drop]
    return wire(start, *kept, *extra)


def rejects(data: bytes, status: int = 400) -> SipParseError:
    with pytest.raises(SipParseError) as caught:
        parse(data)
    assert caught.value.status == status, caught.value.reason
    return caught.value


def request(data: bytes) -> Request:
    message = parse(data)
    assert isinstance(message, Request)
    round_trips(message)
    return message


TORTUOUS = (
    b"\r\n\r\n"  # keep-alives before the start line
    b"REFER sip:grace@[2001:db8::5]:5070;transport=tcp SIP/2.0\r\n"
    b"vIa :\tSIP / 2.0 / tcp\r\n"
    b"    [2001:db8::9]:5071 ; branch = z9hG4bK-tort ; received=2001:db8::1 ; rport=5071 ,\r\n"
    b" SIP/2.0/UDP proxy.example.net;branch=z9hG4bK-p1;maddr=[2001:db8::7]\r\n"
    b"v: SIP/2.0/WS edge.example.net;rport;branch=z9hG4bK-e\r\n"
    b"f:Ada Lovelace<sip:ada@example.com>\r\n"
    b"  ;tag=abc\r\n"
    b't: "Grace \\"Amazing\\" Hopper, \\\\RADM" <sip:grace@example.org;user=phone>\r\n'
    b"i: tort@example.com\r\n"
    b"CSEQ: 00042\r\n"
    b"\tREFER\r\n"
    b"m: <sip:ada@[2001:db8::9]:5071;ob>;expires=600;"
    b'+sip.instance="<urn:uuid:00000000-0000-1000-8000-0>",\r\n'
    b'  "B, C" <sip:bc@example.com>;q=0.5\r\n'
    b"Route: <sip:p1.example.net;lr>, <sip:p2.example.net;lr>\r\n"
    b"Route: <sip:p3.example.net;lr>\r\n"
    b'Authorization: Digest username="ada", realm="example.com", nonce="n", uri="sip:grace@example.org",\r\n'
    b' response="0123456789abcdef0123456789abcdef"\r\n'
    b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
    b"Supported: replaces, , norefersub\r\n"
    b"r: <sip:carol@example.com?Replaces=abc%40example.com%3Bto-tag%3D1>\r\n"
    b"s:\r\n"
    b"X-Unknown  :  a, b ,c\r\n"
    b"Max-Forwards: 0070\r\n"
    b'c: application/sdp ; charset = "utf-8"\r\n'
    b"l:   5\r\n"
    b"\r\n"
    b"v=0\r\nextra octets past Content-Length"
)


def test_a_tortuous_request_of_our_own() -> None:
    m = parse(TORTUOUS)
    assert isinstance(m, Request) and m.method == "REFER"
    assert isinstance(m.uri, SipUri) and m.uri.host == "2001:db8::5" and m.uri.port == 5070
    assert m.uri.transport == "tcp"
    top = m.top_via
    assert (top.sent_protocol, top.host, top.port, top.branch) == (
        "SIP/2.0/TCP",
        "2001:db8::9",
        5071,
        "z9hG4bK-tort",
    )
    assert (top.received, top.rport) == ("2001:db8::1", 5071)
    assert [v.transport for v in m.via] == ["TCP", "UDP", "WS"]
    assert (
        m.via[1].param("maddr") == "[2001:db8::7]" and m.via[2].has_param("rport") and m.via[2].rport is None
    )
    assert (m.from_.display, m.from_.tag) == ("Ada Lovelace", "abc")
    assert m.to.display == 'Grace "Amazing" Hopper, \\RADM' and m.to.tag is None
    assert m.to.uri.param("user") == "phone"  # type: ignore[union-attr]
    assert (m.cseq.number, m.cseq.method, m.max_forwards, m.call_id) == (42, "REFER", 70, "tort@example.com")
    first, second = m.contacts
    assert first.expires == 600 and first.param("+sip.instance") == '"<urn:uuid:00000000-0000-1000-8000-0>"'
    assert (second.display, second.q) == ("B, C", 0.5)
    assert [str(r.uri) for r in m.routes] == [f"sip:p{i}.example.net;lr" for i in (1, 2, 3)]
    assert (
        len(m.headers.get_all("Authorization")) == 1
        and m.headers.get("Date") == "Sat, 13 Nov 2010 23:29:00 GMT"
    )
    assert m.headers.get_all("Supported") == ["replaces", "norefersub"]
    assert m.headers.get("Refer-To") == "<sip:carol@example.com?Replaces=abc%40example.com%3Bto-tag%3D1>"
    assert m.headers.get("Subject") == "" and m.headers.get("x-unknown") == "a, b ,c"
    assert m.content_type is not None and m.content_type.mime == "application/sdp"
    assert m.content_type.param("charset") == '"utf-8"'
    assert m.body == b"v=0\r\n" and any("ignored" in d for d in m.defects)
    round_trips(m)


def test_a_response_of_our_own() -> None:
    data = wire(
        "SIP/2.0 180 Ringing, très bien",
        "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-r;received=192.0.2.99;rport=6000",
        "Via: SIP/2.0/UDP 192.0.2.11;branch=z9hG4bK-s",
        "From: <sip:ada@example.com>;tag=1",
        "To: <sip:grace@example.org>;tag=2",
        "Call-ID: r1",
        "CSeq: 1 INVITE",
        "Record-Route: <sip:p1.example.net;lr>",
        "Contact: <sip:grace@192.0.2.20>",
    )
    m = parse(data)
    assert isinstance(m, Response) and (m.status, m.reason) == (180, "Ringing, très bien")
    assert m.top_via.rport == 6000 and m.top_via.received == "192.0.2.99" and len(m.via) == 2
    assert m.record_routes[0].uri.lr  # type: ignore[union-attr]
    round_trips(m)


@pytest.mark.parametrize(
    ("start", "status", "reason"),
    [
        ("SIP/2.0 200 OK", 200, "OK"),
        ("SIP/2.0 100 ", 100, ""),
        ("sip/2.0 486 Busy Here", 486, "Busy Here"),
        ("SIP/2.0 699 x", 699, "x"),
        ("SIP/2.0 200", 200, ""),  # no SP before an empty reason: tolerated, noted
    ],
)
def test_status_lines(start: str, status: int, reason: str) -> None:
    m = parse(wire(start, *BASE))
    assert isinstance(m, Response) and (m.status, m.reason) == (status, reason)


@pytest.mark.parametrize(
    "start",
    [
        "SIP/2.0 099 Low",
        "SIP/2.0 700 High",
        "SIP/2.0 2000 OK",
        "SIP/2.0 20x OK",
        "SIP/2.0  200 OK",
        "SIP/2.0",
    ],
)
def test_bad_status_lines(start: str) -> None:
    rejects(wire(start, *BASE))


def test_another_version_in_a_status_line_is_505() -> None:
    rejects(wire("SIP/3.0 200 OK", *BASE), 505)


@pytest.mark.parametrize(
    "start",
    [
        "OPTIONS  sip:grace@example.org SIP/2.0",
        "OPTIONS sip:grace@example.org SIP/2.0 ",
        "OPTIONS\tsip:grace@example.org SIP/2.0",
        "OPTIONS sip:grace@example.org ;lr SIP/2.0",
        "OPTIONS <sip:grace@example.org> SIP/2.0",
        "OPTIONS sip:grace@example.org?Route=%3Csip:x.example%3E SIP/2.0",
        "OPTIONS sip:grace@example.org SIP/2.0a",
        "OPTIONS sip:grace@example.org HTTP/1.1",
    ],
)
def test_bad_request_lines_are_400_with_something_to_answer(start: str) -> None:
    error = rejects(options(start=start))
    assert error.partial is not None
    answer = response_to(error.partial, 400)
    assert answer.call_id == "base-call-1@192.0.2.10" and answer.cseq.method == "OPTIONS"


@pytest.mark.parametrize(
    "start", ["OPTIONS sip:grace@example.org", "garbage", "OPT{}IONS sip:x.example SIP/2.0"]
)
def test_unreadable_start_lines_have_nothing_to_answer(start: str) -> None:
    assert rejects(options(start=start)).partial is None


def test_another_sip_version_is_505() -> None:
    error = rejects(options(start="OPTIONS sip:grace@example.org SIP/3.0"), 505)
    assert error.partial is not None
    assert response_to(error.partial, 505).reason == "Version Not Supported"


def test_version_and_tokens_are_case_insensitive_methods_are_not() -> None:
    m = request(
        options("MAX-FORWARDS: 9", drop=("Max-Forwards",), start="OPTIONS sip:grace@example.org sip/2.0")
    )
    assert m.max_forwards == 9
    assert m.method == "OPTIONS"
    rejects(options(start="options sip:grace@example.org SIP/2.0"))  # CSeq says OPTIONS (RFC 3261 §7.1)


def test_unknown_methods_headers_and_schemes_are_kept() -> None:
    m = request(
        wire(
            "FROB urn:service:sos SIP/2.0",
            *BASE[:5],
            "CSeq: 7 FROB",
            "X-Weird_Header.~!: value, with ; odd ,, bits",
            "Require: frobnication",
        )
    )
    assert m.method == "FROB" and isinstance(m.uri, AbsoluteUri) and m.uri.scheme == "urn"
    assert m.headers.get("x-weird_header.~!") == "value, with ; odd ,, bits"
    assert list(m.headers)[-2] == ("X-Weird_Header.~!", "value, with ; odd ,, bits")


@pytest.mark.parametrize("missing", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_headers_are_400(missing: str) -> None:
    error = rejects(options(drop=(missing,)))
    assert missing in error.reason and error.partial is not None


def test_missing_max_forwards_is_tolerated_and_noted() -> None:
    m = request(options(drop=("Max-Forwards",)))
    assert m.max_forwards is None and any("Max-Forwards" in d for d in m.defects)


@pytest.mark.parametrize(
    "header",
    [
        "To: <sip:x@example.org>",
        "From: <sip:x@example.org>;tag=2",
        "Call-ID: other",
        "CSeq: 8 OPTIONS",
        "Max-Forwards: 1",
        "l: 0",
    ],
)
def test_single_valued_headers_twice_are_400(header: str) -> None:
    assert "more than one" in rejects(options(header)).reason
    assert "more than one" in rejects(options("c: text/plain", "Content-Type: text/plain")).reason


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("CSeq: 4294967296 OPTIONS", "2**32"),
        ("CSeq: OPTIONS", "CSeq"),
        ("CSeq: 1OPTIONS", "CSeq"),
        ("CSeq: 1 OPTIONS extra", "CSeq"),
        ("Max-Forwards: 256", "Max-Forwards"),
        ("Max-Forwards: -1", "Max-Forwards"),
        ("Max-Forwards: ７", "Max-Forwards"),  # a Unicode digit is not a DIGIT
        ("Call-ID: has space", "Call-ID"),
        ("Call-ID: a@b@c", "Call-ID"),
        ("Content-Type: application", "Content-Type"),
        ("Contact: *, <sip:a@example.com>", "*"),
        ("Route: sip:p1.example.net;lr", "<URI>"),
        ("Record-Route: <sip:p1.example.net;lr", "unterminated"),
        ("Contact: <sip:a@example.com>, ,<sip:b@example.com>", "empty element"),
        ("Via: SIP/2.0/UDP", "Via"),
    ],
)
def test_bad_structured_headers_are_400(header: str, reason: str) -> None:
    name = header.split(":", 1)[0]
    base = (
        tuple(h for h in BASE if h.split(":", 1)[0] != name)
        if name in ("CSeq", "Max-Forwards", "Call-ID")
        else BASE
    )
    error = rejects(wire("OPTIONS sip:grace@example.org SIP/2.0", *base, header))
    assert reason in error.reason


def test_cseq_values() -> None:
    assert (parse_cseq("4294967295 INVITE").number, parse_cseq("0009\tACK").method) == (4294967295, "ACK")
    with pytest.raises(SipParseError):
        parse_cseq("9" * 5000 + " INVITE")


def test_contact_star() -> None:
    m = request(options("Contact: *", "Expires: 0"))
    assert m.contact_wildcard and m.contacts == ()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("abc", "bad"),
        ("-1", "bad"),
        ("+5", "bad"),
        ("1 2", "bad"),
        ("", "bad"),
        ("6", "shorter"),
        ("9" * 5000, "shorter"),
        ("４", "bad"),
    ],
)
def test_bad_content_length(value: str, problem: str) -> None:
    data = (
        wire("OPTIONS sip:grace@example.org SIP/2.0", *BASE, f"Content-Length: {value}", length=False)
        + b"hello"
    )
    error = rejects(data)
    assert problem in error.reason and error.partial is not None


def test_content_length_cuts_and_absence_takes_the_rest() -> None:
    start = "OPTIONS sip:grace@example.org SIP/2.0"
    cut = request(wire(start, *BASE, "l: 003", length=False) + b"hello")
    assert cut.body == b"hel" and cut.headers.get("Content-Length") is None
    rest = request(wire(start, *BASE, length=False) + b"hello\r\n")
    assert rest.body == b"hello\r\n" and any("Content-Length" in d for d in rest.defects)


@pytest.mark.parametrize(
    "data",
    [
        b"OPTIONS sip:grace@example.org SIP/2.0\r\nVia: SIP/2.0/UDP h.example\r\n",  # no empty line
        wire("OPTIONS sip:grace@example.org SIP/2.0", " folded: onto the start line", *BASE),
        wire("OPTIONS sip:grace@example.org SIP/2.0", *BASE, "No colon here"),
        wire("OPTIONS sip:grace@example.org SIP/2.0", *BASE, "Bad Name: x"),
        wire("OPTIONS sip:grace@example.org SIP/2.0", *BASE, "Bad@Name: x"),
        wire("OPTIONS sip:grace@example.org SIP/2.0", *BASE, ": no name"),
        wire("OPTIONS sip:grace@example.org SIP/2.0", *BASE, "X-A: bare\nLF"),
        wire("OPTIONS sip:grace@example.org SIP/2.0", *BASE, "X-A: bare\rCR"),
        wire("OPTIONS sip:grace@example.org SIP/2.0\n", *BASE),
        b"",
        b"\r\n\r\n",
    ],
)
def test_framing_errors(data: bytes) -> None:
    rejects(data)


def test_folding_and_blanks_around_colons() -> None:
    m = request(
        wire(
            "OPTIONS sip:grace@example.org SIP/2.0",
            *BASE[:5],
            "CSeq :\t7",
            " \t OPTIONS",
            "Subject   :   lots",
            "\tof",
            "  folding  ",
        )
    )
    assert str(m.cseq) == "7 OPTIONS" and m.headers.get("subject") == "lots of folding"


def test_undecodable_octets_survive() -> None:
    data = options("Subject: caf\xe9 ok").replace("caf\xe9".encode(), b"caf\xe9")  # Latin-1, not UTF-8
    m = parse(data)
    assert m.headers.get("Subject") == "caf\udce9 ok" and m.serialize() == data


def test_many_headers_and_long_values() -> None:
    extra = [f"X-H{i}: " + "v" * 500 for i in range(300)]
    m = request(options(*extra, "Via: " + ", ".join(f"SIP/2.0/TCP h{i}.example.net" for i in range(200))))
    assert len(m.via) == 201 and len(m.headers) == 6 + 300 + 200


# --- Headers


def test_compact_forms_and_case() -> None:
    compact = {
        "i": "Call-ID",
        "m": "Contact",
        "e": "Content-Encoding",
        "l": "Content-Length",
        "c": "Content-Type",
        "f": "From",
        "s": "Subject",
        "k": "Supported",
        "t": "To",
        "v": "Via",
        "a": "Accept-Contact",
        "b": "Referred-By",
        "o": "Event",
        "r": "Refer-To",
        "u": "Allow-Events",
        "x": "Session-Expires",
        "y": "Identity",
        "j": "Reject-Contact",
        "d": "Request-Disposition",
    }
    for short, full in compact.items():
        assert canonical_name(short) == full and canonical_name(short.upper()) == full
        assert canonical_name(full.upper()) == full
    assert canonical_name("X-Custom") == "X-Custom"
    headers = Headers([("v", "SIP/2.0/UDP a.example"), ("VIA", "SIP/2.0/UDP b.example"), ("i", "x")])
    assert headers.get_all("Via") == ["SIP/2.0/UDP a.example", "SIP/2.0/UDP b.example"]
    assert headers.get("call-id") == "x" and "CALL-ID" in headers and "Route" not in headers
    assert list(headers)[0] == ("Via", "SIP/2.0/UDP a.example")


def test_list_values_split_only_where_the_grammar_allows() -> None:
    h = Headers()
    h.add("Contact", '"Doe, John" <sip:j@example.com;x=a,b>;q=0.1, <sip:k@example.com>')
    assert h.get_all("Contact") == ['"Doe, John" <sip:j@example.com;x=a,b>;q=0.1', "<sip:k@example.com>"]
    h.add("Contact", '"unterminated, <sip:a@b>')
    assert h.get_all("Contact")[-1] == '"unterminated, <sip:a@b>'
    for name in (
        "WWW-Authenticate",
        "Authorization",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Authentication-Info",
        "Date",
        "Subject",
        "X-Anything",
    ):
        h.add(name, 'Digest realm="a, b", nonce="c", qop="auth,auth-int"')
        assert h.count(name) == 1
    h.add("Allow", "INVITE, ACK ,CANCEL,,BYE")
    assert h.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "BYE"]
    h.add("Supported", "")
    assert h.get_all("Supported") == [""]  # an empty list header is still present


def test_headers_editing() -> None:
    h = Headers(
        [("Via", "SIP/2.0/UDP a.example"), ("To", "<sip:t@example.com>"), ("Via", "SIP/2.0/UDP b.example")]
    )
    h.prepend("Via", "SIP/2.0/UDP top.example")
    assert h.get_all("via")[0] == "SIP/2.0/UDP top.example" and list(h)[0][1] == "SIP/2.0/UDP top.example"
    h.prepend("Record-Route", "<sip:rr.example;lr>")
    assert list(h)[0] == ("Record-Route", "<sip:rr.example;lr>")
    assert h.pop_first("v") == "SIP/2.0/UDP top.example" and h.count("Via") == 2
    h.set("Via", "SIP/2.0/TCP x.example, SIP/2.0/TCP y.example")
    assert h.get_all("Via") == ["SIP/2.0/TCP x.example", "SIP/2.0/TCP y.example"]
    assert [n for n, _ in h] == ["Record-Route", "Via", "Via", "To"]
    h.set("Subject", "new")
    assert list(h)[-1] == ("Subject", "new")
    assert h.remove("VIA") == 2 and h.remove("Via") == 0 and h.pop_first("Via") is None
    copy = h.copy()
    copy.add("X-Y", "1")
    assert "X-Y" not in h and copy != h and len(copy) == len(h) + 1
    assert h.get("Missing", "default") == "default" and h.get_all("Missing") == []


@pytest.mark.parametrize("value", ["a\r\nInjected: yes", "a\nb", "a\rb"])
def test_headers_refuse_line_breaks(value: str) -> None:
    with pytest.raises(ValueError):
        Headers().add("Subject", value)
    with pytest.raises(ValueError):
        Headers().set("Subject", value)


@pytest.mark.parametrize("name", ["", "Bad Name", "Bad:Name", "Bad\r\nName"])
def test_headers_refuse_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        Headers().add(name, "x")


def test_structured_values_follow_header_changes() -> None:
    m = request(options())
    assert m.top_via.host == "192.0.2.10"
    m.headers.prepend("Via", "SIP/2.0/TCP proxy.example.net;branch=z9hG4bK-new")
    assert m.top_via.host == "proxy.example.net" and len(m.via) == 2
    m.headers.set("To", "<sip:grace@example.org>;tag=t9")
    assert m.to.tag == "t9"
    m.headers.remove("CSeq")
    with pytest.raises(SipParseError):
        m.cseq  # noqa: B018


def test_serialize_writes_content_length_from_the_body() -> None:
    pairs = [(name, value) for name, value in (h.split(": ", 1) for h in BASE)]
    m = Request(
        "OPTIONS", parse_uri("sip:grace@example.org"), Headers([*pairs, ("Content-Length", "999")]), b"hi"
    )
    data = m.serialize()
    assert data.count(b"Content-Length") == 1 and data.endswith(b"Content-Length: 2\r\n\r\nhi")
    assert data.startswith(b"OPTIONS sip:grace@example.org SIP/2.0\r\nVia: ") and parse(data).body == b"hi"
    m.body = b""
    assert parse(m.serialize()).body == b""


# --- URIs


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@example.com",
        "sips:alice:secret@example.com:5061;transport=tcp?subject=hi&priority=urgent",
        "sip:+1-212-555-1212;isub=12@gw.example.com;user=phone",
        "sip:[2001:db8::10]:5070;lr",
        "sip:[::ffff:192.0.2.10]",
        "sip:192.0.2.1:0",
        "sip:host.example.com.",
        "sip:a%20b@example.com;maddr=239.255.255.1;ttl=15",
        "sip:user:@example.com",
        "sip:x@example.com;a=[::1];b=c:d/e&f+g$",
        "tel:+1-201-555-0123;ext=1234",
        "tel:7042;phone-context=example.com",
        "urn:service:sos",
        "http://www.example.com/a?b=c#frag",
        "soap.beep://192.0.2.103:3002",
    ],
)
def test_uris_round_trip(text: str) -> None:
    uri = parse_uri(text)
    assert str(uri) == text and parse_uri(str(uri)) == uri


def test_uri_parts() -> None:
    uri = parse_uri("SIPS:bob:pw@Biloxi.Example.COM:5061;Transport=TLS;LR;maddr=[2001:db8::1]?to=x%40y&a=")
    assert isinstance(uri, SipUri)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips",
        "bob",
        "pw",
        "Biloxi.Example.COM",
        5061,
    )
    assert uri.transport == "tls" and uri.lr and uri.maddr == "[2001:db8::1]"
    assert uri.headers == (("to", "x%40y"), ("a", ""))
    hostport = "sips:bob:pw@Biloxi.Example.COM:5061"
    assert str(uri) == hostport + ";transport=TLS;lr;maddr=[2001:db8::1]?to=x%40y&a="
    assert uri.hostport == "Biloxi.Example.COM:5061"
    changed = uri.with_param("transport", "tcp").without_param("lr")
    assert str(changed) == hostport + ";transport=tcp;maddr=[2001:db8::1]?to=x%40y&a="
    tel = parse_uri("tel:+44-20-7946-0000;Phone-Context=+44")
    assert isinstance(tel, TelUri) and tel.scheme == "tel" and tel.param("phone-context") == "+44"


def test_escaped_parameter_names_are_unescaped() -> None:
    uri = parse_uri("sip:cal%6Cer@host.example.net;%6C%72;n%61me=v%61lue%25%34%31;a%20b")
    assert isinstance(uri, SipUri) and uri.lr and uri.param("name") == "v%61lue%25%34%31"
    assert str(uri) == "sip:cal%6Cer@host.example.net;lr;name=v%61lue%25%34%31;a%20b"
    assert parse_uri(str(uri)) == uri


def test_ipv6_references_rfc5118_shapes() -> None:
    ambiguous = parse_uri("sip:[2001:db8::10:5070]")  # RFC 5118 §4.3: all address, no port
    assert isinstance(ambiguous, SipUri) and (ambiguous.host, ambiguous.port) == ("2001:db8::10:5070", None)
    clear = parse_uri("sip:user@[2001:db8::10]:5070")  # §4.4
    assert isinstance(clear, SipUri) and (clear.host, clear.port) == ("2001:db8::10", 5070)
    assert str(clear) == "sip:user@[2001:db8::10]:5070"


@pytest.mark.parametrize(
    "text",
    [
        "sip:2001:db8::10",  # RFC 5118 §4.2: an IPv6 address must be bracketed
        "sip:[2001:db8::10",
        "sip:[2001:db8:::192.0.2.1]",
        "sip:[1:2:3:4:5:6:7:8:9]",
        "sip:[2001:db8::10%25eth0]",
        "sip:[example.com]",
        "sip:",
        "sip:@example.com",
        "sip:us er@example.com",
        "sip:a%zz@example.com",
        "sip:example.com:99999",
        "sip:example.com:5o60",
        "sip:example.com:",
        "sip:-bad.example.com",
        "sip:bad-.example.com",
        "sip:host.123",
        "sip:256.1.1.1",
        "sip:a..b.example.com",
        "sip:example.com;",
        "sip:example.com;a=b=c",
        "sip:example.com;;lr",
        "sip:example.com?",
        "sip:example.com?novalue",
        "sip:example.com>",
        "sips:a@b@example.com",
        "tel:",
        "tel:;ext=1",
        "tel:+1 555",
        "1sip:example.com",
        "noscheme",
        ":empty",
        "http:",
        "http://has space.example.com",
        "<sip:example.com>",
        " sip:example.com",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


@pytest.mark.parametrize(
    ("a", "b"),
    [  # RFC 3261 §19.1.4, equivalent pairs
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5"),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        ),
        ("sip:[2001:db8::1]", "sip:[2001:DB8:0:0::1]"),
    ],
)
def test_equivalent_uris(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert isinstance(ua, SipUri) and isinstance(ub, SipUri) and ua.equivalent(ub) and ub.equivalent(ua)


@pytest.mark.parametrize(
    ("a", "b"),
    [  # RFC 3261 §19.1.4, pairs that differ
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        ("sip:a@example.com;maddr=x.example.com", "sip:a@example.com"),
        ("sip:a@example.com;user=phone", "sip:a@example.com"),
        ("sip:a@example.com", "sips:a@example.com"),
        ("sip:a:pw@example.com", "sip:a@example.com"),
    ],
)
def test_different_uris(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert not ua.equivalent(ub) and not ub.equivalent(ua)
    assert not ua.equivalent(parse_uri("tel:+1"))


def test_tel_and_other_uri_equivalence() -> None:
    assert parse_uri("tel:+1-201-555-0123;ext=1").equivalent(parse_uri("TEL:+1(201)5550123;EXT=1"))
    assert not parse_uri("tel:+1-201-555-0123").equivalent(parse_uri("tel:+1-201-555-0124"))
    assert parse_uri("URN:service:sos").equivalent(parse_uri("urn:service:sos"))
    assert not parse_uri("urn:service:sos").equivalent(parse_uri("urn:service:SOS"))


# --- name-addr, Via, Content-Type


@pytest.mark.parametrize(
    ("text", "display", "uri", "params"),
    [
        ('"Alice" <sip:alice@example.com>;tag=1', "Alice", "sip:alice@example.com", (("tag", "1"),)),
        ("Alice Smith <sip:alice@example.com>", "Alice Smith", "sip:alice@example.com", ()),
        ("caller<sip:c@example.com>", "caller", "sip:c@example.com", ()),
        ("<sip:alice@example.com>", None, "sip:alice@example.com", ()),
        ('"" <sip:alice@example.com>', "", "sip:alice@example.com", ()),
        ("sip:alice@example.com;tag=1", None, "sip:alice@example.com", (("tag", "1"),)),
        ("sip:alice@example.com;user=phone", None, "sip:alice@example.com", (("user", "phone"),)),
        (
            "<sip:alice@example.com;user=phone>;TAG=2",
            None,
            "sip:alice@example.com;user=phone",
            (("tag", "2"),),
        ),
        ('"a \\"b\\" \\\\c, d" <tel:+1>', 'a "b" \\c, d', "tel:+1", ()),
        (
            "  <sip:a@example.com> ;  tag =  x ;lr ; q=1.0 ",
            None,
            "sip:a@example.com",
            (("tag", "x"), ("lr", None), ("q", "1.0")),
        ),
        (
            '<sip:a@example.com>;p="quoted; value, here";ip=[2001:db8::1]',
            None,
            "sip:a@example.com",
            (("p", '"quoted; value, here"'), ("ip", "[2001:db8::1]")),
        ),
        (
            "<sip:a@example.com?Route=%3Csip:p.example%3E>",
            None,
            "sip:a@example.com?Route=%3Csip:p.example%3E",
            (),
        ),
        (
            "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>",
            None,
            "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            (),
        ),
    ],
)
def test_name_addr(
    text: str, display: str | None, uri: str, params: tuple[tuple[str, str | None], ...]
) -> None:
    na = parse_name_addr(text)
    assert (na.display, str(na.uri), na.params) == (display, uri, params)
    assert parse_name_addr(str(na)) == na


@pytest.mark.parametrize(
    "text",
    [
        '"Mr. J. User <sip:j.user@example.com>',
        "Bell, Alexander <sip:a.g.bell@example.com>",
        '"Watson, Thomas" < sip:t.watson@example.org >',
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
        '"x"sip:a@example.com',
        "<sip:a@example.com",
        "<sip:a@example.com>>",
        "<sip:a@example.com> junk",
        "<sip:a@example.com>;",
        "<sip:a@example.com>;tag=",
        "<sip:a@example.com>;;tag=1",
        "<sip:a@example.com>;tag=a=b",
        "",
        "<>",
    ],
)
def test_bad_name_addr(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(text)


def test_name_addr_helpers() -> None:
    na = parse_name_addr("<sip:a@example.com>;expires=3600;q=0.7")
    assert (na.expires, na.q, na.tag) == (3600, 0.7, None)
    assert parse_name_addr("<sip:a@example.com>;expires=280297596632815").expires == 0xFFFFFFFF
    for bad_q in ("1.5", "0.1234", "1e-1", ".5", "2"):
        assert parse_name_addr(f"<sip:a@example.com>;q={bad_q}").q is None
    tagged = na.with_param("tag", "z").with_param("expires", "0")
    assert str(tagged) == "<sip:a@example.com>;expires=0;q=0.7;tag=z" and tagged.tag == "z"
    assert (
        str(NameAddr(uri=parse_uri("sip:b@example.com"), display='say "hi"'))
        == '"say \\"hi\\"" <sip:b@example.com>'
    )
    with pytest.raises(SipParseError):
        parse_name_addr("sip:a@example.com", bare=False)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1", ("UDP", "192.0.2.1", 5060, "z9hG4bK1")),
        (
            "sip / 2.0 / tls  host.example.com ; branch = z9hG4bK2",
            ("TLS", "host.example.com", None, "z9hG4bK2"),
        ),
        ("SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK3", ("TCP", "2001:db8::9", 5061, "z9hG4bK3")),
        ("SIP/2.0/WSS h.example.com : 443", ("WSS", "h.example.com", 443, None)),
        ("SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bK4", ("UNKNOWN", "t4.example.com", None, "z9hG4bK4")),
    ],
)
def test_via(text: str, expect: tuple[str, str, int | None, str | None]) -> None:
    via = parse_via(text)
    assert (via.transport, via.host, via.port, via.branch) == expect
    assert parse_via(str(via)) == via


def test_via_received_and_rport() -> None:
    bracketed = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3")
    bare = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3")
    assert bracketed.received == bare.received == "2001:db8::9:255"  # RFC 5118 §4.5, §4.6
    asked = parse_via("SIP/2.0/UDP h.example.com;rport;branch=z9hG4bK5")
    assert asked.has_param("rport") and asked.rport is None
    filled = asked.with_param("rport", "6060").with_param("received", "192.0.2.7")
    assert (filled.rport, filled.received) == (6060, "192.0.2.7")
    assert str(filled) == "SIP/2.0/UDP h.example.com;rport=6060;branch=z9hG4bK5;received=192.0.2.7"
    built = Via(transport="TCP", host="2001:db8::1", port=5060, params=(("branch", "z9hG4bKx"),))
    assert (
        str(built) == "SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKx"
        and built.sent_by == "[2001:db8::1]:5060"
    )


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP",
        "SIP/2.0/UDP ",
        "SIP/2.0 UDP host.example.com",
        "SIP/2.0/UDPhost.example.com",
        "SIP/2.0/UDP host.example.com:70000",
        "SIP/2.0/UDP host.example.com:",
        "SIP/2.0/UDP 2001:db8::1",
        "SIP/2.0/UDP [host.example.com]",
        "SIP/2.0/UDP [2001:db8::1",
        "SIP/2.0/UDP host.example.com;;",
        "SIP/2.0/UDP host.example.com;branch=",
        "SIP/2.0/UDP host.example.com junk",
        "SIP/2.0/UDP host..example.com",
    ],
)
def test_bad_via(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(text)


def test_media_type() -> None:
    media = parse_media_type('Multipart/Mixed ; boundary="a b";charset=utf-8')
    assert media.mime == "multipart/mixed" and media.param("boundary") == '"a b"'
    assert str(media) == 'multipart/mixed;boundary="a b";charset=utf-8'
    for bad in ("text", "text/", "/plain", "text/plain;", "text/plain junk"):
        with pytest.raises(SipParseError):
            parse_media_type(bad)


# --- response_to


def test_response_to_copies_what_rfc3261_8_2_6_says() -> None:
    m = request(
        options(
            "Via: SIP/2.0/TCP p1.example.net;branch=z9hG4bK-p1, SIP/2.0/UDP p2.example.net;branch=z9hG4bK-p2",
            "Timestamp: 54",
            "Record-Route: <sip:p1.example.net;lr>",
        )
    )
    answer = response_to(m, 200, to_tag="t-1")
    assert (answer.status, answer.reason) == (200, "OK")
    assert answer.headers.get_all("Via") == m.headers.get_all("Via") and len(answer.via) == 3
    assert answer.to.tag == "t-1" and answer.from_ == m.from_ and answer.call_id == m.call_id
    assert (
        answer.cseq == m.cseq and "Timestamp" not in answer.headers and "Record-Route" not in answer.headers
    )
    assert parse(answer.serialize()).to.tag == "t-1"
    trying = response_to(m, 100)
    assert trying.reason == "Trying" and trying.headers.get("Timestamp") == "54" and trying.to.tag is None
    assert response_to(m, 299).reason == "OK" and response_to(m, 488, "Nope").reason == "Nope"


def test_response_to_keeps_an_existing_to_tag() -> None:
    m = request(options())
    m.headers.set("To", "sip:grace@example.org;tag=abc")
    assert response_to(m, 200, to_tag="abc").headers.get("To") == "sip:grace@example.org;tag=abc"
    with pytest.raises(ValueError):
        response_to(m, 200, to_tag="other")
    with pytest.raises(ValueError):
        response_to(m, 700)
    with pytest.raises(ValueError):
        response_to(m, 200, to_tag="bad tag")


def test_response_to_a_malformed_request() -> None:
    error = rejects(options('To: "unterminated <sip:grace@example.org>', drop=("To",)))
    assert error.partial is not None
    answer = response_to(error.partial, error.status, to_tag="x")
    assert answer.headers.get("To") == '"unterminated <sip:grace@example.org>'  # echoed, no tag guessed
    assert answer.serialize().startswith(b"SIP/2.0 400 Bad Request\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;")


# --- fuzzing

OWN_SEEDS = (
    TORTUOUS,
    options(),
    options(drop=("Max-Forwards",), start="BYE sip:grace@[2001:db8::1]:5060;transport=udp SIP/2.0").replace(
        b"7 OPTIONS", b"7 BYE"
    ),
    wire(
        "SIP/2.0 200 OK",
        *BASE,
        "Contact: <sip:g@192.0.2.3>;expires=60",
        "Content-Type: application/sdp",
        body=b"v=0\r\no=- 1 1 IN IP4 192.0.2.3\r\ns=-\r\n",
    ),
)
SNIPPETS = (
    b"\r\n",
    b"\r\n ",
    b"\r\n\r\n",
    b";;",
    b";tag=",
    b"<sip:",
    b">",
    b'"',
    b"\\",
    b"%",
    b"%0",
    b"[::1]",
    b"[",
    b"]",
    b":",
    b",",
    b"@",
    b"?",
    b"=",
    b" ",
    b"\t",
    b"\x00",
    b"\xff\xfe",
    b"\xc3",
    b"SIP/2.0",
    b"\r\nVia: SIP/2.0/UDP x.example;branch=z9hG4bK\r\n",
    b"\r\nContent-Length: 99999999999999999\r\n",
    b"\r\nl: -1\r\n",
    b"\r\nContact: *\r\n",
    b"\r\nCSeq: 1 X\r\n",
    b"9" * 40,
)
SEEDS = OWN_SEEDS + tuple(CORPUS[tag] for tag in sorted(CORPUS))


def check_contract(data: bytes) -> bool:
    """`parse` either accepts and the result survives serialize/parse (with its structured values surviving
    str/parse), or raises SipParseError with 400/505 whose partial request can be answered."""
    try:
        message = parse(data)
    except SipParseError as error:
        assert error.status in (400, 505)
        if error.partial is not None:
            assert response_to(error.partial, error.status).serialize().startswith(b"SIP/2.0 ")
        return False
    again = parse(message.serialize())
    same(message, again)
    for via in message.via:
        assert parse_via(str(via)) == via
    for na in (message.from_, message.to, *message.contacts, *message.routes, *message.record_routes):
        assert parse_name_addr(str(na)) == na
        assert parse_uri(str(na.uri)) == na.uri
    if isinstance(message, Request):
        assert parse_uri(str(message.uri)) == message.uri
    return True


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three edits: a random or special byte, a grammar snippet, a deletion, a copied chunk, and
    (rarely, since most then lack the empty line) a truncation."""
    out = bytearray(data)
    for _ in range(1 if rng.random() < 0.5 else rng.randint(2, 3)):
        at = rng.randrange(len(out) + 1)
        op = rng.randrange(21)
        if op < 4 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op < 9:
            out[at:at] = rng.choice(SNIPPETS)
        elif op < 12:
            del out[at : at + rng.randint(1, 12)]
        elif op < 15:
            other = rng.randrange(len(out) + 1)
            out[at:at] = out[min(at, other) : max(at, other)][:80]
        elif op < 20:
            out[at:at] = bytes([rng.choice(b' \t\r\n:;,<>"\\@%[]?=/')])
        else:
            del out[at:]
    return bytes(out)


def test_fuzz_random_bytes() -> None:
    rng = random.Random(3261)
    alphabet = b'SIP/2.0 INVITEsip:@;,<>"\\%[]:=?\r\n\t 0123456789abcz'
    names = [b"Via", b"v", b"From", b"To", b"t", b"Call-ID", b"CSeq", b"Contact", b"m", b"Route", b"l", b"X"]
    for i in range(3000):
        n = rng.randrange(0, 300)
        if i % 3 == 0:
            data = bytes(rng.randrange(256) for _ in range(n))
        elif i % 3 == 1:
            data = bytes(rng.choice(alphabet) for _ in range(n))
        else:  # a header section of random values under real names, so the value parsers are reached
            lines = [rng.choice(names) + b":" + bytes(rng.choice(alphabet) for _ in range(rng.randrange(30)))
                     for _ in range(rng.randrange(1, 8))]  # fmt: skip
            data = (
                b"\r\n".join(lines) + b"\r\n\r\n" + bytes(rng.randrange(256) for _ in range(rng.randrange(9)))
            )
        check_contract(data)
        check_contract(b"INVITE sip:a@b.example SIP/2.0\r\n" + data)
        check_contract(b"SIP/2.0 200 OK\r\n" + data)


def test_fuzz_mutations_of_valid_messages() -> None:
    rng = random.Random(4475)
    accepted = 0
    cases = 0
    for seed in SEEDS:
        for _ in range(max(300, 12000 // len(SEEDS))):
            accepted += check_contract(mutate(rng, seed))
            cases += 1
    assert cases >= 12000 and accepted > cases // 20  # the mutations also reach the accepting paths


def test_fuzz_shuffled_and_duplicated_headers() -> None:
    rng = random.Random(5118)
    for seed in SEEDS:
        head, sep, body = seed.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        for _ in range(40):
            headers = lines[1:]
            rng.shuffle(headers)
            if headers and rng.random() < 0.5:
                headers.insert(rng.randrange(len(headers)), rng.choice(headers))
            if headers and rng.random() < 0.5:
                headers.pop(rng.randrange(len(headers)))
            check_contract(b"\r\n".join([lines[0], *headers]) + sep + body)


@pytest.mark.parametrize(
    "chunk",
    [
        b'"',
        b"\\",
        b'"\\',
        b";",
        b"a;",
        b"a ",
        b"<",
        b"a-",
        b"a.",
        b"%",
        b"[",
        b":",
        b",",
        b"a=",
        b" ;a",
        b'"a',
        b"\r\n ",
        b"a,",
        b"<a>",
        b"@",
    ],
)
def test_pathological_values_parse_in_linear_time(chunk: bytes) -> None:
    fill = chunk * (30000 // len(chunk))
    places = [
        b"From: " + fill,
        b"From: " + fill + b" <sip:a@example.com>",
        b"To: <sip:" + fill + b"@example.com>",
        b"Contact: " + fill,
        b"Via: SIP/2.0/UDP " + fill,
        b"Route: " + fill,
        b"CSeq: " + fill,
        b"Call-ID: " + fill,
        b"Content-Type: a/" + fill,
        b"Supported: " + fill,
    ]
    for place in places:
        data = options().replace(b"Max-Forwards: 70", place)
        started = time.perf_counter()
        check_contract(data)
        check_contract(b"OPTIONS sip:" + fill + b" SIP/2.0\r\n" + data.split(b"\r\n", 1)[1])
        assert time.perf_counter() - started < 0.5, place[:20]
