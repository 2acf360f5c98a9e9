"""The examples against the real stack: `examples/voice_agent.py` serves a call whose caller is this test,
with the server's LLM proxy in front of a local OpenAI-compatible stand-in that streams the replies."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from common.embedded import free_port
from examples.voice_agent import Agent
from pbxclient import (
    AsrFinal,
    AudioFrame,
    CallOption,
    Client,
    Interruption,
    Speaking,
    TrackEnd,
    TrackStart,
    TranscriptionOption,
    VadOption,
)
from tests.e2e.conftest import StackInfo, running_stack
from tests.e2e.test_tts import transcribe, words
from tests.speech import speech, with_silence
from tests.unit.test_llm_proxy import FakeOpenAI, sse_chunk

pytestmark = pytest.mark.e2e

LONG_REPLY = (
    "The weather today is sunny and warm, with a light breeze from the west. Later in the afternoon some "
    "clouds will roll in from the sea, and there may be a little rain by the evening, so take an umbrella."
)
SHORT_REPLY = "Thank you for calling. Goodbye!"  # (no contraction Whisper may write either way)


@pytest.fixture(scope="module")
def llm_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def agent_stack(tmp_path_factory: pytest.TempPathFactory, llm_port: int) -> Iterator[StackInfo]:
    with running_stack(
        tmp_path_factory.mktemp("examples"),
        1,
        1,
        OPENAI_BASE_URL=f"http://127.0.0.1:{llm_port}/v1",
        OPENAI_API_KEY="sk-test",
        LLM_PROXY_OPEN="1",
    ) as info:
        yield info


@pytest.fixture
async def upstream(llm_port: int) -> AsyncIterator[FakeOpenAI]:
    """The stand-in streams a reply word by word at a model's pace: the long one first, then the short."""
    fake = FakeOpenAI()

    async def answer(request: web.Request) -> web.StreamResponse:
        reply = LONG_REPLY if len(fake.seen) == 1 else SHORT_REPLY
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, word in enumerate(reply.split(" ")):
            await resp.write(sse_chunk(word if i == 0 else " " + word))
            await asyncio.sleep(0.02)
        await resp.write(sse_chunk(None, "stop") + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    fake.answer = answer
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1", port=llm_port)
    await server.start_server()
    try:
        yield fake
    finally:
        await server.close()


def audio_of(frames: list[AudioFrame], start: float, end: float) -> np.ndarray:
    return np.concatenate([f.samples for f in frames if start <= f.at <= end] or [np.zeros(0, np.int16)])


async def test_voice_agent(agent_stack: StackInfo, upstream: FakeOpenAI) -> None:
    option = CallOption(asr=TranscriptionOption(provider="local"), vad=VadOption(silence_padding=300))
    question, _ = with_silence(speech("What is the weather like today?"), 1.0)
    barge_in, _ = with_silence(speech("Sorry but what about tomorrow morning"), 1.0)
    loop = asyncio.get_running_loop()
    async with Client(agent_stack.base) as caller, caller.call(codec="pcm", option=option) as call:
        arrivals: dict[str, list[tuple[float, object]]] = {}

        async def watch() -> None:  # when each event reached the caller's socket
            async for ev in call.events(replay=False):
                arrivals.setdefault(ev.name, []).append((loop.time(), ev))

        said: deque[np.ndarray] = deque()

        async def microphone() -> None:  # a caller's microphone sends all along, silence between words
            while True:
                await call.send_audio(said.popleft() if said else np.zeros(1600, np.int16), sample_rate=16000)

        def say(audio: np.ndarray) -> None:
            said.extend(np.array_split(audio, max(1, len(audio) // 1600)))

        async with Client(agent_stack.base) as agent_client:
            ready = asyncio.Event()
            agent = Agent(agent_client, call.id, "gpt-test", "sk-caller")  # the fake takes any key
            serving = asyncio.create_task(agent.run(ready), name="test:agent")
            watching = asyncio.create_task(watch(), name="test:watch")
            talking = asyncio.create_task(microphone(), name="test:microphone")
            try:
                await asyncio.wait_for(ready.wait(), 5)
                audio = call.audio(replay=False)
                say(question)
                first = await call.wait_for(AsrFinal, timeout=10)
                start = await call.wait_for(TrackStart, track_id="server-side-track", timeout=10)
                await asyncio.sleep(2.5)  # the bot is in its first sentence
                position = call.position
                say(barge_in)
                speaking = await call.wait_for(Speaking, after=position, timeout=5)
                cut = await call.wait_for(Interruption, play_id=start.play_id, timeout=5)
                second = await call.wait_for(AsrFinal, after=position, timeout=10)
                again = await call.wait_for(
                    TrackStart, track_id="server-side-track", after=position, timeout=10
                )
                end = await call.wait_for(TrackEnd, play_id=again.play_id, timeout=15)
                await asyncio.sleep(0.3)
                frames = []
                with contextlib.suppress(TimeoutError):
                    while True:
                        frames.append(await asyncio.wait_for(audio.__anext__(), 0.2))
            finally:
                for task in (talking, watching):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await call.hangup()
                await asyncio.wait_for(serving, 10)
    assert end.play_id != start.play_id and "weather" in first.text.lower(), first.text
    assert "tomorrow" in second.text.lower(), second.text

    # Barge-in: from `speaking` reaching the caller to the last frame of the bot's voice it received.
    speaking_at = next(t for t, ev in arrivals["speaking"] if ev is speaking)
    cut_at = next(t for t, ev in arrivals["interruption"] if ev is cut)
    again_at = next(t for t, ev in arrivals["trackStart"] if ev is again)
    last_cut_frame = max(f.at for f in frames if f.at < again_at)
    lag = last_cut_frame - speaking_at
    print(
        f"barge-in: last bot frame {lag * 1000:.0f} ms after speaking (interruption at +"
        f"{(cut_at - speaking_at) * 1000:.0f} ms)"
    )
    assert lag <= 0.1, f"the bot spoke on for {lag * 1000:.0f} ms after the caller began"

    # What the caller heard: the first reply's opening, cut; then the whole second reply.
    heard_first = words(transcribe(audio_of(frames, 0, speaking_at)))
    heard_second = words(transcribe(audio_of(frames, again_at, loop.time())))
    # (Letters, not words: Whisper writes "the weather today is" as "the weather today's" as often as not.)
    assert "".join(heard_first).startswith("".join(words(LONG_REPLY)[:3])), heard_first
    assert len(heard_first) < len(words(LONG_REPLY)) // 2, heard_first
    assert "".join(words(SHORT_REPLY)) in "".join(heard_second), heard_second  # "good bye" is fine

    # The second request's history holds the part of the first reply the caller heard, not all of it.
    assert len(upstream.seen) == 2, [s.path for s in upstream.seen]
    messages = json.loads(upstream.seen[1].body)["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"], messages
    remembered = words(messages[2]["content"])
    assert remembered == words(LONG_REPLY)[: len(remembered)], remembered
    assert sum(1 for w in heard_first if w in remembered) >= 0.8 * len(heard_first), (heard_first, remembered)
    assert abs(len(remembered) - len(heard_first)) <= 3, (heard_first, remembered)
    assert messages[3]["content"] == second.text.strip()
    assert [m["content"] for m in agent.history[-2:]] == [second.text.strip(), SHORT_REPLY]
