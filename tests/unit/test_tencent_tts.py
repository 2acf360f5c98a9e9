"""The Tencent Cloud TTS client against a local service that speaks Tencent's wire protocol."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest

from common.embedded import free_port
from common.errors import ProviderError, ProviderRefused
from common.protocol import SynthesisOption
from tests.providers.tencent_tts import CHAR_MS, TencentTtsServer, samples_for, tone
from worker.speech import tencent_tts
from worker.speech.tencent_tts import TencentTts, sign, string_to_sign
from worker.speech.tts import Subtitle, TtsAudio, TtsContext, TtsOutput, TtsSubtitles
from worker.urlguard import UrlGuard

APPID, SECRET_ID, SECRET_KEY = "1300123456", "AKIDttsTest", "k3y/with+chars="
# The mock service listens on 127.0.0.1: ALLOW_PRIVATE_URLS=1, as the test stacks run.
LOOPBACK = UrlGuard(allow_private=True)


def tts(
    server: TencentTtsServer | None = None, /, context: TtsContext | None = None, **option: Any
) -> TencentTts:
    """A client of `server` (its credentials and address) with `option` on top."""
    fields: dict[str, Any] = {"provider": "tencent"}
    if server is not None:
        fields |= {
            "app_id": APPID,
            "secret_id": SECRET_ID,
            "secret_key": SECRET_KEY,
            "endpoint": server.ws_url,
        }
    fields |= option
    return TencentTts(SynthesisOption(**fields), context or TtsContext(call_id="call-1", guard=LOOPBACK))


@dataclass
class Heard:
    audio: list[TtsAudio] = field(default_factory=list)
    subtitles: list[Subtitle] = field(default_factory=list)

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate([a.samples for a in self.audio]) if self.audio else np.zeros(0, np.int16)


async def hear(outputs: AsyncIterator[TtsOutput]) -> Heard:
    heard = Heard()
    async for out in outputs:
        if isinstance(out, TtsAudio):
            assert out.samples.dtype == np.int16 and out.samples.ndim == 1
            heard.audio.append(out)
        else:
            assert isinstance(out, TtsSubtitles)
            heard.subtitles.extend(out.items)
    return heard


async def pieces(*texts: str, gap: float = 0.0, log: list[float] | None = None) -> AsyncIterator[str]:
    for text in texts:
        if gap:
            await asyncio.sleep(gap)
        if log is not None:
            log.append(asyncio.get_running_loop().time())
        yield text


def no_secrets(text: str) -> None:
    assert SECRET_KEY not in text and SECRET_ID not in text
    assert "k3y" not in text and "Signature" not in text


# --- the signature ---------------------------------------------------------------------------------------


def test_signature_is_hmac_sha1_over_the_sorted_unencoded_query() -> None:
    params = {"Text": "你好 world", "AppId": "1300123456", "Action": "TextToStreamAudioWS", "Speed": "1.5"}
    plain = (
        "GETtts.cloud.tencent.com/stream_ws?"
        "Action=TextToStreamAudioWS&AppId=1300123456&Speed=1.5&Text=你好 world"
    )
    assert string_to_sign("tts.cloud.tencent.com", "/stream_ws", params) == plain
    expected = base64.b64encode(hmac.new(b"secret", plain.encode(), hashlib.sha1).digest()).decode()
    assert sign("secret", "tts.cloud.tencent.com", "/stream_ws", params) == expected


def test_url_encodes_every_value_and_signs_the_host_it_uses() -> None:
    client = tts(
        app_id=APPID, secret_id=SECRET_ID, secret_key=SECRET_KEY, endpoint="https://tts.example:8443/x"
    )
    params = client.query("TextToStreamAudioWS", "a+b &c")
    url = client.url("/stream_ws", params)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", "tts.example:8443", "/x/stream_ws")
    assert "a%2Bb%20%26c" in parts.query, "values are URL-encoded in the address"
    query = dict(parse_qsl(parts.query))
    signature = query.pop("Signature")
    assert query == params
    assert signature == sign(SECRET_KEY, "tts.example:8443", "/x/stream_ws", params)


# --- one-shot --------------------------------------------------------------------------------------------


async def test_one_shot_is_signed_and_streams_exact_audio_and_subtitles() -> None:
    text = "你好 world"
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        client = tts(
            server,
            speaker="101002",
            samplerate=16000,
            speed=1.5,
            volume=3,
            emotion="happy",
            extra={"SegmentRate": 1, "FastVoiceType": "fv1", "Volume": 5, "EnableSubtitle": True},
        )
        client.check()
        heard = await hear(client.synthesize(text))
        [conn] = server.connections
    assert not any(m["code"] for m in conn.sent), "the service accepted the signed URL"
    q = conn.query
    assert q["Action"] == "TextToStreamAudioWS" and q["Text"] == text and q["AppId"] == APPID
    assert q["VoiceType"] == "101002" and q["SampleRate"] == "16000" and q["Codec"] == "pcm"
    assert q["Speed"] == "1.5" and q["EnableSubtitle"] == "true"
    assert q["EmotionCategory"] == "happy" and q["EmotionIntensity"] == "100"
    assert q["SegmentRate"] == "1" and q["FastVoiceType"] == "fv1" and q["Volume"] == "5", "extra overrides"
    assert int(q["Expired"]) - int(q["Timestamp"]) == 86400
    assert len(heard.audio) > 3 and all(a.rate == 16000 for a in heard.audio), "audio comes as it arrives"
    # Exact samples, although every frame after the first ends in the middle of a sample.
    assert np.array_equal(heard.samples, tone(16000, 0, samples_for(text, 16000)))
    chars = [ch for ch in text if ch != " "]
    assert [s.text for s in heard.subtitles] == chars
    assert [s.begin_ms for s in heard.subtitles] == [k * CHAR_MS for k in range(len(chars))]
    assert heard.subtitles[2] == Subtitle(text="w", begin_ms=100, end_ms=150, begin_index=3, end_index=4)


async def test_one_shot_at_8k_with_defaults_and_a_given_intensity() -> None:
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        client = tts(server, samplerate=8000, speed=1.0, emotion="news", extra={"EmotionIntensity": 150})
        heard = await hear(client.synthesize("hello"))
        q = server.connections[0].query
    assert q["VoiceType"] == "101001" and q["SampleRate"] == "8000"
    assert q["Speed"] == "1" and q["Volume"] == "0"
    assert q["EmotionCategory"] == "news" and q["EmotionIntensity"] == "150"
    assert {a.rate for a in heard.audio} == {8000} and len(heard.samples) == samples_for(
        "hello", 8000
    ) == 2000


async def test_one_shot_mp3_is_decoded_as_it_arrives() -> None:
    text = "mp3 audio too"
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        client = tts(server, codec="mp3", samplerate=24000)
        client.check()
        heard = await hear(client.synthesize(text))
        assert server.connections[0].query["Codec"] == "mp3"
    expected = samples_for(text, 24000)
    # MP3 adds the encoder's delay and pads to whole frames (1152 samples), nothing more.
    assert expected <= len(heard.samples) <= expected + 3 * 1152
    assert {a.rate for a in heard.audio} == {24000} and len(heard.audio) > 1
    assert np.abs(heard.samples.astype(np.int32)).max() > 4000


async def test_empty_text_needs_no_connection() -> None:
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        heard = await hear(tts(server).synthesize("  "))
        assert not heard.audio and not server.connections


def env_context(trust_clients: bool = False) -> TtsContext:
    return TtsContext(
        call_id="call-2",
        tencent_appid=APPID,
        tencent_secret_id=SECRET_ID,
        tencent_secret_key=SECRET_KEY,
        trust_clients=trust_clients,
        guard=LOOPBACK,
    )


async def test_credentials_from_the_environment_go_to_a_client_endpoint_under_trust_clients() -> None:
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        client = tts(context=env_context(trust_clients=True), endpoint=server.ws_url)
        client.check()
        heard = await hear(client.synthesize("ok"))
    assert len(heard.samples) == samples_for("ok", 16000)


async def test_a_client_endpoint_without_its_own_credentials_is_refused_without_connecting() -> None:
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        client = tts(context=env_context(), endpoint=server.ws_url, secret_id="AKIDmine")
        with pytest.raises(ProviderRefused) as info:
            await hear(client.synthesize("ok"))
        with pytest.raises(ProviderRefused):
            await hear(client.stream(pieces("ok")))
        assert not server.connections
    assert info.value.status == 400
    assert info.value.message == (
        "option.tts.endpoint: a custom endpoint needs its own appId, secretKey in the option; the server's "
        "credentials are only sent to tts.cloud.tencent.com"
    )


def test_the_environment_credentials_sign_for_tencent_itself() -> None:
    for endpoint in (None, "tts.cloud.tencent.com", "wss://tts.cloud.tencent.com:443"):
        client = tts(context=env_context(), endpoint=endpoint)
        client.check()
        assert f"SecretId={SECRET_ID}" in client.url("/stream_ws", client.query("TextToStreamAudioWS", "x"))


async def test_a_client_endpoint_at_a_private_address_is_refused() -> None:
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        client = tts(server, context=TtsContext(call_id="c", guard=UrlGuard()))
        with pytest.raises(ProviderRefused) as info:
            await hear(client.synthesize("ok"))
        assert not server.connections
    assert info.value.status == 403
    assert info.value.message.startswith(
        f"option.tts.endpoint: {server.ws_url} refused: 127.0.0.1 is a private"
    )
    no_secrets(info.value.message)


# --- streaming -------------------------------------------------------------------------------------------


async def test_stream_waits_for_ready_then_sends_pieces_and_completes() -> None:
    texts = ["Hello", " there,", "", " how are", " you?"]
    taken: list[float] = []
    first_audio: list[float] = []
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        server.delay_ready = 0.3
        heard = Heard()
        async for out in tts(server, speaker="501000").stream(pieces(*texts, gap=0.05, log=taken)):
            if isinstance(out, TtsAudio):
                first_audio = first_audio or [asyncio.get_running_loop().time()]
                heard.audio.append(out)
            elif isinstance(out, TtsSubtitles):
                heard.subtitles.extend(out.items)
        [conn] = server.connections
    q = conn.query
    assert q["Action"] == "TextToStreamAudioWSv2" and "Text" not in q and q["VoiceType"] == "501000"
    spoken = [t for t in texts if t]
    assert conn.actions == ["ACTION_SYNTHESIS"] * len(spoken) + ["ACTION_COMPLETE"]
    assert [m["data"] for m in conn.received] == [*spoken, ""]
    assert {m["session_id"] for m in conn.received} == {q["SessionId"]}
    assert len({m["message_id"] for m in conn.received}) == len(conn.received)
    assert conn.ready_at is not None and all(t >= conn.ready_at for t in conn.action_times)
    assert taken[0] >= conn.ready_at, "no text is taken before the service is ready"
    assert any(m["heartbeat"] == 1 for m in conn.sent) and not any(m["code"] for m in conn.sent)
    assert first_audio[0] < taken[-1], "audio plays while text still arrives"
    whole = "".join(texts)
    assert np.array_equal(heard.samples, tone(16000, 0, samples_for(whole, 16000)))
    assert "".join(s.text for s in heard.subtitles) == whole.replace(" ", "")
    assert heard.subtitles[-1].end_ms == len(whole.replace(" ", "")) * CHAR_MS, "times count from the session"


async def test_stream_of_nothing_still_completes() -> None:
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        heard = await hear(tts(server).stream(pieces()))
        assert server.connections[0].actions == ["ACTION_COMPLETE"] and not heard.audio


async def test_a_failing_text_source_reaches_the_consumer() -> None:
    async def broken() -> AsyncIterator[str]:
        yield "one"
        raise RuntimeError("llm went away")

    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        with pytest.raises(RuntimeError, match="llm went away"):
            await hear(tts(server).stream(broken()))
        await asyncio.wait_for(server.connections[0].closed.wait(), 1.0)


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["one-shot", "stream"])
async def test_a_bad_secret_key_is_refused_without_leaking_secrets(mode: str) -> None:
    async with TencentTtsServer(APPID, SECRET_ID, "the-right-key") as server:
        client = tts(server)
        outputs = client.synthesize("hi") if mode == "one-shot" else client.stream(pieces("hi"))
        with pytest.raises(ProviderRefused) as info:
            await hear(outputs)
    assert info.value.status == 10003 and "signature mismatch" in info.value.message
    no_secrets(str(info.value))


@pytest.mark.parametrize("mode", ["one-shot", "stream"])
async def test_an_error_answer_mid_call_is_refused_with_its_code(mode: str) -> None:
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        server.error_code = 10106
        client = tts(server)
        outputs = client.synthesize("hi") if mode == "one-shot" else client.stream(pieces("hi", "there"))
        with pytest.raises(ProviderRefused) as info:
            await hear(outputs)
    assert info.value.status == 10106 and not info.value.retryable
    assert "10106" in info.value.message and "test error" in info.value.message


@pytest.mark.parametrize("mode", ["one-shot", "stream"])
async def test_a_drop_before_the_end_is_a_provider_error(mode: str) -> None:
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        server.drop_after_bytes = 5000
        client = tts(server)
        text = "a long enough sentence"
        outputs = client.synthesize(text) if mode == "one-shot" else client.stream(pieces(text))
        heard = Heard()
        with pytest.raises(ProviderError) as info:
            async for out in outputs:
                if isinstance(out, TtsAudio):
                    heard.audio.append(out)
    assert not isinstance(info.value, ProviderRefused) and info.value.retryable
    assert 0 < len(heard.samples) < samples_for(text, 16000)
    no_secrets(str(info.value))


async def test_a_service_that_never_gets_ready_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tencent_tts, "READY_TIMEOUT", 0.2)
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        server.delay_ready = 5.0
        with pytest.raises(ProviderError, match="not ready"):
            await hear(tts(server).stream(pieces("hi")))
        await asyncio.wait_for(server.connections[0].closed.wait(), 1.0)
        assert not server.connections[0].actions


async def test_an_unreachable_service_fails_quickly() -> None:
    client = tts(
        app_id=APPID, secret_id=SECRET_ID, secret_key=SECRET_KEY, endpoint=f"ws://127.0.0.1:{free_port()}"
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProviderError) as info:
        await hear(client.synthesize("hi"))
    assert loop.time() - started < 2.0
    assert "cannot connect" in info.value.message
    no_secrets(str(info.value))


async def test_a_handshake_refusal_names_the_status_not_the_url() -> None:
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        with pytest.raises(ProviderError) as info:
            await hear(tts(server, endpoint=server.ws_url + "/elsewhere").synthesize("hi"))
    assert "HTTP 404" in info.value.message and "?" not in info.value.message
    no_secrets(str(info.value))


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ({}, ["appId", "secretId", "secretKey", "TENCENT_APPID", "TENCENT_SECRET_ID", "TENCENT_SECRET_KEY"]),
        ({"app_id": APPID, "secret_id": SECRET_ID}, ["secretKey", "TENCENT_SECRET_KEY"]),
        ({"app_id": "myapp", "secret_id": SECRET_ID, "secret_key": SECRET_KEY}, ["numeric"]),
        ({"endpoint": "http:///nohost"}, ["option.tts.endpoint"]),
        ({"emotion": "gloomy"}, ["gloomy"]),
        ({"codec": "opus"}, ["codec", "opus"]),
        ({"samplerate": 44100}, ["44100"]),
        ({"extra": {"SampleRate": 8000}}, ["extra.SampleRate"]),
        ({"extra": {"Tags": ["a"]}}, ["extra.Tags"]),
    ],
)
def test_check_refuses_what_cannot_work(option: dict[str, Any], words: list[str]) -> None:
    creds = (
        {"app_id": APPID, "secret_id": SECRET_ID, "secret_key": SECRET_KEY}
        if option and "app_id" not in option
        else {}
    )
    client = tts(**{**creds, **option})
    with pytest.raises(ProviderRefused) as info:
        client.check()
    assert info.value.status == 400
    for word in words:
        assert word in info.value.message
    no_secrets(info.value.message)


# --- interrupts ------------------------------------------------------------------------------------------


async def test_closing_the_one_shot_early_closes_the_socket_promptly() -> None:
    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        server.chunk_delay = 0.05
        outputs = tts(server).synthesize("a rather long sentence that takes a while to say")
        async for out in outputs:
            if isinstance(out, TtsAudio):
                break
        await outputs.aclose()  # type: ignore[attr-defined]
        conn = server.connections[0]
        await asyncio.wait_for(conn.closed.wait(), 1.0)
        assert conn.audio_bytes < samples_for("a rather long sentence that takes a while to say", 16000) * 2


async def test_cancelling_a_stream_closes_the_socket_and_stops_taking_text() -> None:
    still_open = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        yield "first words"
        still_open.set()
        await asyncio.Event().wait()  # an LLM that never finishes
        yield "never"

    got_audio = asyncio.Event()

    async def consume() -> None:
        async for out in tts(server).stream(endless()):
            if isinstance(out, TtsAudio):
                got_audio.set()

    async with TencentTtsServer(APPID, SECRET_ID, SECRET_KEY) as server:
        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_audio.wait(), 2.0)
        await asyncio.wait_for(still_open.wait(), 2.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        conn = server.connections[0]
        await asyncio.wait_for(conn.closed.wait(), 1.0)
        assert conn.actions == ["ACTION_SYNTHESIS"], "the session ended without ACTION_COMPLETE"
