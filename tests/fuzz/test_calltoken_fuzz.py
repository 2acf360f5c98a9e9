"""Fuzzing the call token codec (`frontend.calltoken`): whatever a client puts in `?token=`, checking it
either lets the call in because this server signed exactly that token for exactly that call, or refuses it
with `TokenRefused` (a 401 with the JSON error body), nothing else."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from frontend.calltoken import CALL_PATHS, MAX_TTL, CallTokens, TokenRefused
from tests.fuzz.conftest import scale

NOW = 1_800_000_000.0
TOKENS = CallTokens("fuzz-api-token", lambda: NOW)
IDS = st.one_of(st.none(), st.text(min_size=1, max_size=128))
PATHS = st.one_of(st.none(), st.sampled_from(CALL_PATHS))


def _opens(token: str, path: str, call_id: str | None) -> bool:
    try:
        TOKENS.check(token, path, call_id)
    except TokenRefused as exc:
        assert exc.status == 401 and exc.message and exc.details
        return False
    return True


@settings(max_examples=scale(500))
@given(st.text(max_size=700), st.sampled_from(CALL_PATHS), IDS)
def test_any_text(token: str, path: str, call_id: str | None) -> None:
    assert not _opens(token, path, call_id)
    assert not _opens("ct1." + token, path, call_id)


@settings(max_examples=scale(500))
@given(IDS, PATHS, st.integers(1, MAX_TTL), st.sampled_from(CALL_PATHS), IDS, st.data())
def test_a_minted_token_opens_exactly_its_grant_and_no_mutation_of_it_does(
    grant_id: str | None,
    grant_path: str | None,
    ttl: int,
    path: str,
    call_id: str | None,
    data: st.DataObject,
) -> None:
    token = TOKENS.mint(TOKENS.grant(ttl, call_id=grant_id, path=grant_path))
    expected = (grant_path in (None, path)) and (grant_id is None or grant_id == call_id)
    assert _opens(token, path, call_id) is expected
    # One byte of it changed, dropped or added, anywhere: never a token that opens anything.
    at = data.draw(st.integers(0, len(token)))
    kind = data.draw(st.sampled_from(["replace", "drop", "insert"]))
    char = data.draw(st.characters(codec="ascii"))
    if kind == "replace" and at < len(token) and token[at] != char:
        mutated = token[:at] + char + token[at + 1 :]
    elif kind == "drop" and at < len(token):
        mutated = token[:at] + token[at + 1 :]
    elif kind == "insert":
        mutated = token[:at] + char + token[at:]
    else:
        return
    if _same_bytes(token, mutated):
        return  # base64's unused low bits, or padding: the same token, spelled another way
    assert not _opens(mutated, path, grant_id)


def _same_bytes(token: str, other: str) -> bool:
    """Whether `other` decodes to the same payload and signature as `token` (a harmless respelling)."""
    try:
        a, b = token.split("."), other.split(".")
        if len(b) != 3 or a[0] != b[0] or a[1] != b[1]:
            return False
        pad = "=" * (-len(b[2]) % 4)
        return base64.b64decode(b[2] + pad, altchars=b"-_", validate=True) == base64.b64decode(
            a[2] + "=" * (-len(a[2]) % 4), altchars=b"-_"
        )
    except ValueError:
        return False
