"""The enumerated values of the API's options, one list each.

The frontend refuses any other value at the edge (common/protocol.py, with an error naming the field); the
media process picks its engine, provider or codec from the same lists. Values are compared in lower case, as
RustPBX does.
"""

from __future__ import annotations

# `option.codec`: the socket audio of a `/call` (websocket) call.
CODECS = ("pcm", "pcmu", "pcma", "g722")
# `option.vad.type` (none: webrtc).
VAD_TYPES = ("webrtc", "silero", "ten")
# `option.asr.provider` (none: local).
ASR_PROVIDERS = ("local", "tencent", "voiceapi")
# `option.tts.provider`, a `tts` command's `option.provider` (none: the call's, else local).
TTS_PROVIDERS = ("local", "tencent", "voiceapi")
# `option.eou.type` (none: local).
EOU_TYPES = ("local", "tencent", "smart_turn")
# `option.vad.bargeIn.act` (none: event): ours, whether the server acts on its own barge-in decisions.
BARGE_IN_ACTS = ("event", "interrupt")
# `option.mediaPass.dialect` (none: raw, RustPBX's): ours, "twilio" speaks Media Streams.
MEDIA_PASS_DIALECTS = ("raw", "twilio")
