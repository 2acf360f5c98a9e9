"""SIP_REGISTER through the real stack: every media process keeps the account registered with the shared
SIP port as its Contact, answers the registrar's challenge, refreshes before expiry and unregisters on
shutdown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from common.embedded import free_port
from tests.e2e.conftest import running_stack
from tests.sip.test_register import PASSWORD, REALM, Registrar

pytestmark = pytest.mark.e2e


async def test_accounts_stay_registered_and_unregister_on_shutdown(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    transport, registrar = await loop.create_datagram_endpoint(
        lambda: Registrar(granted=10), local_addr=("127.0.0.1", 0)
    )
    sip_port = free_port()
    accounts = [{"server": f"sip:127.0.0.1:{registrar.port}", "username": "bot", "password": PASSWORD,
                 "realm": REALM, "expires": 10}]  # fmt: skip
    stack = running_stack(tmp_path, 2, 1, SIP_PORT=str(sip_port), SIP_REGISTER=json.dumps(accounts))
    info = await asyncio.to_thread(stack.__enter__)
    try:
        await registrar.until(2, timeout=10)  # one registration per media process
        first = registrar.ok()[:2]
        for _, request in first:
            assert request.headers.get("Contact") == f"<sip:bot@127.0.0.1:{sip_port}>"
            assert request.headers.get("To") == "<sip:bot@127.0.0.1>"
        assert len({r.call_id for _, r in first}) == 2
        await registrar.until(4, timeout=10)  # refreshed at half the 10 s granted
        refreshed = {r.call_id for _, r in registrar.ok()[2:]}
        assert refreshed == {r.call_id for _, r in first}
        assert PASSWORD not in info.health().__repr__()
    finally:
        await asyncio.to_thread(stack.__exit__, None, None, None)
        transport.close()
    removals = [r for _, r, _ in registrar.requests if r.headers.get("Expires") == "0"]
    assert len({r.call_id for r in removals}) == 2
