"""Where a client can make the server send SIP, on a stack set up as for exposure (ALLOW_PRIVATE_URLS=0).

Two SIP "phones" are plain UDP sockets on loopback: one that nothing may reach, and one the operator lists
in ALLOWED_URL_HOSTS (a PBX on the LAN). An `invite` or a bridged `refer` to the first is refused with an
error naming the field, and the socket receives nothing; to the second, the INVITE goes out.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, running_stack
from worker.sip.message import Request, parse

pytestmark = pytest.mark.e2e

HINT = "; set ALLOW_PRIVATE_URLS=1 or list the host in ALLOWED_URL_HOSTS"


class Phone:
    """A UDP socket on 127.0.0.1 that keeps what reaches it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    def uri(self, user: str = "x") -> str:
        return f"sip:{user}@127.0.0.1:{self.port}"

    async def invite(self, headers: dict[str, str] | None = None, timeout: float = 5.0) -> Request:
        """The first INVITE that carries `headers` (an earlier test's INVITE may still be retransmitted)."""

        async def wait() -> Request:
            loop = asyncio.get_running_loop()
            while True:
                message = parse(await loop.sock_recv(self.sock, 65536))
                if (
                    isinstance(message, Request)
                    and message.method == "INVITE"
                    and all(message.headers.get(k) == v for k, v in (headers or {}).items())
                ):
                    return message

        return await asyncio.wait_for(wait(), timeout)

    def received(self) -> bytes | None:
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return None


@dataclass
class Exposed:
    info: StackInfo
    closed: Phone  # nothing may reach it
    listed: Phone  # in ALLOWED_URL_HOSTS


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposed]:
    closed, listed = Phone(), Phone()
    try:
        with running_stack(
            tmp_path_factory.mktemp("sipdest"),
            1,
            1,
            ALLOW_PRIVATE_URLS="0",
            ALLOWED_URL_HOSTS=f"127.0.0.1:{listed.port}",
        ) as info:
            yield Exposed(info, closed, listed)
    finally:
        closed.sock.close()
        listed.sock.close()


async def test_an_invite_to_a_private_address_is_refused_and_sends_nothing(
    exposed: Exposed, call_id: str
) -> None:
    callees = {
        exposed.closed.uri(): "127.0.0.1 is a private address (loopback)",
        "sip:x@169.254.169.254": "169.254.169.254 is a private address (link-local)",
        "<sip:x@10.0.0.5:5060;transport=tcp>": "10.0.0.5 is a private address (private network)",
        f"sip:x@localhost:{exposed.closed.port}": "localhost resolves to a private address (127.0.0.1, loop",
        # maddr overrides the host as the destination (RFC 3261 §19.1.1), so it is what is judged.
        f"<sip:x@example.com:{exposed.closed.port};maddr=127.0.0.1>": "127.0.0.1 is a private address (loop",
        "sip:x@[::1]:5060": "::1 is a private address (loopback)",
        # The listed port only: the same host on another port is not the operator's PBX.
        f"sip:x@127.0.0.1:{exposed.listed.port + 1}": "127.0.0.1 is a private address (loopback)",
    }
    for n, (callee, why) in enumerate(callees.items()):
        c = await CallClient.open(exposed.info.ws, "/call/sip", call_id=f"{call_id}-{n}")
        try:
            await c.send({"command": "invite", "option": {"callee": callee}})
            error = await c.event("error", sender="invite")
            assert error["code"] == 403
            assert error["error"].startswith(f"option.callee: {callee} refused: {why}"), error["error"]
            assert error["error"].endswith(HINT)
            reject = await c.event("reject")
            assert reject["code"] == 403 and reject["reason"] == error["error"]
            hangup = await c.event("hangup")
            assert (hangup["reason"], hangup["initiator"]) == ("failed", "system")
            assert "answer" not in c.names() and "ringing" not in c.names()
        finally:
            await c.close()

    # The listed destination is reached; anything sent to the other phone would have arrived before.
    c = await CallClient.open(exposed.info.ws, "/call/sip", call_id=call_id)
    try:
        await c.send({"command": "invite", "option": {"callee": exposed.listed.uri("pbx")}})
        invite = await exposed.listed.invite()
        assert str(invite.uri) == exposed.listed.uri("pbx")
        assert "error" not in c.names()
        await c.send({"command": "hangup"})
        await c.event("hangup")
    finally:
        await c.close()
    assert exposed.closed.received() is None


async def test_a_bridged_refer_to_a_private_address_is_refused_and_the_call_goes_on(
    exposed: Exposed, call_id: str
) -> None:
    c = await CallClient.open(exposed.info.ws, call_id=call_id)
    try:
        await c.invite()
        target = exposed.closed.uri("agent")
        await c.send({"command": "refer", "target": target, "options": {"timeout": 5}})
        reject = await c.event("reject", refer=True)
        assert reject["code"] == 403
        assert reject["reason"] == (
            f"refer.target: {target} refused: 127.0.0.1 is a private address (loopback){HINT}"
        )
        assert (await c.event("error", sender="refer"))["error"] == reject["reason"]
        # The call goes on: a second refer, to the listed PBX, dials it.
        await c.send({"command": "refer", "target": exposed.listed.uri("agent"), "options": {"timeout": 5}})
        await exposed.listed.invite({"X-Referred-Id": call_id})
        assert "hangup" not in c.names()
        await c.send({"command": "hangup"})
        await c.event("hangup", refer=None)
    finally:
        await c.close()
    assert exposed.closed.received() is None
