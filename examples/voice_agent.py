"""A voice agent: the caller's words (ASR) go to an LLM, its reply is spoken as it streams, and the caller
cuts it short by talking (barge-in).

It serves a call someone else opened (the playground page, a SIP phone) with `option.asr` and `option.vad`:
events from `GET /events/{id}`, commands by `POST /command/{id}`; the call's audio never passes through
here. The LLM is reached with the official `openai` client through the server's `/llm/v1` proxy (to the
server's OPENAI_BASE_URL), with your OPENAI_API_KEY, or with the server's own key when you give its API token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from pbxclient import AsrFinal, Client, Interruption, PbxClientError, Speaking, TrackEnd, TrackStart
from pbxclient.commands import Interrupt, Tts

SYSTEM = "You are a friendly voice assistant on a phone call. Answer in one to three short sentences."


def heard_part(reply: str, cut: Interruption) -> str:
    """The part of `reply` the caller heard: the sentences before the one cut, and as many of that one's
    words as the played share of its audio (`current` of `totalDuration` ms)."""
    segment = (cut.subtitle or "").strip()
    at = reply.find(segment) if segment else -1
    words = segment.split()
    n = round(len(words) * cut.current / cut.total_duration) if cut.total_duration else 0
    return (reply[: max(at, 0)] + " ".join(words[:n])).strip()


class Agent:
    """One call's conversation: the message history and the reply being spoken."""

    def __init__(self, client: Client, call_id: str, model: str, api_key: str) -> None:
        self.client, self.call_id, self.model = client, call_id, model
        # The server's API token as the key makes its proxy send the server's own key upstream.
        self.llm_client = openai.AsyncOpenAI(base_url=f"{client.base_url}/llm/v1", api_key=api_key)
        self.history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
        self.replies: dict[str, dict[str, str]] = {}  # playId -> its assistant message in `history`
        self.playing: str | None = None  # the playId of our track while it plays
        self.task: asyncio.Task[None] | None = None

    async def llm(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        """The reply's text as the model streams it."""
        chat = cast("list[ChatCompletionMessageParam]", messages)  # role/content dicts, as the API takes
        stream = await self.llm_client.chat.completions.create(model=self.model, messages=chat, stream=True)
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    yield choice.delta.content

    async def speak(self, play_id: str, messages: list[dict[str, str]], reply: dict[str, str]) -> None:
        """Relay the reply token by token as one streamed `tts` track, closed by `endOfStream`."""
        try:
            async for piece in self.llm(messages):
                reply["content"] += piece
                await self.client.send_command(self.call_id, Tts(text=piece, play_id=play_id, streaming=True))
        except (openai.OpenAIError, PbxClientError) as exc:  # the model or the call went away
            print(f"{play_id}: cut short: {exc!r}")
        with contextlib.suppress(PbxClientError):
            await self.client.send_command(self.call_id, Tts(text="", play_id=play_id, end_of_stream=True))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Serve the call until it ends."""
        async with self.client.events(self.call_id) as stream:
            if ready is not None:
                ready.set()
            async for ev in stream:
                if isinstance(ev, AsrFinal) and ev.text.strip():
                    await self.stop()
                    self.history.append({"role": "user", "content": ev.text.strip()})
                    play_id, reply = f"reply-{len(self.history)}", {"role": "assistant", "content": ""}
                    speak = self.speak(play_id, list(self.history), reply)
                    self.task = asyncio.create_task(speak, name=f"agent:{play_id}")
                    self.history.append(reply)
                    self.replies[play_id] = reply
                elif isinstance(ev, Speaking) and self.playing:
                    # Barge-in: the caller talks over the reply. Stop the model and the voice at once.
                    await self.client.send_command(self.call_id, Interrupt())
                    await self.stop()
                elif isinstance(ev, TrackStart) and (ev.play_id or "").startswith("reply-"):
                    self.playing = ev.play_id
                elif isinstance(ev, TrackEnd) and ev.play_id == self.playing:
                    self.playing = None
                elif isinstance(ev, Interruption) and (said := self.replies.get(ev.play_id or "")):
                    # Words the caller never heard would make the model "remember" having said them.
                    said["content"] = heard_part(said["content"], ev)
                    if not said["content"]:
                        self.history.remove(said)
        await self.stop()


async def main(server: str, call_id: str | None, token: str | None, model: str) -> None:
    api_key = os.environ.get("OPENAI_API_KEY") or token
    if not api_key:
        raise SystemExit("set OPENAI_API_KEY, or give the server's API token with --token")
    async with Client(server, token=token) as client:
        if call_id is None:
            known = {c.id for c in await client.list_calls()}
            print("waiting for a call (open the playground and start one with VAD and ASR)...")
            while call_id is None:
                await asyncio.sleep(0.5)
                call_id = next((c.id for c in await client.list_calls() if c.id not in known), None)
        print(f"serving call {call_id}")
        await Agent(client, call_id, model, api_key).run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://localhost:8080")
    parser.add_argument("--call", help="the call id to serve (default: the next call that starts)")
    parser.add_argument("--token", help="the server's API_TOKEN, if it has one")
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()
    asyncio.run(main(args.server, args.call, args.token, args.model))
