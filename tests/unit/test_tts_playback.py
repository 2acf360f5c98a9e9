"""TTS playout and the text rules around it: segments in order, waiting, interruption figures, sentences."""

from __future__ import annotations

import time

import numpy as np

from common.protocol import SynthesisOption
from tests.audio_util import peak_freq, tone
from worker.call.speaking import cache_file, merge
from worker.media.tts_player import Segment, TtsPlayer
from worker.speech.local_tts import pieces
from worker.speech.tts import MAX_UNENDED, SentenceSplitter, Subtitle, strip_emoji


def drain(player: TtsPlayer, ticks: int) -> list[np.ndarray | None]:
    return [player.next_frame() for _ in range(ticks)]


def test_segments_play_in_order_and_wait_for_audio() -> None:
    player = TtsPlayer()
    first, second = Segment(seq=0, text="a"), Segment(seq=1, text="b")
    player.add(first)
    player.add(second)
    second.add(np.full(640, 2, dtype=np.int16), 16000)  # the second is synthesized first
    second.finish()
    assert drain(player, 3) == [None, None, None], "nothing plays ahead of the first segment"
    assert not player.finished
    first.add(np.full(500, 1, dtype=np.int16), 16000)
    frame = player.next_frame()
    assert frame is not None and (frame == 1).all()
    assert player.next_frame() is None, "a partial frame waits while the segment may still grow"
    first.finish()
    tail = player.next_frame()
    assert tail is not None and (tail[:180] == 1).all() and (tail[180:] == 0).all(), "the end is zero-padded"
    frames = drain(player, 3)
    assert [f is not None and (f == 2).all() for f in frames] == [True, True, False]
    assert player.finished and player.frames_sent == 4


def test_interruption_reports_what_was_heard() -> None:
    player = TtsPlayer()
    seg = Segment(seq=0, text="hello world")
    seg.subtitles = [Subtitle("hello", 0, 300, 0, 5), Subtitle("world", 300, 700, 6, 11)]
    player.add(seg)
    seg.add(np.zeros(16000, dtype=np.int16), 16000)  # 1 s synthesized
    drain(player, 20)  # 400 ms heard
    cut = player.interruption()
    assert cut == {"subtitle": "hello world", "current": 400, "total_duration": 1000, "position": 6}


def test_failed_segment_ends_the_track_after_what_came_before() -> None:
    player = TtsPlayer()
    ok, bad = Segment(seq=0, text="ok"), Segment(seq=1, text="bad")
    player.add(ok)
    player.add(bad)
    ok.add(np.ones(320, dtype=np.int16), 16000)
    ok.finish()
    bad.failed = True
    bad.finish()
    assert player.next_frame() is not None
    assert player.next_frame() is None and player.finished


def test_graceful_stop_keeps_only_the_current_segment() -> None:
    player = TtsPlayer()
    segs = [Segment(seq=i, text=str(i)) for i in range(3)]
    for s in segs:
        player.add(s)
        s.add(np.ones(640, dtype=np.int16), 16000)
        s.finish()
    player.next_frame()
    player.graceful_stop()
    player.add(Segment(seq=9, text="late"))
    assert drain(player, 3)[0] is not None
    assert player.finished and player.frames_sent == 2


def test_other_rates_are_resampled_to_16k() -> None:
    seg = Segment(seq=0, text="")
    audio = tone(1000, 1.0, rate=24000)
    for i in range(0, len(audio), 999):
        seg.add(audio[i : i + 999], 24000)
    seg.finish()
    out = np.frombuffer(bytes(seg.audio), dtype="<i2")
    assert abs(len(out) - 16000) <= 32
    assert abs(peak_freq(out[1000:15000]) - 1000) < 5


def test_sentence_splitter_cuts_streamed_text() -> None:
    split = SentenceSplitter()
    assert split.push("Sure. I can ") == ["Sure."]
    assert split.push("book it. 3.5 stars") == ["I can book it."]
    assert split.push("! 好的。再见") == ["3.5 stars!", "好的。"]
    assert split.flush() == ["再见"] and split.flush() == []


def test_sentence_splitter_takes_thousands_of_tokens_in_linear_time() -> None:
    split = SentenceSplitter()
    words = [f" w{i}" for i in range(40_000)]  # a reply with no sentence end: 200,000 characters
    start = time.perf_counter()
    out = [s for w in words for s in split.push(w)] + split.flush()
    took = time.perf_counter() - start
    assert took < 1.0, f"{took:.2f} s: each token must not rescan what is held (quadratic: ~60 s)"
    assert " ".join(out).split() == "".join(words).split(), "every word, whole, once, in order"
    assert all(len(s) <= MAX_UNENDED for s in out), "held text is spoken once it is this long"
    split = SentenceSplitter()
    pieces = [s for c in "One. Two! Three? Four; five\nsix. " * 500 for s in split.push(c)]
    assert pieces[:6] == ["One.", "Two!", "Three?", "Four;", "five", "six."] and len(pieces) == 3000


def test_emoji_are_stripped() -> None:
    assert strip_emoji("Great 😀👍🏽!") == "Great!"
    assert strip_emoji("I ❤️ it 🇫🇷 ok") == "I it ok"
    assert strip_emoji("no emoji here, café ¿qué? 你好") == "no emoji here, café ¿qué? 你好"


def test_option_merge_and_cache_key() -> None:
    call = SynthesisOption(provider="tencent", speaker="101001", speed=1.0, secret_key="k")
    merged = merge(call, SynthesisOption(speed=1.5, volume=3), "601003")
    assert (merged.provider, merged.speaker, merged.speed, merged.volume, merged.secret_key) == (
        "tencent",
        "601003",
        1.5,
        3,
        "k",
    )
    assert merge(None, None, None) == SynthesisOption()
    a = cache_file("/c", "local", "hi", merged, None)
    assert a == cache_file("/c", "local", "hi", merged, None)
    assert a != cache_file("/c", "local", "hi", merge(merged, SynthesisOption(speed=1.0), None), None)
    assert a != cache_file("/c", "tencent", "hi", merged, None)
    assert cache_file("/c", "x", "y", merged, "greeting-v1") == cache_file(
        "/c", "z", "w", call, "greeting-v1"
    )


def test_texts_are_synthesized_in_sentences_the_first_long_one_cut_at_a_clause() -> None:
    assert pieces("Hi there. How are you?") == ["Hi there.", "How are you?"]
    assert pieces("Thank you for calling, we will be with you in just a moment. Bye.") == [
        "Thank you for calling,",
        "we will be with you in just a moment.",
        "Bye.",
    ]
    assert pieces("  ") == []
