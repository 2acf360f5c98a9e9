"""What a stack with no calls costs: CPU per process (user and system) over a quiet window.

    .venv/bin/python -m bench.idle                  # the default layout, 20 s
    .venv/bin/python -m bench.idle --seconds 60 --media 2 --web 1

The fixed cost every call-second pays its share of: at 50 calls, each 1 % of a core idle is 0.2 ms per
call-second of `bench/plane.py`'s figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path

import psutil

from bench.calls import stack_processes
from bench.plane import role, settle
from bench.stackutil import start_stack
from common.config import default_web_concurrency


def cpu_times(procs: list[psutil.Process]) -> dict[int, tuple[float, float]]:
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = (t.user, t.system)
    return out


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _base, stack = await start_stack(args.web, args.media, 100, Path(tmp))
        try:
            roots = [p.pid for p in (stack.web, stack.worker, stack.redis and stack.redis.proc) if p]
            await settle(roots)
            procs = stack_processes(roots)
            names = {}
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    names[p.pid] = role(p)  # other: the supervisor (and gunicorn's arbiter is a frontend)
            before, t0 = cpu_times(procs), time.monotonic()
            await asyncio.sleep(args.seconds)
            after, wall = cpu_times(procs), time.monotonic() - t0
        finally:
            stack.stop()
    print(f"idle stack, {args.web} frontend(s) + {args.media} media processes, {wall:.0f} s, % of a core:")
    print("| process | pid | user | system |")
    print("|---|---|---|---|")
    total = 0.0
    for p in procs:
        if p.pid not in before or p.pid not in after:
            continue
        user = (after[p.pid][0] - before[p.pid][0]) / wall * 100
        system = (after[p.pid][1] - before[p.pid][1]) / wall * 100
        total += user + system
        print(f"| {names.get(p.pid, '?')} | {p.pid} | {user:.2f} | {system:.2f} |")
    print(f"total {total:.2f} % of a core = {total / 100 / 50 * 1000:.2f} ms per call-second at 50 calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--web", type=int, default=default_web_concurrency(os.cpu_count() or 1))
    parser.add_argument("--media", type=int, default=2)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
