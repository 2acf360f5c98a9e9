"""The SIPp harness itself: scenarios of tests/sip/scenarios played against each other on 127.0.0.1."""

from __future__ import annotations

from tests.sip.sipp import Sipp, digest_ok, run_uac


async def test_call_answered_with_audio_and_hung_up() -> None:
    async with Sipp("uas_answer") as uas:
        uac = await run_uac("uac_call", uas.address, variables={"hold_ms": 400, "xtest": "harness"})
        server = await uas.wait(timeout=10)
    uac.assert_ok()
    server.assert_ok()
    assert (uac.successful, uac.failed, server.successful, server.failed) == (1, 0, 1, 0)
    invite = server.received("INVITE")[0]
    assert invite.header("X-Test") == "harness"
    assert "m=audio" in invite.body and invite.header("Content-Type") == "application/sdp"
    assert [m.status for m in uac.received() if m.cseq_method == "INVITE"] == [100, 180, 200]
    answer = uac.received(200)[0]
    assert f"m=audio {uas.media_port} RTP/AVP 8 0 101" in answer.body
    assert server.received("ACK") and server.received("BYE")
    assert uac.received(200)[-1].cseq_method == "BYE"


async def test_cancel_while_ringing() -> None:
    async with Sipp("uas_no_answer") as uas:
        uac = await run_uac("uac_cancel", uas.address, variables={"hold_ms": 200})
        server = await uas.wait(timeout=10)
    uac.assert_ok()
    server.assert_ok()
    assert (uac.successful, server.successful) == (1, 1)
    invite, cancel, ack = (server.received(method)[0] for method in ("INVITE", "CANCEL", "ACK"))
    assert cancel.header("Via") == invite.header("Via") == ack.header("Via")  # one branch
    assert cancel.header("CSeq") == "1 CANCEL" and ack.header("CSeq") == "1 ACK"
    assert invite.at is not None and cancel.at is not None
    assert 0.15 <= cancel.at - invite.at <= 2.0, (
        "the trace's times: the CANCEL came hold_ms after the ringing"
    )
    assert uac.received(487)[0].cseq_method == "INVITE"
    assert uac.received(200)[0].cseq_method == "CANCEL"


async def test_reject_with_a_chosen_code_and_a_mismatch_fails() -> None:
    async with Sipp("uas_reject", variables={"code": 603}) as uas:
        uac = await run_uac("uac_rejected", uas.address, variables={"code": 603})
        server = await uas.wait(timeout=10)
    uac.assert_ok()
    server.assert_ok()
    assert uac.received(603)[0].start_line == "SIP/2.0 603 Decline"

    async with Sipp("uas_reject", variables={"code": 480}) as uas:
        uac = await run_uac("uac_rejected", uas.address)  # expects the default, 486
        await uas.wait(timeout=10)
    assert not uac.ok and (uac.returncode, uac.successful, uac.failed) == (1, 0, 1)
    assert 'strcmp code:"486"' in uac.errors


async def test_digest_challenge_407_and_401() -> None:
    for challenge in (407, 401):
        async with Sipp("uas_challenge", variables={"challenge": challenge}) as uas:
            uac = await run_uac("uac_call", uas.address, auth=("alice", "secret"), variables={"hold_ms": 100})
            server = await uas.wait(timeout=10)
        uac.assert_ok()
        server.assert_ok()
        assert uac.received(challenge)
        retried = server.received("INVITE")[1]
        assert digest_ok(retried, "alice", "secret") and not digest_ok(retried, "alice", "wrong")
        header = "Proxy-Authorization" if challenge == 407 else "Authorization"
        assert retried.header(header) is not None

    async with Sipp("uas_challenge", variables={"challenge": 401}) as uas:
        uac = await run_uac("uac_call", uas.address, auth=("alice", "wrong"), variables={"hold_ms": 100})
        server = await uas.wait(timeout=10)
    assert uac.ok and (server.returncode, server.failed) == (1, 1)  # <verifyauth> refused the response


async def test_early_media_then_answer() -> None:
    async with Sipp("uas_early_media", variables={"ring_ms": 300}) as uas:
        uac = await run_uac("uac_call", uas.address, variables={"hold_ms": 100})
        server = await uas.wait(timeout=10)
    uac.assert_ok()
    server.assert_ok()
    progress = uac.received(183)[0]
    assert progress.header("Content-Type") == "application/sdp" and "m=audio" in progress.body


async def test_callee_hangs_up_and_sends_dtmf() -> None:
    for scenario, variables in (("uas_bye", {"hold_ms": 300}), ("uas_dtmf", {"gap_ms": 200})):
        async with Sipp(scenario, variables=variables) as uas:
            uac = await run_uac("uac_call", uas.address, variables={"hangup": "remote"})
            server = await uas.wait(timeout=10)
        uac.assert_ok()
        server.assert_ok()
        bye, invite = uac.received("BYE")[0], server.received("INVITE")[0]
        assert bye.header("Call-ID") == invite.header("Call-ID")
        assert bye.start_line == f"BYE {(invite.header('Contact') or '').strip('<>')} SIP/2.0"
        caller_tag = (invite.header("From") or "").split(";tag=")[1]
        assert (bye.header("To") or "").endswith(f";tag={caller_tag}")


async def test_info_dtmf_and_refer_in_dialog() -> None:
    async with Sipp("uas_answer", calls=2) as uas:
        info = await run_uac("uac_info_dtmf", uas.address, variables={"digit": 7, "hold_ms": 100})
        refer = await run_uac("uac_refer", uas.address, variables={"hold_ms": 100})
        server = await uas.wait(timeout=10)
    info.assert_ok()
    refer.assert_ok()
    server.assert_ok()
    request = server.received("INFO")[0]
    assert request.header("Content-Type") == "application/dtmf-relay"
    assert request.body == "Signal=7\r\nDuration=160\r\n"
    assert server.received("REFER")[0].header("Refer-To") == "<sip:transfer@127.0.0.1>"
    assert refer.received(202)


async def test_message_and_hold_in_dialog() -> None:
    async with Sipp("uas_answer") as uas:
        uac = await run_uac("uac_message_hold", uas.address, variables={"hold_ms": 100, "text": "hi"})
        server = await uas.wait(timeout=10)
    uac.assert_ok()
    server.assert_ok()
    message = server.received("MESSAGE")[0]
    assert message.header("Content-Type") == "text/plain;charset=utf-8" and message.body.strip() == "hi"
    offers = [m.body for m in server.received("INVITE")[1:]]
    answers = [m.body for m in uac.received(200) if m.cseq_method == "INVITE"][1:]
    assert ["a=sendonly" in o for o in offers] == [True, False, False]
    assert ["a=inactive" in o for o in offers] == [False, True, False]
    assert [a.split("a=")[-1].split()[0] for a in answers] == ["recvonly", "inactive", "sendrecv"]


async def test_a_refused_message() -> None:
    async with Sipp("uas_answer", variables={"refuse_message": 1}) as uas:
        uac = await run_uac("uac_message_hold", uas.address, variables={"hold_ms": 100})
        await uas.stop()
    assert uac.received(488) and not uac.ok, "the caller waits for a 200"
