"""VoiceAPI speech recognition (provider `voiceapi`; the sherpa-onnx server of github.com/ruzhila/voiceapi).

Protocol: a WebSocket at `<endpoint>/asr?samplerate=16000`; binary 16 kHz s16le audio out, JSON
`{"text", "finished", "idx"}` in (`finished` closes sentence `idx`). The service sends no times, so a
sentence is stamped on the call's audio clock: it starts with the first audio sent after the previous
sentence ended and ends with the last audio sent before its final text arrived.
"""

from __future__ import annotations

from typing import Any

from worker.speech.asr import Transcript
from worker.speech.endpoints import split_endpoint
from worker.speech.ws_asr import StreamingAsr

DEFAULT_ENDPOINT = "ws://localhost:8000"


class VoiceApiAsr(StreamingAsr):
    provider = "voiceapi"

    _sentence_start: int | None = None

    def endpoint(self) -> str:
        return self.option.endpoint or self.context.voiceapi_endpoint or DEFAULT_ENDPOINT

    def check(self) -> None:
        split_endpoint(self.endpoint(), "", "option.asr.endpoint")

    def url(self) -> str:
        scheme, host, prefix = split_endpoint(self.endpoint(), "", "option.asr.endpoint")
        return f"{scheme}://{host}{prefix}/asr?samplerate=16000"  # the caller track is 16 kHz

    def parse(self, message: dict[str, Any]) -> Transcript | None:
        text = message.get("text")
        if not isinstance(text, str):
            return None
        final = bool(message.get("finished"))
        if not text and not final:
            return None
        start = self._sentence_start if self._sentence_start is not None else self.stream_start_ms
        end = self.last_audio_ms
        if final:
            self._sentence_start = end
        idx = message.get("idx")
        return Transcript(
            text=text, index=idx if isinstance(idx, int) else 0, final=final, start_ms=start, end_ms=end
        )
