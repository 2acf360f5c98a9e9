"""SIP across hosts, with SIPp as the phone (in the root namespace, on the bridge's address): an inbound call
to host B's address picked up by an app on host A's frontend, its in-dialog requests sent to host A's address
(where no process owns the dialog); an outbound call from host A's media process."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from tests.e2e.client import CallClient
from tests.e2e.test_metrics import scrape, until
from tests.hosts.cluster import Cluster
from tests.sip.sipp import Sipp

pytestmark = [pytest.mark.e2e, pytest.mark.alone]


def addresses(text: str) -> set[str]:
    return set(re.findall(r"\b10\.231\.\d+\.\d+\b", text))


async def test_sipp_calls_host_b_and_its_in_dialog_requests_reach_the_owner_through_host_a(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    (a_media,) = cluster.media_of(a)
    before = (await scrape(a.base)).by_proc("pbx_sip_forwarded_total").get(a_media, 0.0)
    variables = {"other_ip": a.address, "other_port": a.sip_port, "hold_ms": 300}
    uac = Sipp(
        "uac_reinvite_elsewhere",
        remote=(b.address, b.sip_port),
        host=cluster.net.gateway,
        variables=variables,
    )
    async with uac:
        hook = await cluster.webhook.next(timeout=10)
        assert hook["event"] == "invite" and hook["callee"] == f"sip:service@{b.address}:{b.sip_port}"
        dialog_id = str(hook["dialogId"])
        assert cluster.owner(dialog_id) in cluster.media_of(b), "the process that got the INVITE owns it"
        c = await CallClient.open(a.ws, "/call/sip", call_id=dialog_id)
        try:
            incoming = await c.event("incoming")
            assert cluster.net.gateway in str(incoming["caller"])
            await c.send({"command": "accept", "option": {}})
            await c.event("answer")
            await c.event("mediaReady", timeout=5)  # SIPp's RTP reached host B
            on = await c.event("hold", timeout=10, onHold=True)
            off = await c.event("hold", timeout=10, onHold=False)
            hangup = await c.event("hangup", timeout=10)
            assert hangup["reason"] == "bye" and hangup["initiator"] == "caller"
            assert on["timestamp"] <= off["timestamp"] <= hangup["timestamp"]
        finally:
            await c.close()
        result = await uac.wait(timeout=10)
    result.assert_ok()
    oks = [m for m in result.received(200) if m.cseq_method == "INVITE"]
    assert len(oks) == 3, [m.start_line for m in result.received()]
    first = oks[0]
    assert addresses(first.header("Contact") or "") == {b.address}
    assert addresses(first.body) == {b.address}, "the answer's SDP: host B's address"
    # The re-INVITEs went to host A's address and were answered by host B's process, from host B.
    sent = [m for m in result.sent("INVITE")]
    assert len(sent) == 3
    directions = [m.body.split("a=")[-1].split()[0] for m in oks[1:]]
    assert directions == ["recvonly", "sendrecv"], directions
    for ok in oks[1:]:
        assert addresses(ok.header("Contact") or "") == {b.address} and addresses(ok.body) == {b.address}
    assert result.received(200)[-1].cseq_method == "BYE"
    assert not cluster.redis.exists(f"pbx:call:{dialog_id}")
    # Host A's media process got them (2 re-INVITEs, their ACKs, the BYE) and forwarded them to B's owner.
    figures = await until(
        a.base, lambda f: f.by_proc("pbx_sip_forwarded_total").get(a_media, 0) - before >= 5
    )
    assert figures.by_proc("pbx_sip_forwarded_total").get(a_media, 0) - before >= 5


async def test_an_outbound_call_from_host_a_carries_host_as_address(cluster: Cluster) -> None:
    a = cluster.a
    call_id = f"h.{uuid.uuid4()}"
    async with Sipp("uas_answer", host=cluster.net.gateway) as uas:
        c = await CallClient.open(a.ws, "/call/sip", call_id=call_id)
        try:
            option = {"callee": uas.uri, "caller": "sip:bot@example.com"}
            await c.send({"command": "invite", "option": option})
            answer = await c.event("answer", timeout=10)
            assert cluster.owner(call_id) in cluster.media_of(a), "placed on host A: a media process of A"
            assert f"m=audio {uas.media_port}" in answer["sdp"]
            await asyncio.sleep(0.5)
            await c.send({"command": "hangup"})
            await c.event("hangup")
            await c.wait_closed()
        finally:
            await c.close()
        result = await uas.wait(timeout=10)
    result.assert_ok()
    invite = result.received("INVITE")[0]
    for name in ("Via", "Contact"):
        assert addresses(invite.header(name) or "") == {a.address}, f"{name}: {invite.header(name)}"
    sdp = invite.body
    assert addresses(sdp) == {a.address}, sdp
    assert f"c=IN IP4 {a.address}" in sdp and re.search(rf"^o=.* IN IP4 {re.escape(a.address)}", sdp, re.M)
    assert result.received("BYE")
