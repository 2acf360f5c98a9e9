"""Dial a list of SIP numbers, a few at a time, and sort out who answered: a person (a short first
utterance: "hello?") hears a message; an answering machine (a first utterance longer than
`--machine-after`) or a silent line is hung up on. One CSV row per number: number, result (rejected,
no_answer, failed, silent, human, machine), code, talk_ms (the first utterance), seconds.

    python examples/outbound_dialer.py --server http://localhost:8080 --csv out.csv \\
        sip:100@pbx.example.com sip:101@pbx.example.com sip:102@pbx.example.com
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import time
from typing import Any

from pbxclient import CallEnded, CallOption, CallRejected, Client, Reject, Silence, Speaking, VadOption

FIELDS = ["number", "result", "code", "talk_ms", "seconds"]


async def dial(client: Client, number: str, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"number": number, "result": "failed", "code": "", "talk_ms": "", "seconds": ""}
    started = time.monotonic()
    try:
        option = CallOption(vad=VadOption(type="webrtc"))
        ring = args.ring_timeout
        call = await client.sip_call(number, caller=args.caller, option=option, ring_timeout=ring)
    except CallRejected as exc:
        code = exc.event.code if isinstance(exc.event, Reject) else None
        row.update(result="no_answer" if code == 408 else "rejected", code=code or "")
    else:
        async with call:  # hangs up on the way out unless the call already ended
            try:
                await call.wait_for(Speaking, timeout=args.listen)
            except TimeoutError:
                row["result"] = "silent"
            except CallEnded:
                row["result"] = "failed"
            else:
                # The end of the first utterance; a greeting longer than a person's "hello?" is a machine's.
                try:
                    said = await call.wait_for(Silence, timeout=args.machine_after, track_id=call.id)
                    row.update(result="human", talk_ms=said.duration)
                    await call.tts(args.message, play_id="message", auto_hangup=True)
                    await call.wait_ended(timeout=60)
                except TimeoutError:
                    row["result"] = "machine"
                except CallEnded:
                    row["result"] = "human"
    row["seconds"] = round(time.monotonic() - started, 1)
    print(f"{number}: {row['result']}", flush=True)
    return row


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    limit = asyncio.Semaphore(args.concurrency)
    async with Client(args.server, token=args.token) as client:

        async def one(number: str) -> dict[str, Any]:
            async with limit:
                return await dial(client, number, args)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(n), name=f"dial:{n}") for n in args.numbers]
    return [t.result() for t in tasks]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("numbers", nargs="+", help="SIP URIs to call")
    parser.add_argument("--server", required=True, help="the call server, e.g. http://localhost:8080")
    parser.add_argument("--token", default=None, help="the server's API_TOKEN, if it has one")
    parser.add_argument("--csv", default="results.csv", help="where the results go")
    parser.add_argument("--concurrency", type=int, default=2, help="calls at once")
    parser.add_argument("--caller", default=None, help="the From URI")
    parser.add_argument("--ring-timeout", type=float, default=30.0, help="seconds to let it ring")
    parser.add_argument("--listen", type=float, default=5.0, help="seconds to wait for a voice after answer")
    parser.add_argument("--machine-after", type=float, default=4.0, help="a greeting this long is a machine")
    parser.add_argument("--message", default="Hello! This is a reminder of your visit tomorrow. Goodbye!")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args))
    with open(args.csv, "w", newline="") as out:
        writer = csv.DictWriter(out, FIELDS)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
