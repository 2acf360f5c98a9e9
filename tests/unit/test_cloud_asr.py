"""The Tencent Cloud and VoiceAPI recognizers against local services that speak their wire protocols."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from common.errors import ProviderError
from common.protocol import TranscriptionOption
from tests.providers.tencent_asr import TencentAsrServer
from tests.providers.voiceapi_asr import VoiceApiAsrServer
from tests.speech import speech, with_silence
from worker.speech import ws_asr
from worker.speech.asr import AsrClient, AsrContext, Transcript
from worker.speech.tencent_asr import TencentAsr
from worker.speech.voiceapi_asr import VoiceApiAsr
from worker.urlguard import UrlGuard

# The mock services listen on 127.0.0.1: ALLOW_PRIVATE_URLS=1, as the test stacks run.
LOOPBACK = UrlGuard(allow_private=True)

T0 = 1_700_000_000_000
SCRIPT = ["book a table for two", "a window seat please", "thank you"]


class Sink:
    def __init__(self) -> None:
        self.results: list[Transcript] = []
        self.errors: list[ProviderError] = []

    def finals(self) -> list[Transcript]:
        return [r for r in self.results if r.final]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_asr, "RECONNECT_DELAYS", (0.05, 0.05, 0.05))


def two_sentences() -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    audio, spans = with_silence(
        0.4, speech("Please book a table for two."), 0.8, speech("A window seat, please."), 0.8
    )
    return [audio[i : i + 320] for i in range(0, len(audio) - 319, 320)], spans


async def feed(client: AsrClient, frames: list[np.ndarray], start: int = 0, speed: float = 5.0) -> None:
    """Frames stamped on a synthetic audio clock, fed faster than real time."""
    for i, frame in enumerate(frames):
        client.feed(frame, T0 + (start + i) * 20)
        await asyncio.sleep(0.02 / speed)


async def until(check: object, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def across_a_drop(client: AsrClient, sink: Sink, frames: list[np.ndarray], split: int) -> None:
    """Stream two sentences while the service drops the connection at `split`, then close."""
    await client.start()
    await feed(client, frames[:split])
    await until(lambda: bool(sink.errors))
    await feed(client, frames[split:], start=split)
    await until(lambda: len(sink.finals()) == 2)
    await client.close()


def tencent(server: TencentAsrServer, sink: Sink, **option: object) -> TencentAsr:
    opt = TranscriptionOption(
        provider="tencent",
        app_id=str(option.pop("app_id", server.appid)),
        secret_id=str(option.pop("secret_id", server.secret_id)),
        secret_key=str(option.pop("secret_key", server.secret_key)),
        endpoint=server.ws_url,
        **option,  # type: ignore[arg-type]
    )
    return TencentAsr(
        opt, AsrContext(call_id="call-1", guard=LOOPBACK), sink.results.append, sink.errors.append
    )


async def test_tencent_signed_stream_gives_interims_and_finals_on_the_call_clock() -> None:
    frames, spans = two_sentences()
    async with TencentAsrServer("1300", "AKIDtest", "k3y/with+chars=", SCRIPT) as server:
        sink = Sink()
        client = tencent(
            server, sink, model_type="16k_en", extra={"vad_silence_time": 500, "hotword_id": "hw1"}
        )
        await client.start()
        await feed(client, frames)
        await until(lambda: len(sink.finals()) == 2)
        await client.close()
        assert not sink.errors
        [conn] = server.connections
        assert conn.got_end, "the client says the audio ended"
        assert len(conn.audio) == len(frames) * 640, "every byte of the caller's audio reached the service"
        q = conn.query
        assert q["engine_model_type"] == "16k_en" and q["voice_format"] == "1" and q["needvad"] == "1"
        assert q["vad_silence_time"] == "500" and q["hotword_id"] == "hw1", "extra is merged into the query"
        assert q["voice_id"] == "call-1" and q["secretid"] == "AKIDtest"
    finals = sink.finals()
    assert [(f.index, f.text) for f in finals] == [(0, SCRIPT[0]), (1, SCRIPT[1])]
    for f, (start, end) in zip(finals, spans, strict=True):
        assert f.start_ms is not None and f.end_ms is not None
        assert abs(f.start_ms - (T0 + start)) <= 100 and abs(f.end_ms - (T0 + end)) <= 100
    interims = [r for r in sink.results if not r.final]
    assert interims and all(r.text for r in interims)
    for r in interims:  # each interim comes before its sentence's final
        assert sink.results.index(r) < sink.results.index(finals[r.index])


async def test_tencent_refuses_a_bad_signature_once() -> None:
    frames, _ = two_sentences()
    async with TencentAsrServer("1300", "AKIDtest", "right-key") as server:
        sink = Sink()
        client = tencent(server, sink, secret_key="wrong-key")
        await client.start()
        await feed(client, frames[:50])
        await until(lambda: bool(sink.errors))
        await asyncio.sleep(0.2)
        await client.close()
        assert len(server.connections) == 1, "a refusal is final: no reconnecting with the same key"
    [err] = sink.errors
    assert err.status == 4002 and "signature" in err.message


async def test_tencent_without_credentials_says_so_without_connecting() -> None:
    sink = Sink()
    client = TencentAsr(
        TranscriptionOption(provider="tencent"),
        AsrContext(call_id="c", guard=LOOPBACK),
        sink.results.append,
        sink.errors.append,
    )
    await client.start()
    [err] = sink.errors
    assert err.status == 400 and "appId" in err.message and "TENCENT_SECRET_KEY" in err.message
    await client.close()


def env_context(trust_clients: bool = False) -> AsrContext:
    return AsrContext(
        call_id="c",
        tencent_appid="77",
        tencent_secret_id="AKIDenv",
        tencent_secret_key="envkey",
        trust_clients=trust_clients,
        guard=LOOPBACK,
    )


async def test_tencent_credentials_from_the_environment_go_to_a_client_endpoint_under_trust_clients() -> None:
    frames, _ = two_sentences()
    async with TencentAsrServer("77", "AKIDenv", "envkey", SCRIPT) as server:
        sink = Sink()
        context = env_context(trust_clients=True)
        opt = TranscriptionOption(provider="tencent", endpoint=server.ws_url)
        client = TencentAsr(opt, context, sink.results.append, sink.errors.append)
        await client.start()
        await feed(client, frames)
        await until(lambda: len(sink.finals()) == 2)
        await client.close()
        assert not sink.errors
        assert server.connections[0].query["engine_model_type"] == "16k_zh_en"


async def test_tencent_client_endpoint_without_its_own_credentials_is_refused_without_connecting() -> None:
    async with TencentAsrServer("77", "AKIDenv", "envkey", SCRIPT) as server:
        for own in ({}, {"secret_id": "AKIDmine"}, {"app_id": "9", "secret_id": "AKIDmine"}):
            sink = Sink()
            opt = TranscriptionOption(provider="tencent", endpoint=server.ws_url, **own)
            client = TencentAsr(opt, env_context(), sink.results.append, sink.errors.append)
            await client.start()
            await client.close()
            [err] = sink.errors
            assert err.status == 400
            assert err.message.startswith("option.asr.endpoint: a custom endpoint needs its own ")
            assert "secretKey" in err.message and "only sent to asr.cloud.tencent.com" in err.message
            assert "AKIDenv" not in err.message and "envkey" not in err.message
        assert not server.connections, "nothing was sent to the client's endpoint"


async def test_tencent_client_endpoint_with_its_own_credentials_gets_only_those() -> None:
    frames, _ = two_sentences()
    async with TencentAsrServer("9", "AKIDmine", "minekey", SCRIPT) as server:
        sink = Sink()
        opt = TranscriptionOption(
            provider="tencent", endpoint=server.ws_url, app_id="9", secret_id="AKIDmine", secret_key="minekey"
        )
        client = TencentAsr(opt, env_context(), sink.results.append, sink.errors.append)
        await client.start()
        await feed(client, frames)
        await until(lambda: len(sink.finals()) == 2)
        await client.close()
        assert not sink.errors
        assert server.connections[0].query["secretid"] == "AKIDmine"


@pytest.mark.parametrize(
    ("endpoint", "default"),
    [
        (None, True),
        ("asr.cloud.tencent.com", True),
        ("wss://asr.cloud.tencent.com", True),
        ("https://asr.cloud.tencent.com:443/", True),
        ("ws://asr.cloud.tencent.com", False),  # the signed query would travel in the clear
        ("wss://asr.cloud.tencent.com:8443", False),
        ("wss://asr.cloud.tencent.com.evil.example", False),
        ("wss://user@asr.cloud.tencent.com", False),
        ("wss://evil.example/asr.cloud.tencent.com", False),
    ],
)
def test_the_server_credentials_only_go_to_tencent_itself(endpoint: str | None, default: bool) -> None:
    opt = TranscriptionOption(provider="tencent", endpoint=endpoint)
    client = TencentAsr(opt, env_context(), lambda t: None, lambda e: None)
    if default:
        client.check()
        assert "secretid=AKIDenv" in client.url()
    else:
        with pytest.raises(ProviderError, match="option.asr.endpoint: a custom endpoint"):
            client.check()


async def test_tencent_error_code_mid_call_is_reported_and_final() -> None:
    frames, _ = two_sentences()
    async with TencentAsrServer("1300", "AKIDtest", "key") as server:
        server.error_after = (640 * 40, 4008)
        sink = Sink()
        client = tencent(server, sink)
        await client.start()
        await feed(client, frames)
        await client.close()
        assert len(server.connections) == 1
    [err] = sink.errors
    assert err.status == 4008 and "4008" in err.message


async def test_tencent_dropped_connection_reconnects_and_counts_on() -> None:
    frames, spans = two_sentences()
    split = (spans[0][1] + 700) // 20  # drop in the pause between the sentences
    async with TencentAsrServer("1300", "AKIDtest", "key", SCRIPT) as server:
        server.drop_after = split * 640
        sink = Sink()
        client = tencent(server, sink)
        await across_a_drop(client, sink, frames, split)
        assert len(server.connections) == 2
        sent = sum(len(c.audio) for c in server.connections)
        assert sent == len(frames) * 640, "audio during the reconnect was kept and sent"
    assert "reconnecting" in sink.errors[0].message and len(sink.errors) == 1
    finals = sink.finals()
    assert [f.index for f in finals] == [0, 1], "the second connection's sentence 0 is the call's sentence 1"
    start, end = spans[1]
    assert finals[1].start_ms is not None and abs(finals[1].start_ms - (T0 + start)) <= 100


async def test_tencent_unreachable_gives_up_after_retries() -> None:
    sink = Sink()
    opt = TranscriptionOption(
        provider="tencent", app_id="1", secret_id="a", secret_key="b", endpoint="ws://127.0.0.1:9"
    )
    client = TencentAsr(opt, AsrContext(call_id="c", guard=LOOPBACK), sink.results.append, sink.errors.append)
    await client.start()
    await until(lambda: any("giving up" in e.message for e in sink.errors))
    assert len(sink.errors) == len(ws_asr.RECONNECT_DELAYS) + 1
    await client.close()


def test_tencent_url_is_signed_over_host_path_and_sorted_query() -> None:
    import base64
    import hashlib
    import hmac

    opt = TranscriptionOption(provider="tencent", app_id="1259", secret_id="AKID", secret_key="secret")
    client = TencentAsr(opt, AsrContext(call_id="s.1", guard=LOOPBACK), lambda t: None, lambda e: None)
    url = urlsplit(client.url())
    assert (url.scheme, url.netloc, url.path) == ("wss", "asr.cloud.tencent.com", "/asr/v2/1259")
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    signature = q.pop("signature")
    plain = "asr.cloud.tencent.com/asr/v2/1259?" + "&".join(f"{k}={q[k]}" for k in sorted(q))
    assert signature == base64.b64encode(hmac.new(b"secret", plain.encode(), hashlib.sha1).digest()).decode()
    assert list(q) == sorted(q), "the query goes out sorted, as it was signed"
    assert "secret" not in repr(opt)


async def test_voiceapi_streams_and_stamps_sentences_on_the_call_clock() -> None:
    frames, spans = two_sentences()
    async with VoiceApiAsrServer(SCRIPT) as server:
        sink = Sink()
        opt = TranscriptionOption(provider="voiceapi", endpoint=server.ws_url.replace("ws://", "http://"))
        client = VoiceApiAsr(
            opt, AsrContext(call_id="c", guard=LOOPBACK), sink.results.append, sink.errors.append
        )
        await client.start()
        await feed(client, frames, speed=1.0)  # the service sends no times: stamps need real-time arrival
        await until(lambda: len(sink.finals()) == 2)
        await client.close()
        assert not sink.errors
        [conn] = server.connections
        assert len(conn.audio) == len(frames) * 640
    finals = sink.finals()
    assert [(f.index, f.text) for f in finals] == [(0, SCRIPT[0]), (1, SCRIPT[1])]
    assert [r for r in sink.results if not r.final], "interim results arrive"
    for f, (_start, end) in zip(finals, spans, strict=True):
        assert f.end_ms is not None and T0 + end <= f.end_ms <= T0 + end + 600
    assert finals[1].start_ms == finals[0].end_ms


async def test_voiceapi_endpoint_from_the_environment_and_reconnect() -> None:
    frames, spans = two_sentences()
    split = (spans[0][1] + 700) // 20
    async with VoiceApiAsrServer(SCRIPT) as server:
        server.drop_after = split * 640
        sink = Sink()
        context = AsrContext(call_id="c", voiceapi_endpoint=server.ws_url)
        client = VoiceApiAsr(
            TranscriptionOption(provider="voiceapi"), context, sink.results.append, sink.errors.append
        )
        await across_a_drop(client, sink, frames, split)
        assert len(server.connections) == 2
    assert [f.index for f in sink.finals()] == [0, 1]


async def test_voiceapi_refused_handshake_is_an_error() -> None:
    async with VoiceApiAsrServer() as server:
        sink = Sink()
        opt = TranscriptionOption(provider="voiceapi", endpoint=server.ws_url + "/nowhere")
        client = VoiceApiAsr(
            opt, AsrContext(call_id="c", guard=LOOPBACK), sink.results.append, sink.errors.append
        )
        await client.start()
        await until(lambda: any("giving up" in e.message for e in sink.errors))
        assert "HTTP 404" in sink.errors[0].message
        await client.close()


async def test_a_client_endpoint_at_a_private_address_is_refused_once_without_connecting() -> None:
    async with VoiceApiAsrServer(SCRIPT) as server:
        sink = Sink()
        opt = TranscriptionOption(provider="voiceapi", endpoint=server.ws_url)
        client = VoiceApiAsr(opt, AsrContext(call_id="c"), sink.results.append, sink.errors.append)
        await client.start()
        await until(lambda: bool(sink.errors))
        await asyncio.sleep(0.2)  # no retry follows
        await client.close()
        assert not server.connections
    [err] = sink.errors
    assert err.status == 403
    assert err.message == (
        f"option.asr.endpoint: {server.ws_url} refused: 127.0.0.1 is a private address (loopback); "
        "set ALLOW_PRIVATE_URLS=1 to allow"
    )


async def test_the_configured_endpoint_may_be_private() -> None:
    frames, _ = two_sentences()
    async with VoiceApiAsrServer(SCRIPT) as server:
        sink = Sink()
        # VOICEAPI_ENDPOINT, the operator's: reached under the strict rule.
        context = AsrContext(call_id="c", voiceapi_endpoint=server.ws_url, guard=UrlGuard())
        client = VoiceApiAsr(
            TranscriptionOption(provider="voiceapi"), context, sink.results.append, sink.errors.append
        )
        await client.start()
        await feed(client, frames)
        await until(lambda: len(sink.finals()) == 2)
        await client.close()
        assert not sink.errors
