"""The server against SIPp: sipp as the callee of outbound calls and as the caller of inbound ones."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.audio_util import rms
from tests.e2e.client import CallClient
from tests.e2e.conftest import StackInfo, Webhook
from tests.sip.sipp import Sipp, digest_ok

pytestmark = pytest.mark.e2e


async def dial(stack: StackInfo, uas: Sipp, call_id: str, **option: object) -> CallClient:
    c = await CallClient.open(stack.ws, "/call/sip", call_id=call_id)
    await c.send(
        {"command": "invite", "option": {"callee": uas.uri, "caller": "sip:bot@127.0.0.1", **option}}
    )
    return c


def caller_rms(path: Path) -> float:
    with wave.open(str(path)) as w:
        left = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)[0::2]
    return rms(left)


# --- sipp as the callee ----------------------------------------------------------------------------------


async def test_answered_call_records_the_callee_audio(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_answer") as uas:
        c = await dial(stack, uas, call_id, recorder={})
        try:
            answer = await c.event("answer", timeout=10)
            assert f"m=audio {uas.media_port}" in answer["sdp"]
            await c.event("ringing")
            await asyncio.sleep(2.0)  # the pcap plays
            await c.send({"command": "hangup"})
            await c.event("hangup")
            await c.wait_closed()
        finally:
            await c.close()
        result = await uas.wait(timeout=10)
    result.assert_ok()
    invite = result.received("INVITE")[0]
    assert "telephone-event/8000" in invite.body and invite.header("Content-Type") == "application/sdp"
    assert result.received("BYE")
    assert caller_rms(stack.recorder_path / f"{call_id}.wav") > 300  # sipp's A-law speech was recorded


async def test_early_media(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_early_media") as uas:
        c = await dial(stack, uas, call_id)
        try:
            ringing = await c.event("ringing", timeout=10)
            assert ringing["earlyMedia"] is True
            await c.event("answer", timeout=5)
            await c.send({"command": "hangup"})
            await c.event("hangup")
        finally:
            await c.close()
        (await uas.wait(timeout=10)).assert_ok()


@pytest.mark.parametrize(("code", "reason"), [(486, "Busy Here"), (603, "Decline")])
async def test_rejected(stack: StackInfo, call_id: str, code: int, reason: str) -> None:
    async with Sipp("uas_reject", variables={"code": code}) as uas:
        c = await dial(stack, uas, call_id)
        try:
            reject = await c.event("reject", timeout=10)
            assert (reject["code"], reject["reason"]) == (code, reason)
            await c.event("hangup")
        finally:
            await c.close()
        (await uas.wait(timeout=10)).assert_ok()  # our transaction ACKed the final


async def test_proxy_challenge_is_answered(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_challenge", variables={"challenge": 407}) as uas:
        sip = {"username": "alice", "password": "secret", "realm": "sipp"}
        c = await dial(stack, uas, call_id, sip=sip)
        try:
            await c.event("answer", timeout=10)
            await c.send({"command": "hangup"})
            await c.event("hangup")
        finally:
            await c.close()
        result = await uas.wait(timeout=10)
    result.assert_ok()
    first, second = result.received("INVITE")[:2]
    assert first.header("Proxy-Authorization") is None
    assert digest_ok(second, "alice", "secret")
    assert second.header("Call-ID") == first.header("Call-ID")


async def test_unanswered_call_is_cancelled_at_the_ring_timeout(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_no_answer") as uas:
        # ringTimeout bounds the ringing; handshakeTimeout (its old stand-in here) gives way to it.
        c = await dial(stack, uas, call_id, ringTimeout="1500ms", handshakeTimeout=30)
        try:
            await c.event("ringing", timeout=10)
            rang = time.monotonic()
            reject = await c.event("reject", timeout=8)
            waited = time.monotonic() - rang
            assert reject["code"] == 408
            hangup = await c.event("hangup")
            assert (hangup["reason"], hangup["initiator"]) == ("no_answer", "callee")
        finally:
            await c.close()
        result = await uas.wait(timeout=10)
    result.assert_ok()
    invite, cancel = result.received("INVITE")[0], result.received("CANCEL")[0]
    assert cancel.header("Via") == invite.header("Via")
    assert 1.0 <= waited <= 3.0, f"rang {waited:.2f} s for a 1.5 s ring timeout"


async def test_commands_go_on_while_the_callee_rings_and_hangup_cancels(
    stack: StackInfo, call_id: str
) -> None:
    async with Sipp("uas_no_answer") as uas:
        c = await dial(stack, uas, call_id, ringTimeout=30)
        try:
            await c.event("ringing", timeout=10)
            await c.send({"command": "history", "speaker": "user", "text": "still ringing"})
            await c.event("addHistory", timeout=1.0)  # answered while it rings, not after the answer
            sent_at, sent = time.time(), time.monotonic()
            await c.send({"command": "hangup"})
            hangup = await c.event("hangup", timeout=5)
            took = time.monotonic() - sent
            assert (hangup["reason"], hangup["initiator"]) == ("normal_clearing", "caller")
            assert "answerTime" not in hangup and "answer" not in c.names() and "reject" not in c.names()
            await c.wait_closed()
        finally:
            await c.close()
        result = await uas.wait(timeout=10)  # it ends once our CANCEL came and its 487 was ACKed
    result.assert_ok()
    invite, cancel = result.received("INVITE")[0], result.received("CANCEL")[0]
    assert cancel.header("Via") == invite.header("Via")
    assert took <= 1.0, f"hangup event {took:.2f} s after the command"
    assert cancel.at is not None and cancel.at - sent_at <= 1.0, "the CANCEL left at once"


async def test_message_command_and_hangup_headers_reach_sipp(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_answer") as uas:
        c = await dial(stack, uas, call_id)
        try:
            await c.event("answer", timeout=10)
            await c.send({"command": "message", "body": "héllo", "headers": {"X-Order": "42"}})
            await asyncio.sleep(
                0.3
            )  # a SIPp scenario takes one request at a time: the next one after the 200
            await c.send({"command": "message", "body": '{"a": 1}', "contentType": "application/json"})
            # Refused at the edge, naming the header: nothing goes out.
            await c.send({"command": "message", "body": "x", "headers": {"Call-ID": "mine"}})
            err = await c.event("error", timeout=5)
            assert (err["sender"], err["code"]) == ("command", 400)
            assert (
                err["error"] == "headers.Call-ID: the SIP dialog sets this header itself; it cannot be given"
            )
            # SIPp again: the BYE only once the second MESSAGE has had its 200 (the client hears of a 2xx
            # nothing; on two busy cores the answer took longer than the 0.3 s above, once).
            await asyncio.sleep(0.7)
            await c.send({"command": "hangup", "headers": {"X-Hangup-Reason": "done", "Subject": "bye now"}})
            await c.event("hangup", timeout=5)
            await c.wait_closed()
        finally:
            await c.close()
        result = await uas.wait(timeout=10)
    result.assert_ok()
    first, second = result.received("MESSAGE")
    assert first.header("Content-Type") == "text/plain;charset=utf-8" and first.body == "héllo"
    assert first.header("X-Order") == "42" and first.header("Call-ID") == result.received("INVITE")[0].header(
        "Call-ID"
    )
    assert second.header("Content-Type") == "application/json" and second.body == '{"a": 1}'
    assert len(result.sent(200)) >= 3, "both MESSAGEs answered 200"
    bye = result.received("BYE")[0]
    assert bye.header("X-Hangup-Reason") == "done" and bye.header("Subject") == "bye now"
    assert [e for e in c.events if e["event"] == "error"] == [err], "the 200s raise nothing"


async def test_the_invites_hangup_headers_go_on_the_bye(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_answer") as uas:
        c = await dial(stack, uas, call_id, sip={"hangup_headers": {"X-Call-Outcome": "sold"}})
        try:
            await c.event("answer", timeout=10)
            await c.send({"command": "hangup"})
            await c.event("hangup", timeout=5)
            await c.wait_closed()
        finally:
            await c.close()
        result = await uas.wait(timeout=10)
    result.assert_ok()
    assert result.received("BYE")[0].header("X-Call-Outcome") == "sold"


async def test_a_refused_message_is_an_error_and_the_call_goes_on(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_answer", variables={"refuse_message": 1}) as uas:
        c = await dial(stack, uas, call_id)
        try:
            await c.event("answer", timeout=10)
            await c.send({"command": "message", "body": "anyone?"})
            err = await c.event("error", timeout=5)
            assert (err["sender"], err["code"]) == ("command", 488)
            assert err["error"] == "message: the peer refused it (488 Not Acceptable Here)"
            await c.send({"command": "history", "speaker": "user", "text": "still here"})
            await c.event("addHistory", timeout=5)
            await c.send({"command": "hangup"})
            await c.event("hangup", timeout=5)
        finally:
            await c.close()
        (await uas.wait(timeout=10)).assert_ok()


async def test_callee_hangs_up(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_bye", variables={"hold_ms": 1000}) as uas:
        c = await dial(stack, uas, call_id)
        try:
            await c.event("answer", timeout=10)
            hangup = await c.event("hangup", timeout=10)
            assert hangup["initiator"] == "callee"
            names = c.names()
            assert names.index("trackEnd") < names.index("hangup")
        finally:
            await c.close()
        (await uas.wait(timeout=10)).assert_ok()


async def test_rfc4733_digits_from_sipp_pcaps(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_dtmf") as uas:
        c = await dial(stack, uas, call_id)
        try:
            await c.event("answer", timeout=10)
            await c.event("hangup", timeout=15)
            digits = [e["digit"] for e in c.events if e.get("event") == "dtmf"]
            assert digits == ["1", "2", "3"]  # one per press, none from the end-packet repeats
        finally:
            await c.close()
        (await uas.wait(timeout=10)).assert_ok()


async def test_transfer_between_two_sipp_callees(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_answer") as first, Sipp("uas_answer") as second:
        c = await dial(stack, first, call_id)
        try:
            await c.event("answer", timeout=10)
            await c.send({"command": "refer", "target": second.uri, "options": {"timeout": 5}})
            answer = await c.event("answer", refer=True, timeout=10)
            assert (
                answer["trackId"] == "server-side-track" and f"m=audio {second.media_port}" in answer["sdp"]
            )
            await asyncio.sleep(1.0)
            await c.send({"command": "hangup"})
            await c.event("hangup", trackId=call_id)
        finally:
            await c.close()
        (await first.wait(timeout=10)).assert_ok()
        result = await second.wait(timeout=10)
    result.assert_ok()
    assert result.received("INVITE")[0].header("X-Referred-Id") == call_id
    assert result.received("BYE")  # the transfer leg ended with the call


async def test_hangup_while_a_bridged_refer_dials_cancels_the_new_leg(stack: StackInfo, call_id: str) -> None:
    async with Sipp("uas_answer") as first, Sipp("uas_no_answer") as second:
        c = await dial(stack, first, call_id)
        try:
            await c.event("answer", timeout=10)
            await c.send({"command": "refer", "target": second.uri, "options": {"timeout": 30}})
            await c.event("ringing", refer=True, timeout=10)
            await c.send({"command": "history", "speaker": "user", "text": "on hold"})
            await c.event("addHistory", timeout=1.0)  # the dialing does not hold the commands up
            sent_at, sent = time.time(), time.monotonic()
            await c.send({"command": "hangup"})
            await c.event("hangup", trackId=call_id, timeout=5)
            took = time.monotonic() - sent
            assert "answer" not in [e["event"] for e in c.events if e.get("refer")]
        finally:
            await c.close()
        (await first.wait(timeout=10)).assert_ok()  # our BYE
        result = await second.wait(timeout=10)  # our CANCEL, its 487 ACKed
    result.assert_ok()
    cancel = result.received("CANCEL")[0]
    assert took <= 1.0, f"hangup event {took:.2f} s after the command"
    assert cancel.at is not None and cancel.at - sent_at <= 1.0, "the dialed leg was cancelled at once"


# --- sipp as the caller ----------------------------------------------------------------------------------


async def answer_next(inbound: StackInfo, webhook: Webhook) -> tuple[CallClient, dict[str, object]]:
    hook = await webhook.next(timeout=10)
    c = await CallClient.open(inbound.ws, "/call/sip", call_id=str(hook["dialogId"]))
    await c.event("incoming")
    return c, hook


async def test_sipp_calls_in_and_is_accepted(inbound: StackInfo, webhook: Webhook) -> None:
    uac = Sipp("uac_call", remote=("127.0.0.1", inbound.sip_port), variables={"xtest": "inbound-42"})
    async with uac:
        c, hook = await answer_next(inbound, webhook)
        try:
            assert "X-Test: inbound-42" in hook["headers"]  # type: ignore[operator]
            await c.send({"command": "accept", "option": {}})
            await c.event("answer")
            hangup = await c.event("hangup", timeout=10)
            assert hangup["initiator"] == "caller"
        finally:
            await c.close()
        result = await uac.wait(timeout=10)
    result.assert_ok()
    assert "m=audio" in result.received(200)[0].body


async def test_sipp_rejected(inbound: StackInfo, webhook: Webhook) -> None:
    async with Sipp("uac_rejected", remote=("127.0.0.1", inbound.sip_port), variables={"code": 486}) as uac:
        c, _ = await answer_next(inbound, webhook)
        try:
            await c.send({"command": "reject", "reason": "Busy Here", "code": 486})
            await c.event("hangup")
        finally:
            await c.close()
        (await uac.wait(timeout=10)).assert_ok()


async def test_sipp_cancels_before_answer(inbound: StackInfo, webhook: Webhook) -> None:
    async with Sipp("uac_cancel", remote=("127.0.0.1", inbound.sip_port), variables={"hold_ms": 1500}) as uac:
        c, _ = await answer_next(inbound, webhook)
        try:
            await c.send({"command": "ringing"})
            hangup = await c.event("hangup", timeout=10)
            assert hangup["reason"] == "canceled"
        finally:
            await c.close()
        (await uac.wait(timeout=10)).assert_ok()


async def test_sipp_info_dtmf(inbound: StackInfo, webhook: Webhook) -> None:
    async with Sipp("uac_info_dtmf", remote=("127.0.0.1", inbound.sip_port), variables={"digit": 7}) as uac:
        c, _ = await answer_next(inbound, webhook)
        try:
            await c.send({"command": "accept", "option": {}})
            dtmf = await c.event("dtmf", timeout=10)
            assert dtmf["digit"] == "7"
            await c.event("hangup", timeout=10)
        finally:
            await c.close()
        (await uac.wait(timeout=10)).assert_ok()


async def test_sipp_refers_us(inbound: StackInfo, webhook: Webhook) -> None:
    async with Sipp("uac_refer", remote=("127.0.0.1", inbound.sip_port)) as uac:
        c, _ = await answer_next(inbound, webhook)
        try:
            await c.send({"command": "accept", "option": {}})
            request = await c.event("transferRequest", timeout=10)
            assert request["referTo"] == request["target"] == "<sip:transfer@127.0.0.1>"
            await c.event("hangup", timeout=10)
        finally:
            await c.close()
        result = await uac.wait(timeout=10)
    result.assert_ok()
    refer = result.sent("REFER")[0]
    assert (
        request["referredBy"] == refer.header("Referred-By") and "sip:sipp@127.0.0.1" in request["referredBy"]
    )
    notify = result.received("NOTIFY")[0]
    assert notify.header("Event") == "refer" and "SIP/2.0 100 Trying" in notify.body


async def test_sipp_sends_a_message_and_holds_the_call(inbound: StackInfo, webhook: Webhook) -> None:
    """sipp's MESSAGE is answered 200 and reported; its re-INVITEs (sendonly, inactive, sendrecv) are
    answered as before, and `hold` comes once per change: on, then off."""
    variables = {"text": "hello from sipp", "hold_ms": 300}
    async with Sipp("uac_message_hold", remote=("127.0.0.1", inbound.sip_port), variables=variables) as uac:
        c, _ = await answer_next(inbound, webhook)
        try:
            await c.send({"command": "accept", "option": {}})
            message = await c.event("message", timeout=10)
            assert message["trackId"] == c.call_id and isinstance(message["timestamp"], int)
            assert message["body"] == "hello from sipp\r\n"  # SIPp ends the body's line
            assert message["contentType"] == "text/plain;charset=utf-8"
            await c.event("hangup", timeout=10)
        finally:
            await c.close()
        result = await uac.wait(timeout=10)
    result.assert_ok()
    holds = [e for e in c.events if e["event"] == "hold"]
    assert [(e["trackId"], e["onHold"]) for e in holds] == [(c.call_id, True), (c.call_id, False)]
    names = c.names()
    assert names.index("message") < names.index("hold") < names.index("hangup")
    answers = [m.body for m in result.received(200) if m.cseq_method == "INVITE"][1:]
    assert [a.split("a=")[-1].split()[0] for a in answers] == ["recvonly", "inactive", "sendrecv"]
    assert [m.cseq_method for m in result.received(200)].count("MESSAGE") == 1
