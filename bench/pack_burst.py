"""How a burst of new calls spreads over the media processes with packing (docs/operations.md, "Packing").

Starts a stack (embedded Redis, 2 frontends, 2 media processes, MAX_CALLS 200), opens N calls at once (at
most 20 handshakes at a time, each playing a tone), and prints how many each media process took, for a
number of rounds on fresh stacks (the first burst after start-up is the hard case).

    .venv/bin/python -m bench.pack_burst --calls 120 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
from pathlib import Path

from tests.e2e.conftest import running_stack
from tests.e2e.load import CallLoad


async def burst(ws: str, redis_url: str, tmp: Path, calls: int) -> list[int]:
    load = CallLoad(ws, redis_url, tmp)
    try:
        opened = await load.start(calls, "burst")
        return sorted(collections.Counter(c.owner for c in opened).values(), reverse=True)
    finally:
        await load.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for i in range(args.rounds):
        tmp = Path(tempfile.mkdtemp(prefix="pack-burst-"))
        with running_stack(tmp, 2, 2, MAX_CALLS="200") as info:
            split = asyncio.run(burst(info.ws, info.redis_url, tmp, args.calls))
        print(f"round {i + 1}: {args.calls} calls per media process: {split}", flush=True)


if __name__ == "__main__":
    main()
