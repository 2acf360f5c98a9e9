"""REGISTER client (worker/sip/register.py) against a registrar on loopback, and the SIP_REGISTER parsing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from worker.sip import register
from worker.sip.agent import SipAgent
from worker.sip.digest import make_challenge, parse_credentials, verify
from worker.sip.message import Request, parse, response_to
from worker.sip.register import Account, Registration, Registrations, load_accounts
from worker.sip.transaction import Timers

TIMERS = Timers(t1=0.02, t2=0.16, t4=0.1)
WAIT = 3.0
REALM = "registrar.test"
PASSWORD = "s3cret-pw"


class Registrar(asyncio.DatagramProtocol):
    """A registrar: 401 with a fresh challenge unless the Authorization verifies, then 200 with
    `Contact: ...;expires=<granted>`. Every REGISTER is kept, with when it came."""

    def __init__(self, granted: int = 2) -> None:
        self.granted = granted
        self.min_expires = 0
        self.other_bindings: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.requests: list[tuple[float, Request, int]] = []  # (time, request, status answered)
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = parse(data)
        assert isinstance(request, Request) and request.method == "REGISTER"
        creds = request.headers.get("Authorization")
        expires = int(request.headers.get("Expires") or "3600")
        if creds and 0 < expires < self.min_expires:
            response = response_to(request, 423, to_tag="regtag")
            response.headers.add("Min-Expires", str(self.min_expires))
        elif creds and verify(creds, "REGISTER", self._password):
            response = response_to(request, 200, to_tag="regtag")
            for binding in self.other_bindings:  # the address-of-record's other devices (§10.3 step 8)
                response.headers.add("Contact", binding)
            if expires:
                response.headers.add("Contact", f"{request.headers.get('Contact')};expires={self.granted}")
        else:
            response = response_to(request, 401, to_tag="regtag")
            response.headers.add("WWW-Authenticate", make_challenge(REALM))
        assert self.transport is not None
        self.transport.sendto(response.serialize(), addr)
        self.requests.append((asyncio.get_running_loop().time(), request, response.status))
        self.changed.set()

    @staticmethod
    def _password(user: str, realm: str) -> str | None:
        return PASSWORD if (user, realm) == ("bot", REALM) else None

    def ok(self) -> list[tuple[float, Request]]:
        return [(t, r) for t, r, status in self.requests if status == 200]

    async def until(self, count_ok: int, timeout: float = WAIT) -> None:
        async def wait() -> None:
            while len(self.ok()) < count_ok:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def registrar() -> AsyncIterator[Registrar]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Registrar, local_addr=("127.0.0.1", 0))
    try:
        yield proto
    finally:
        transport.close()


@pytest.fixture
async def agent() -> AsyncIterator[SipAgent]:
    for _ in range(10):
        ua = SipAgent("127.0.0.1", 0, timers=TIMERS)
        try:
            await ua.start()
            break
        except OSError:  # the TCP port of the UDP port's number was taken (see test_agent.py)
            await ua.close()
    else:
        raise OSError("cannot start a SIP agent")
    try:
        yield ua
    finally:
        await ua.close()


def account(registrar: Registrar, password: str = PASSWORD, expires: int = 2) -> Account:
    return Account(
        server=f"sip:127.0.0.1:{registrar.port}", username="bot", password=password, expires=expires
    )


@contextlib.asynccontextmanager
async def running(reg: Registration) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(reg.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_register_answers_the_challenge_and_refreshes_before_expiry(
    registrar: Registrar, agent: SipAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(register, "MIN_REFRESH", 0.2)
    reg = Registration(agent, account(registrar))
    async with running(reg):
        await asyncio.wait_for(reg.registered.wait(), WAIT)
        assert reg.granted == 2 and reg.last_status == 200
        first, second = registrar.requests[0][1], registrar.requests[1][1]
        assert [s for _, _, s in registrar.requests[:2]] == [401, 200]
        assert first.headers.get("Authorization") is None
        creds = parse_credentials(second.headers.get("Authorization") or "")
        assert creds.username == "bot" and creds.realm == REALM and creds.uri == str(second.uri)
        assert str(second.uri) == f"sip:127.0.0.1:{registrar.port}"
        assert second.to.uri == second.from_.uri and str(second.to.uri) == "sip:bot@127.0.0.1"
        assert second.from_.tag and second.to.tag is None
        assert second.call_id == first.call_id and second.cseq.number == first.cseq.number + 1
        assert second.headers.get("Contact") == f"<sip:bot@127.0.0.1:{agent.port}>"
        assert second.headers.get("Expires") == "2"

        await registrar.until(2, timeout=2 * WAIT)  # the refresh
    granted_at = registrar.ok()[0][0]
    refreshed_at, refresh = registrar.ok()[1]
    assert 0.5 <= refreshed_at - granted_at < 2.0, "refreshed at half the granted expiry, before it runs out"
    assert refresh.call_id == first.call_id and refresh.from_.tag == first.from_.tag
    assert refresh.cseq.number > second.cseq.number
    assert refresh.headers.get("Authorization"), "the remembered challenge is answered up front"
    assert [s for _, _, s in registrar.requests] == [401, 200, 200], "no new challenge on the refresh"


async def test_the_display_name_heads_from_and_to(registrar: Registrar, agent: SipAgent) -> None:
    named = account(registrar)
    named.display_name = 'Bot "Two" \\ Sales'
    reg = Registration(agent, named)
    response = await asyncio.wait_for(reg.register_once(), WAIT)
    assert response.status == 200
    sent = registrar.requests[-1][1]
    assert sent.from_.display == sent.to.display == 'Bot "Two" \\ Sales'
    assert str(sent.from_.uri) == str(sent.to.uri) == "sip:bot@127.0.0.1"
    assert sent.headers.get("To") == '"Bot \\"Two\\" \\\\ Sales" <sip:bot@127.0.0.1>'


def test_a_display_name_with_a_line_break_is_refused() -> None:
    spec = json.dumps({"server": "pbx.example.com", "username": "bot", "display_name": "Bot\r\nX-Evil: 1"})
    with pytest.raises(ValueError, match="display_name"):
        load_accounts(spec)


async def test_register_with_the_wrong_password_is_refused(
    registrar: Registrar, agent: SipAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registration(agent, account(registrar, password="nope"))
    response = await asyncio.wait_for(reg.register_once(), WAIT)
    assert response.status == 401
    assert [s for _, _, s in registrar.requests] == [401, 401], "one retry, not a loop (RFC 3261 §22.2)"
    assert not reg.registered.is_set()


async def test_registrations_close_unregisters_with_expires_0(
    registrar: Registrar, agent: SipAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = json.dumps([{"server": f"127.0.0.1:{registrar.port}", "username": "bot", "password": PASSWORD}])
    regs = Registrations(agent, spec)
    assert [a.server for a in regs.accounts] == [f"sip:127.0.0.1:{registrar.port}"]
    regs.start()
    await asyncio.wait_for(regs.items[0].registered.wait(), WAIT)
    assert registrar.ok()[0][1].headers.get("Expires") == "300"
    await asyncio.wait_for(regs.close(), WAIT)
    last = registrar.requests[-1][1]
    assert last.headers.get("Expires") == "0" and registrar.requests[-1][2] == 200
    assert last.headers.get("Contact") == f"<sip:bot@127.0.0.1:{agent.port}>"
    assert last.call_id == registrar.ok()[0][1].call_id
    await asyncio.sleep(0)
    assert len(regs._tasks) == 0, "the refresh loops are stopped"


async def test_registrations_close_without_a_registration_sends_nothing(
    registrar: Registrar, agent: SipAgent
) -> None:
    regs = Registrations(agent, "")
    assert regs.accounts == [] and regs.items == []
    regs.start()
    await regs.close()
    assert registrar.requests == []


async def test_a_refused_registration_is_retried_later(
    registrar: Registrar, agent: SipAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(register, "RETRY_AFTER", 0.05)
    reg = Registration(agent, account(registrar, password="nope"))
    async with running(reg):

        async def four() -> None:
            while len(registrar.requests) < 4:
                registrar.changed.clear()
                await registrar.changed.wait()

        await asyncio.wait_for(four(), WAIT)
    assert reg.last_status == 401 and not reg.registered.is_set()


async def test_the_granted_expiry_is_read_from_our_own_contact(registrar: Registrar, agent: SipAgent) -> None:
    registrar.other_bindings = ["<sip:bot@192.0.2.99:5060>;expires=3600"]
    reg = Registration(agent, account(registrar))
    async with running(reg):
        await asyncio.wait_for(reg.registered.wait(), WAIT)
    assert reg.granted == 2


async def test_423_interval_too_brief_is_retried_with_min_expires(
    registrar: Registrar, agent: SipAgent
) -> None:
    registrar.min_expires = 60
    reg = Registration(agent, account(registrar, expires=30))
    response = await asyncio.wait_for(reg.register_once(), WAIT)
    assert [s for _, _, s in registrar.requests] == [401, 423, 200]
    assert response.status == 200 and registrar.requests[-1][1].headers.get("Expires") == "60"


# --- SIP_REGISTER -----------------------------------------------------------------------------------------


def test_load_accounts_json_list_defaults_and_disabled() -> None:
    spec = json.dumps(
        [
            {"server": "pbx.example.com", "username": "bot", "password": "pw1"},
            {"server": "sip:pbx.example.com:5070", "username": "b2", "password": "pw2", "realm": "r",
             "expires": 60, "display_name": "Bot Two"},
            {"server": "sips:x.example.com", "username": "off", "disabled": True},
        ]
    )  # fmt: skip
    accounts = load_accounts(spec)
    assert accounts == [
        Account("sip:pbx.example.com", "bot", "pw1", None, 300, None),
        Account("sip:pbx.example.com:5070", "b2", "pw2", "r", 60, "Bot Two"),
    ]
    assert load_accounts("") == [] and load_accounts("   ") == []
    assert load_accounts('{"server": "sips:a.example.com", "username": "u"}') == [
        Account("sips:a.example.com", "u")
    ]


def test_load_accounts_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "register.json"
    path.write_text(json.dumps([{"server": "pbx.example.com", "username": "bot", "password": "pw"}]))
    assert load_accounts(f"@{path}") == [Account("sip:pbx.example.com", "bot", "pw")]
    with pytest.raises(OSError):
        load_accounts(f"@{tmp_path / 'missing.json'}")


def test_load_accounts_nested_credential_form() -> None:
    spec = json.dumps(
        {"server": "pbx.example.com", "username": "bot", "credential": {"password": "nested", "realm": "pbx"}}
    )
    (acct,) = load_accounts(spec)
    assert acct.password == "nested" and acct.realm == "pbx"
    # the flat fields win over the nested ones
    spec = json.dumps(
        {"server": "p", "username": "bot", "password": "flat", "realm": "f", "credential": {"password": "n"}}
    )
    (acct,) = load_accounts(spec)
    assert acct.password == "flat" and acct.realm == "f"


@pytest.mark.parametrize(
    "entry",
    [{"username": "bot", "password": "pw"}, {"server": "pbx.example.com", "password": "pw"}, {"server": ""}],
)
def test_load_accounts_needs_server_and_username(entry: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="server and username"):
        load_accounts(json.dumps([entry]))


def test_load_accounts_bad_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        load_accounts("[{not json")


def test_the_password_is_never_in_a_repr() -> None:
    acct = Account("sip:pbx.example.com", "bot", "hunter2-very-secret")
    assert "hunter2" not in repr(acct) and "bot" in repr(acct)
    (nested,) = load_accounts(
        json.dumps({"server": "p", "username": "u", "credential": {"password": "zz-top"}})
    )
    assert "zz-top" not in repr(nested)


async def test_an_unusable_spec_logs_without_the_password(
    agent: SipAgent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pbx.worker.sip.register")
    regs = Registrations(agent, '[{"server": "", "username": "u", "password": "leaky-pass"}, {')
    assert regs.accounts == [] and regs.items == []
    regs = Registrations(agent, json.dumps([{"username": "u", "password": "leaky-pass"}]))
    assert regs.accounts == []
    assert caplog.records and all("leaky-pass" not in r.getMessage() for r in caplog.records)
    reg = Registration(agent, Account("sip:p", "u", "leaky-pass"))
    assert "leaky-pass" not in repr(reg.auth) and "leaky-pass" not in repr(reg.account)
