"""What a resumable call holds for its next socket (worker/call/resume.py)."""

from __future__ import annotations

from common.protocol import ResumeOption
from worker.call.resume import MAX_HELD, RING, Resumption


def ev(n: int) -> dict[str, object]:
    return {"event": "addHistory", "text": str(n)}


def test_the_events_the_old_socket_did_not_write_come_first_then_the_held_ones() -> None:
    r = Resumption("c1")
    r.configure(ResumeOption(timeout=5))
    for n in range(5):
        r.sent(ev(n))
    r.detach(written=3)  # its frontend wrote 0, 1, 2
    assert r.detached
    r.hold(ev(5))
    assert r.attach() == [ev(3), ev(4), ev(5)]
    assert not r.detached
    r.sent(ev(6))
    r.detach(written=1)
    assert r.attach() == [], "counted from the new socket's start: all of it written"


def test_a_dead_frontend_or_an_old_count_loses_rather_than_repeats() -> None:
    r = Resumption("c1")
    r.configure(ResumeOption(timeout=5))
    for n in range(3):
        r.sent(ev(n))
    r.detach(written=None)
    assert r.attach() == [], "a frontend that died says nothing: nothing is sent twice"
    for n in range(RING + 10):
        r.sent(ev(n))
    r.detach(written=0)
    assert len(r.attach()) == RING, "no more than the ring remembers"


def test_held_events_are_bounded_with_a_note() -> None:
    r = Resumption("c1")
    r.configure(ResumeOption(timeout=5))
    r.detach(written=0)
    for n in range(MAX_HELD + 3):
        r.hold(ev(n))
    held = r.attach()
    assert len(held) == MAX_HELD + 1
    assert held[-1]["event"] == "error" and "3 events were dropped" in str(held[-1]["error"])
