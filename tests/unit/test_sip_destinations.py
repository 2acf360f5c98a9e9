"""Where a client may send SIP: the URL rule (worker/urlguard.py) applied to the addresses a callee resolves
to, before the SIP stack sends anything (worker/sip/agent.py `resolve`, `SipLeg.dial`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from common.embedded import free_port
from worker.sip.agent import SipAgent
from worker.sip.leg import LegError, SipLeg
from worker.sip.register import Registrations
from worker.sip.rtp import PortPool
from worker.sip.transaction import Target
from worker.urlguard import SIP_HINT, UrlGuard, UrlRefused


def test_the_first_allowed_address_is_picked() -> None:
    guard = UrlGuard()
    assert guard.pick_address("pbx.example", 5060, ["93.184.215.14", "8.8.8.8"]) == "93.184.215.14"
    # Mixed answers: the public one, whatever the order.
    assert guard.pick_address("pbx.example", 5060, ["10.0.0.5", "8.8.8.8"]) == "8.8.8.8"


@pytest.mark.parametrize(
    ("host", "addresses", "text"),
    [
        ("10.0.0.5", ["10.0.0.5"], "10.0.0.5 is a private address (private network); "),
        ("169.254.169.254", ["169.254.169.254"], "169.254.169.254 is a private address (link-local); "),
        ("pbx.lan", ["192.168.1.9"], "pbx.lan resolves to a private address (192.168.1.9, private network)"),
        ("2130706433", ["127.0.0.1"], "2130706433 resolves to a private address (127.0.0.1, loopback); "),
        ("two.lan", ["10.0.0.1", "127.0.0.1"], "two.lan resolves to private addresses only ("),
    ],
)
def test_private_addresses_are_refused(host: str, addresses: list[str], text: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        UrlGuard().pick_address(host, 5060, addresses, SIP_HINT)
    assert str(refused.value).startswith(text)
    assert str(refused.value).endswith("; set ALLOW_PRIVATE_URLS=1 or list the host in ALLOWED_URL_HOSTS")


def test_allowed_and_trusted_destinations() -> None:
    assert UrlGuard(allow_private=True).pick_address("10.0.0.5", 5060, ["10.0.0.5"]) == "10.0.0.5"
    guard = UrlGuard().with_trusted([("PBX.lan.", 5060), ("10.0.0.7", None)])
    assert guard.pick_address("pbx.lan", 5060, ["10.0.0.5"]) == "10.0.0.5"
    assert guard.pick_address("10.0.0.7", 5080, ["10.0.0.7"]) == "10.0.0.7"
    with pytest.raises(UrlRefused):
        guard.pick_address("pbx.lan", 5070, ["10.0.0.5"])  # trusted on its own port only


def test_registration_servers_are_the_operators_destinations() -> None:
    spec = '[{"server":"sip:pbx.lan","username":"a"},{"server":"10.0.0.9:5080;transport=tcp","username":"b"}]'
    agent = SipAgent("127.0.0.1", 0)
    assert Registrations(agent, spec).destinations() == [("pbx.lan", 5060), ("10.0.0.9", 5080)]


async def test_resolve_hands_the_admitted_address_on() -> None:
    agent = SipAgent("127.0.0.1", 0)
    seen: list[tuple[str, int, list[str]]] = []

    def admit(host: str, port: int, addresses: list[str]) -> str:
        seen.append((host, port, addresses))
        return addresses[-1]

    target = await agent.resolve(Target("localhost", 5070, "udp"), admit)
    assert seen and seen[0][:2] == ("localhost", 5070) and "127.0.0.1" in seen[0][2]
    assert (target.host, target.port) == (seen[0][2][-1], 5070)


@pytest.fixture
def phone() -> Iterator[socket.socket]:
    """A SIP "phone" on loopback that must receive nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def test_a_refused_callee_gets_no_packet(phone: socket.socket) -> None:
    agent = SipAgent("127.0.0.1", free_port())
    await agent.start()
    try:
        guard = UrlGuard()
        callee = f"sip:x@127.0.0.1:{phone.getsockname()[1]}"

        def admit(host: str, port: int, addresses: list[str]) -> str:
            try:
                return guard.pick_address(host, port, addresses, SIP_HINT)
            except UrlRefused as exc:
                raise LegError(exc.for_field("option.callee", callee), 403) from None

        leg = SipLeg(agent, PortPool(40000, 40010), events=None, role="uac")  # type: ignore[arg-type]
        with pytest.raises(LegError) as refused:
            await leg.dial("", callee, timeout=1, admit=admit)
        assert refused.value.code == 403
        assert str(refused.value) == (
            f"option.callee: {callee} refused: 127.0.0.1 is a private address (loopback); {SIP_HINT}"
        )
        assert leg.rtp is None and leg.state == "idle"
        with pytest.raises(BlockingIOError):
            phone.recv(4096)
    finally:
        await agent.close()
