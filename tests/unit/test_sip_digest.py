"""Digest authentication: the RFC examples, every algorithm and qop against a reference written from the
formulas, parsing oddities, server-side verification, and the nonce-count / stale bookkeeping."""

from __future__ import annotations

import hashlib

import pytest

from worker.sip.digest import (
    Challenge,
    DigestState,
    answer,
    header_names,
    make_challenge,
    parse_challenge,
    parse_credentials,
    pick_challenge,
    verify,
)

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def reference(
    algorithm: str,
    user: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str = "",
    cnonce: str = "",
    body: bytes = b"",
) -> str:
    """RFC 7616 §3.4.1-§3.4.3 written out again, independently of the module, to check it against."""
    name = "sha256" if algorithm.upper().startswith("SHA-256") else "md5"

    def h(data: bytes) -> str:
        return hashlib.new(name, data).hexdigest()

    a1 = f"{user}:{realm}:{password}".encode()
    ha1 = h(a1)
    if algorithm.lower().endswith("-sess"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())
    a2 = f"{method}:{uri}".encode()
    if qop == "auth-int":
        a2 += b":" + h(body).encode()
    ha2 = h(a2)
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


def params_of(header: str) -> dict[str, str]:
    creds = parse_credentials(header)
    return {
        "response": creds.response,
        "algorithm": creds.algorithm,
        "qop": creds.qop or "",
        "nc": f"{creds.nc:08x}" if creds.nc is not None else "",
        "cnonce": creds.cnonce or "",
        "opaque": creds.opaque or "",
    }


