"""Hypothesis profiles for the fuzz tests, and the running stack the e2e fuzz tests attack.

`HYPOTHESIS_PROFILE=ci` (the default) keeps the whole directory well under two minutes on two busy cores
while still running several thousand cases, always the same ones (derandomized: a failure here is a bug, not
bad luck); `long` (`./scripts/fuzz`) runs a hundred times as many, randomly, without deadlines. Nothing is
written to a hypothesis database: a failure prints its example and the blob that reproduces it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.e2e.conftest import StackInfo, running_stack
from tests.fuzz import stack_probe
from tests.fuzz.stack_probe import Loop

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
# Generating big strings and deep values is slow by design; the e2e examples wait for a real server.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

settings.register_profile(
    "ci",
    max_examples=100,
    database=None,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=_QUIET,
)
settings.register_profile(
    "long", max_examples=10_000, database=None, deadline=None, print_blob=True, suppress_health_check=_QUIET
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def scale(n: int) -> int:
    """`n` examples under the ci profile, a hundred times as many under long."""
    return n * 100 if LONG else n


@pytest.fixture(scope="session")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    """tests/e2e's session stack (2 frontends, 2 media processes), its own so that whatever the fuzzing
    leaves behind cannot disturb other tests, with the LLM proxy pointed at a closed local port."""
    # Bound but not listening: connections to it are refused, and nothing else can take the port meanwhile.
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    root = tmp_path_factory.mktemp("fuzz")
    stack_probe.STACK_LOG = root / "stack.log"  # every process's output; a failed check shows its end
    with (
        closed,
        running_stack(
            root,
            2,
            2,
            log=stack_probe.STACK_LOG,
            MAX_CALLS="100",
            PBX_CLAIM_TIMEOUT="5",
            OPENAI_BASE_URL=f"http://127.0.0.1:{closed.getsockname()[1]}/v1",
            OPENAI_API_KEY="sk-fuzz-not-a-key",
            # The fuzzers send as fast as they can; the per-socket rate limits are not what they test, nor is
            # the per-address limit on new calls (every fuzzed call comes from 127.0.0.1): far out of reach.
            WS_MAX_COMMANDS_PER_SEC="100000",
            WS_MAX_AUDIO_FRAMES_PER_SEC="100000",
            CALLS_PER_IP_PER_MIN="1000000",
            CALLS_PER_IP_BURST="1000000",
            LOG_LEVEL=os.environ.get("PBX_FUZZ_LOG_LEVEL", "WARNING"),
            # As exposed: nothing the fuzzers send may make the server reach a private address.
            ALLOW_PRIVATE_URLS="0",
        ) as info,
    ):
        yield info


@pytest.fixture(scope="module")
def fuzz_loop() -> Iterator[Loop]:
    """The event loop of a module's e2e examples."""
    runner = Loop()
    try:
        yield runner
    finally:
        runner.close()
