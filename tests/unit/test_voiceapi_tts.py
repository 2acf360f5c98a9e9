"""The VoiceAPI synthesizer against a local service that speaks its `/tts` WebSocket protocol."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import numpy as np
import pytest

from common.embedded import free_port
from common.errors import ProviderError, ProviderRefused
from common.protocol import SynthesisOption
from tests.providers.voiceapi_tts import VoiceApiTtsServer, parse_query, tone
from worker.speech.tts import TtsAudio, TtsContext
from worker.speech.voiceapi_tts import VoiceApiTts
from worker.urlguard import UrlGuard

# The mock service listens on 127.0.0.1: ALLOW_PRIVATE_URLS=1, as the test stacks run.
LOOPBACK = UrlGuard(allow_private=True)

TEXT = "book a table"  # 10 characters that are not spaces: 400 ms


def provider(endpoint: str | None = None, context: TtsContext | None = None, **option: Any) -> VoiceApiTts:
    return VoiceApiTts(
        SynthesisOption(endpoint=endpoint, **option), context or TtsContext(call_id="c1", guard=LOOPBACK)
    )


async def collect(tts: VoiceApiTts, text: str = TEXT) -> list[TtsAudio]:
    out = []
    async for item in tts.synthesize(text):
        assert isinstance(item, TtsAudio)
        out.append(item)
    return out


def joined(chunks: list[TtsAudio]) -> np.ndarray:
    return np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.int16)


async def test_query_and_text_as_sent() -> None:
    async with VoiceApiTtsServer() as server:
        await collect(provider(server.ws_url, speaker="3", speed=1.25), "Hello there.")
    (conn,) = server.connections
    assert conn.query == {
        "samplerate": "16000",
        "sid": "3",
        "chunk_size": "2560",
        "split": "false",
        "speed": "1.25",
    }
    assert conn.texts == ["Hello there."]
    assert conn.params.split is False and conn.params.sid == 3


async def test_exact_samples_for_a_text_in_chunks_as_the_server_cut_them() -> None:
    async with VoiceApiTtsServer() as server:
        chunks = await collect(provider(server.ws_url))
    audio = joined(chunks)
    assert len(audio) == 10 * 640
    assert np.array_equal(audio, tone(TEXT, 16000))
    assert [len(c.samples) for c in chunks] == [1280] * 5  # 2560-byte frames
    assert all(c.samples.dtype == np.int16 and c.rate == 16000 for c in chunks)


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
async def test_the_rate_is_asked_for_and_carried(rate: int) -> None:
    async with VoiceApiTtsServer() as server:
        chunks = await collect(provider(server.ws_url, samplerate=rate))
    assert server.connections[0].params.samplerate == rate
    assert server.connections[0].params.chunk_size == rate * 2 * 80 // 1000
    assert {c.rate for c in chunks} == {rate}
    assert len(joined(chunks)) == 10 * rate * 40 // 1000


async def test_speed_changes_the_length() -> None:
    async with VoiceApiTtsServer() as server:
        chunks = await collect(provider(server.ws_url, speed=2.0))
    assert len(joined(chunks)) == 10 * 320


async def test_odd_frames_keep_the_straddling_byte() -> None:
    async with VoiceApiTtsServer(chunk_override=1001) as server:
        chunks = await collect(provider(server.ws_url))
    assert np.array_equal(joined(chunks), tone(TEXT, 16000))


async def test_interim_progress_is_not_the_end() -> None:
    async with VoiceApiTtsServer(interim_progress=True) as server:
        chunks = await collect(provider(server.ws_url))
    assert len(joined(chunks)) == 6400


async def test_endpoint_from_the_context_with_its_speaker() -> None:
    async with VoiceApiTtsServer() as server:
        context = TtsContext(call_id="c1", voiceapi_endpoint=server.ws_url, voiceapi_speaker_id="7")
        chunks = await collect(provider(context=context))
    assert len(joined(chunks)) == 6400
    assert server.connections[0].query["sid"] == "7"


async def test_the_option_endpoint_wins_over_the_context() -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    async with VoiceApiTtsServer() as server:
        context = TtsContext(call_id="c1", voiceapi_endpoint=dead, voiceapi_speaker_id="7", guard=LOOPBACK)
        await collect(provider(server.ws_url, context, speaker="2"))
    assert server.connections[0].query["sid"] == "2"


async def test_http_endpoint_with_a_path_prefix_becomes_ws() -> None:
    async with VoiceApiTtsServer(prefix="/voice") as server:
        http_url = server.ws_url.replace("ws://", "http://") + "/voice/"
        tts = provider(http_url)
        assert tts.url().startswith(f"ws://127.0.0.1:{server.port}/voice/tts?")
        chunks = await collect(tts)
    assert len(joined(chunks)) == 6400
    assert server.connections[0].path == "/voice/tts"


async def test_audio_streams_before_the_server_is_done() -> None:
    async with VoiceApiTtsServer(chunk_delay=0.02) as server:
        gen = provider(server.ws_url).synthesize(TEXT * 4)
        first = await anext(gen)
        assert isinstance(first, TtsAudio)
        assert server.connections[0].sent_bytes < len(tone(TEXT * 4, 16000)) * 2
        rest = [item async for item in gen if isinstance(item, TtsAudio)]
    assert len(first.samples) + len(joined(rest)) == 40 * 640


async def test_aclose_after_the_first_chunk_closes_the_socket() -> None:
    async with VoiceApiTtsServer(chunk_delay=0.02) as server:
        gen = provider(server.ws_url).synthesize(TEXT * 20)
        await anext(gen)
        started = time.monotonic()
        await gen.aclose()
        conn = server.connections[0]
        await asyncio.wait_for(conn.closed.wait(), 1.0)
        assert time.monotonic() - started < 1.0
        sent = conn.sent_bytes
        await asyncio.sleep(0.1)
        assert conn.sent_bytes == sent < len(tone(TEXT * 20, 16000)) * 2


async def test_cancel_while_waiting_closes_the_socket() -> None:
    async with VoiceApiTtsServer(stall=True) as server:
        task = asyncio.ensure_future(collect(provider(server.ws_url)))
        while not server.connections or not server.connections[0].sent_bytes:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.connections[0].closed.wait(), 1.0)


async def test_dropped_connection_is_an_error() -> None:
    async with VoiceApiTtsServer(drop_after_bytes=5000) as server:
        with pytest.raises(ProviderError, match="closed the connection|connection error"):
            await collect(provider(server.ws_url))


async def test_text_that_is_not_json_is_an_error() -> None:
    async with VoiceApiTtsServer(garbage=True) as server:
        with pytest.raises(ProviderError, match="not JSON"):
            await collect(provider(server.ws_url))


async def test_close_without_the_final_progress_is_an_error() -> None:
    async with VoiceApiTtsServer(never_finish=True) as server:
        with pytest.raises(ProviderError, match=r"before the end of the audio \(12800 bytes"):
            await collect(provider(server.ws_url))


async def test_a_silent_service_times_out() -> None:
    async with VoiceApiTtsServer(stall=True) as server:
        tts = provider(server.ws_url)
        tts.idle_timeout = 0.2
        with pytest.raises(ProviderError, match="nothing from the service"):
            await collect(tts)
        await asyncio.wait_for(server.connections[0].closed.wait(), 1.0)


async def test_unreachable_service_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(ProviderError, match="cannot connect"):
        await collect(provider(f"ws://127.0.0.1:{free_port()}"))
    assert time.monotonic() - started < 2.0


async def test_a_refused_handshake_names_the_status() -> None:
    async with VoiceApiTtsServer() as server:
        with pytest.raises(ProviderRefused, match="HTTP 404") as caught:
            await collect(provider(server.ws_url + "/elsewhere"))
    assert caught.value.status == 404


async def test_the_mock_refuses_a_query_fastapi_would_not_parse() -> None:
    async with VoiceApiTtsServer() as server, aiohttp.ClientSession() as http:
        for query in ("samplerate=16k", "sid=alice", "chunk_size=1.5", "split=maybe"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(f"{server.ws_url}/tts?{query}")
            assert caught.value.status == 403
    assert server.connections == []
    assert parse_query({}).chunk_size == 1024 and parse_query({"split": "No"}).split is False


async def test_empty_text_does_not_connect() -> None:
    async with VoiceApiTtsServer() as server:
        assert await collect(provider(server.ws_url), " \U0001f600 ") == []
    assert server.connections == []


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ({"endpoint": "ftp://host"}, "endpoint"),
        ({"speaker": "alice"}, "speaker"),
        ({"speed": 0.0}, "speed"),
        ({"samplerate": -8000}, "samplerate"),
    ],
)
def test_check_refuses_what_the_server_cannot_take(option: dict[str, Any], field: str) -> None:
    with pytest.raises(ProviderRefused, match=rf"option\.tts\.{field}") as caught:
        provider(**option).check()
    assert caught.value.status == 400


def test_defaults_without_any_setting() -> None:
    tts = provider()
    tts.check()
    assert tts.url() == "ws://localhost:8000/tts?samplerate=16000&sid=0&chunk_size=2560&split=false"


async def test_a_client_endpoint_at_a_private_address_is_refused_but_the_configured_one_is_not() -> None:
    async with VoiceApiTtsServer() as server:
        strict = TtsContext(call_id="c1", voiceapi_endpoint=server.ws_url, guard=UrlGuard())
        with pytest.raises(ProviderRefused) as caught:
            await collect(provider(server.ws_url.replace("127.0.0.1", "localhost"), strict))
        assert not server.connections
        assert caught.value.status == 403
        message = caught.value.message
        assert message.startswith(f"option.tts.endpoint: ws://localhost:{server.port} refused: localhost ")
        assert "resolves to" in message and "127.0.0.1" in message and "ALLOW_PRIVATE_URLS" in message
        # VOICEAPI_ENDPOINT is the operator's: reached under the same rule.
        assert len(joined(await collect(provider(context=strict)))) == 6400