def test_rfc2617_example() -> None:
    # RFC 2617 §3.5, as the RFC prints it: folded over lines, qop list without blanks.
    challenge = parse_challenge(
        'Digest\r\n realm="testrealm@host.com",\r\n qop="auth,auth-int",\r\n'
        ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge == Challenge(
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
        qop=("auth", "auth-int"),
    )
    value = answer(challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b")
    assert value == (
        'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, '
        'cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001'
    )


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm: str, response: str) -> None:
    # RFC 7616 §3.9.1: the same credentials under both algorithms ("Circle of Life", lower-case "of").
    challenge = parse_challenge(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    assert challenge.algorithm == algorithm and challenge.qop == ("auth", "auth-int")
    value = answer(challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=RFC7616_CNONCE)
    got = params_of(value)
    assert got["response"] == response and got["qop"] == "auth" and got["nc"] == "00000001"
    assert got["opaque"] == RFC7616_OPAQUE and got["algorithm"] == algorithm
    user, realm, password = "Mufasa", "http-auth@example.org", "Circle of Life"
    args = (algorithm, user, realm, password, RFC7616_NONCE, "GET", "/dir/index.html", "auth", "00000001")
    want = reference(*args, RFC7616_CNONCE)
    assert want == response, "the independent formula agrees with the RFC"


def test_qop_less_challenge_gives_rfc2069_answer() -> None:
    challenge = parse_challenge('Digest realm="asterisk",nonce="4d2a6b1c"')
    value = answer(challenge, "REGISTER", "sip:pbx.example.com", "1001", "s3cret", cnonce="ignored")
    assert "qop=" not in value and "nc=" not in value and "cnonce=" not in value and "opaque" not in value
    assert value.endswith("algorithm=MD5")
    want = reference("MD5", "1001", "asterisk", "s3cret", "4d2a6b1c", "REGISTER", "sip:pbx.example.com", None)
    assert params_of(value)["response"] == want


def test_auth_int_only_hashes_the_body() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n"
    challenge = parse_challenge('Digest realm="r", nonce="n1", qop="auth-int", algorithm=SHA-256')
    value = answer(challenge, "INVITE", "sip:bob@example.com", "alice", "pw", body=body, cnonce="c1", nc=3)
    got = params_of(value)
    assert got["qop"] == "auth-int" and got["nc"] == "00000003"
    uri = "sip:bob@example.com"
    args = ("SHA-256", "alice", "r", "pw", "n1", "INVITE", uri, "auth-int", "00000003", "c1", body)
    assert got["response"] == reference(*args)
    other_body = answer(challenge, "INVITE", uri, "alice", "pw", body=b"x", cnonce="c1", nc=3)
    assert params_of(other_body)["response"] != got["response"]


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess"])
@pytest.mark.parametrize("qop", ["auth", None])
def test_sess_variants(algorithm: str, qop: str | None) -> None:
    qop_param = f', qop="{qop}"' if qop else ""
    challenge = parse_challenge(f'Digest realm="r", nonce="abc", algorithm={algorithm.lower()}{qop_param}')
    assert challenge.algorithm == algorithm, "algorithm names are case-insensitive, kept canonical"
    value = answer(challenge, "BYE", "sip:x@y", "u", "p", cnonce="cn")
    got = params_of(value)
    # -sess needs the cnonce in HA1, so it is sent even to a qop-less challenge
    assert got["cnonce"] == "cn" and got["algorithm"] == algorithm
    nc = "00000001" if qop else ""
    assert got["response"] == reference(algorithm, "u", "r", "p", "abc", "BYE", "sip:x@y", qop, nc, "cn")


def test_random_cnonce_differs_per_answer() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop=auth')
    first, second = (params_of(answer(challenge, "OPTIONS", "sip:a@b", "u", "p")) for _ in range(2))
    assert first["cnonce"] and first["cnonce"] != second["cnonce"]


def test_parsing_oddities() -> None:
    c = parse_challenge(
        '  digest   realm = "with, comma \\"and\\" quotes" ,, nonce=YWJj/ZA==,stale=TRUE ,'
        ' domain="sip:a.example sip:b.example", opaque=xyz, unknown-param="kept out", qop=auth-int,'
    )
    assert c.realm == 'with, comma "and" quotes' and c.nonce == "YWJj/ZA==" and c.stale
    assert c.domain == ("sip:a.example", "sip:b.example") and c.opaque == "xyz" and c.qop == ("auth-int",)
    assert c.algorithm == "MD5", "no algorithm means MD5 (RFC 2617 §3.2.1)"
    assert not parse_challenge('Digest realm="r", nonce="n", stale=false').stale
    # quoted-string escaping survives the round trip through answer()
    got = parse_credentials(answer(c, "INVITE", "sip:x", 'we"ird\\user', "p"))
    assert got.username == 'we"ird\\user' and got.realm == c.realm


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "scheme"),
        ('Basic realm="r"', "not Digest"),
        ("Digestrealm=x", "not Digest"),
        ('Digest nonce="n"', "no realm"),
        ('Digest realm="r"', "no nonce"),
        ('Digest realm="r", nonce="n", algorithm=SHA-512-256', "unsupported digest algorithm"),
        ('Digest realm="unterminated, nonce=n', "cannot read"),
        ('Digest realm="r", nonce="n" x', "expected ','"),
        ('Digest realm="r" nonce="n"', "expected ','"),
        ('Digest realm="r", realm="s", nonce="n"', "twice"),
        ("Digest realm", "cannot read"),
        ("Digest =x", "cannot read"),
    ],
)
def test_garbage_is_a_clear_value_error(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_challenge(value)


def test_unanswerable_qop_and_choice_among_challenges() -> None:
    only_conf = parse_challenge('Digest realm="r", nonce="n", qop="auth-conf"')
    with pytest.raises(ValueError, match="unsupported qop"):
        answer(only_conf, "INVITE", "sip:x", "u", "p")
    chosen = pick_challenge(
        [
            'Digest realm="r", nonce="n1", algorithm=SHA-512-256',
            'Digest realm="r", nonce="n2", qop="auth-conf"',
            'Digest realm="r", nonce="n3", algorithm=SHA-256, qop=auth',
            'Digest realm="r", nonce="n4", algorithm=MD5, qop=auth',
        ]
    )
    assert chosen.nonce == "n3", "the first supported challenge wins (RFC 7616 §3.7)"
    with pytest.raises(ValueError, match="SHA-512-256"):
        pick_challenge(['Digest realm="r", nonce="n1", algorithm=SHA-512-256'])


def test_header_names() -> None:
    assert header_names(401) == ("WWW-Authenticate", "Authorization")
    assert header_names(407) == ("Proxy-Authenticate", "Proxy-Authorization")
    with pytest.raises(ValueError, match="403"):
        header_names(403)


@pytest.mark.parametrize("algorithm", ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess"])
@pytest.mark.parametrize("qop", [("auth",), ("auth-int",), ()])
def test_verify_accepts_good_and_rejects_bad(algorithm: str, qop: tuple[str, ...]) -> None:
    passwords = {("alice", "pbx"): "right"}

    def lookup(user: str, realm: str) -> str | None:
        return passwords.get((user, realm))

    challenge = parse_challenge(make_challenge("pbx", "nonce-1", opaque="op", algorithm=algorithm, qop=qop))
    body = b"v=0\r\n"
    good = answer(challenge, "INVITE", "sip:bob@pbx", "alice", "right", body=body)
    assert verify(good, "INVITE", lookup, body)
    assert not verify(good, "BYE", lookup, body), "the method is part of HA2"
    wrong_password = answer(challenge, "INVITE", "sip:bob@pbx", "alice", "wrong", body=body)
    unknown_user = answer(challenge, "INVITE", "sip:bob@pbx", "mallory", "right", body=body)
    assert not verify(wrong_password, "INVITE", lookup, body) and not verify(
        unknown_user, "INVITE", lookup, body
    )
    if qop == ("auth-int",):
        assert not verify(good, "INVITE", lookup, b"tampered")
    tampered = good.replace('uri="sip:bob@pbx"', 'uri="sip:carol@pbx"')
    assert not verify(tampered, "INVITE", lookup, body)


def test_verify_never_raises_on_garbage() -> None:
    def lookup(user: str, realm: str) -> str | None:
        return "p"

    bad_nc = (
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="00", qop=auth, nc=1, cnonce="c"'
    )
    for value in ("", "Basic Zm9vOmJhcg==", 'Digest username="u"', bad_nc):
        assert not verify(value, "INVITE", lookup)


def test_state_counts_nonce_uses_and_resets_on_a_new_nonce() -> None:
    state = DigestState("1001", "pw")
    assert state.authorize("REGISTER", "sip:pbx") == [], "nothing to answer before a challenge"
    assert state.on_challenge(401, [make_challenge("pbx", "n1")])
    [(name, first)] = state.authorize("REGISTER", "sip:pbx")
    assert name == "Authorization" and 'nonce="n1"' in first and "nc=00000001" in first
    # the refresh reuses the nonce with the next count (RFC 2617 §3.2.2)
    assert "nc=00000002" in state.authorize("REGISTER", "sip:pbx")[0][1]
    assert "nc=00000003" in state.authorize("REGISTER", "sip:pbx")[0][1]
    # the server let the nonce expire without saying stale: a fresh nonce after a reused one is retried
    assert state.on_challenge(401, [make_challenge("pbx", "n2")])
    assert "nc=00000001" in state.authorize("REGISTER", "sip:pbx")[0][1]


def test_state_stops_when_the_password_is_rejected_but_retries_stale() -> None:
    state = DigestState("1001", "wrong")
    assert state.on_challenge(407, [make_challenge("proxy", "n1")])
    [(name, _value)] = state.authorize("INVITE", "sip:bob@pbx")
    assert name == "Proxy-Authorization"
    assert state.on_challenge(407, [make_challenge("proxy", "n2", stale=True)]), "stale: retry, same password"
    state.authorize("INVITE", "sip:bob@pbx")
    assert not state.on_challenge(407, [make_challenge("proxy", "n3")]), "a fresh nonce answered and refused"


def test_state_answers_each_realm_and_each_header() -> None:
    state = DigestState("alice", "pw")
    assert state.on_challenge(407, [make_challenge("edge", "e1"), make_challenge("core", "c1")])
    assert state.on_challenge(401, [make_challenge("registrar", "r1")])
    headers = state.authorize("INVITE", "sip:bob@example.com", b"sdp")
    assert [name for name, _ in headers] == ["Proxy-Authorization", "Proxy-Authorization", "Authorization"]
    assert [parse_credentials(v).realm for _, v in headers] == ["edge", "core", "registrar"]
    with pytest.raises(ValueError, match="401 without a usable Digest challenge.*not Digest"):
        state.on_challenge(401, ['Basic realm="x"'])


def test_password_stays_out_of_repr_and_errors() -> None:
    state = DigestState("alice", "hunter2-secret")
    state.on_challenge(401, [make_challenge("r", "n", qop=("auth-conf",)), make_challenge("r", "n2")])
    assert "hunter2" not in repr(state) and "alice" in repr(state)
    headers = state.authorize("INVITE", "sip:x")
    assert all("hunter2" not in value for _, value in headers)
    with pytest.raises(ValueError) as info:
        answer(parse_challenge('Digest realm="r", nonce="n", qop=x'), "INVITE", "sip:x", "a", "hunter2-pw")
    assert "hunter2" not in str(info.value)


# Found by tests/fuzz/test_sip_fuzz.py.
def test_a_challenge_with_octets_that_are_not_utf8_is_answered_over_those_octets() -> None:
    # message.parse keeps undecodable octets as surrogates; hashing used to raise UnicodeEncodeError, out
    # of DigestState.authorize and so out of the leg's response handler (the call never failed or ended).
    realm_octets = b"r\xe9alm"  # Latin-1, as some PBXes send it
    value = 'Digest realm="' + realm_octets.decode("utf-8", "surrogateescape") + '", nonce="n", qop="auth"'
    state = DigestState("alice", "pw")
    assert state.on_challenge(401, [value])
    ((_, credentials),) = state.authorize("REGISTER", "sip:example.com")
    creds = parse_credentials(credentials)
    ha1 = hashlib.md5(b"alice:" + realm_octets + b":pw").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:example.com").hexdigest()
    expected = hashlib.md5(f"{ha1}:n:{creds.nc:08x}:{creds.cnonce}:auth:{ha2}".encode()).hexdigest()
    assert creds.response == expected
    assert verify(credentials, "REGISTER", lambda user, realm: "pw")


def test_verify_is_false_never_an_exception_for_odd_text() -> None:
    # hmac.compare_digest raises TypeError on non-ASCII text; a lone surrogate (not from octets) cannot be
    # hashed at all.
    base = 'Digest username="u", realm="r", nonce="n", uri="sip:x", response='
    assert verify(base + '"\u00e9"', "REGISTER", lambda user, realm: "pw") is False
    assert verify(base + '"abc"', "REGISTER", lambda user, realm: "\ud800") is False
