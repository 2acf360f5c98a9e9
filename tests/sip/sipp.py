"""Drive SIPp (Debian's sip-tester, /usr/bin/sipp 3.6) from asyncio tests.

A `Sipp` runs one sipp process with a scenario of `tests/sip/scenarios/` (or any XML file) on 127.0.0.1:
a UAS when no `remote` is given, a UAC calling `remote` otherwise. Its SIP port, RTP port and control
port are picked free, every trace goes into a work directory, and `wait()` / `stop()` hand back a
`SippResult`: exit code, successful and failed call counts, and the texts of the traces, with the SIP
messages parsed for assertions.

    async with Sipp("uas_answer") as uas:
        uac = await run_uac("uac_call", uas.address, variables={"hold_ms": 500})
        server = await uas.wait(timeout=10)
    server.assert_ok()
    assert server.received("INVITE")[0].header("X-Test") == "sipp"

Scenario variables are SIPp globals set with `-set` (`variables=`); each scenario declares and defaults
its own (see the comment at the top of each file). Scenarios that play a pcap need root or CAP_NET_RAW:
SIPp sends pcap RTP through a raw socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TypedDict, Unpack

SIPP = "/usr/bin/sipp"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
HOST = "127.0.0.1"

# Ports handed out by this process, so two instances created back to back never get the same one
# before either has bound it.
_handed_out: set[int] = set()


class SippError(AssertionError):
    """SIPp did not start, or did not finish in time; the message is the run's report."""

    def __init__(self, message: str, result: SippResult | None = None) -> None:
        super().__init__(message if result is None else f"{message}\n{result.report()}")
        self.result = result


# --- ports ---------------------------------------------------------------------------------------------


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def free_udp_port(host: str = HOST) -> int:
    """A UDP port on `host` that nothing is bound to now (and that this process has not handed out)."""
    for _ in range(200):
        port = _ephemeral(host)
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free UDP port")


def free_media_port(host: str = HOST) -> int:
    """An even UDP port P with P..P+3 free: SIPp binds P for audio and P+2 for video (RTCP is +1)."""
    for _ in range(200):
        base = _ephemeral(host) & ~1
        span = range(base, base + 4)
        if base + 3 <= 65535 and not _handed_out.intersection(span) and all(_bindable(host, p) for p in span):
            _handed_out.update(span)
            return base
    raise RuntimeError("no free UDP port range for media")


def _udp_bound(host: str, port: int) -> bool:
    """Whether some socket is bound to UDP `host`:`port`, read from /proc so as not to race its owner."""
    packed = socket.inet_aton(host)
    wanted = {f"{int.from_bytes(packed, 'little'):08X}:{port:04X}", f"00000000:{port:04X}"}
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return not _bindable(host, port)
    return any(line.split()[1] in wanted for line in lines if len(line.split()) > 1)


# --- traces ----------------------------------------------------------------------------------------------

_COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "e": "content-encoding",
    "k": "supported",
    "s": "subject",
    "r": "refer-to",
    "b": "referred-by",
    "o": "event",
    "u": "allow-events",
}
_ENTRY = re.compile(
    rb"^-{47} (?P<stamp>[^\n]*)\n\w+ message (?P<direction>sent|received) [(\[](?P<size>\d+)[^\n]*\n\n",
    re.MULTILINE,
)


@dataclass(frozen=True)
class TracedMessage:
    """One SIP message of a -trace_msg log, as SIPp sent or received it."""

    direction: str  # "sent" or "received"
    text: str
    at: float | None = None  # when SIPp logged it: seconds since the epoch (SIPp writes local time)

    @property
    def start_line(self) -> str:
        return self.text.split("\r\n", 1)[0].split("\n", 1)[0].strip()

    @property
    def status(self) -> int | None:
        """The status code of a response, None for a request."""
        parts = self.start_line.split(" ", 2)
        if parts[0] == "SIP/2.0" and len(parts) > 1 and parts[1].isdigit():
            return int(parts[1])
        return None

    @property
    def method(self) -> str | None:
        """The method of a request, None for a response."""
        words = self.start_line.split()
        if not words or words[0].startswith("SIP/"):
            return None
        return words[0]

    @property
    def cseq_method(self) -> str | None:
        cseq = self.header("CSeq")
        return cseq.split()[-1] if cseq else None

    def _head_and_body(self) -> tuple[list[str], str]:
        head, body = self.text, ""
        for blank in ("\r\n\r\n", "\n\n"):
            if blank in self.text:
                head, body = self.text.split(blank, 1)
                break
        lines: list[str] = []
        for line in head.splitlines()[1:]:
            if line[:1] in (" ", "\t") and lines:  # folded header line
                lines[-1] += " " + line.strip()
            elif line:
                lines.append(line)
        return lines, body

    def headers(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive; compact forms count), in order."""
        wanted = name.lower()
        values = []
        for line in self._head_and_body()[0]:
            key, sep, value = line.partition(":")
            key = key.strip().lower()
            if sep and (key == wanted or _COMPACT.get(key) == wanted):
                values.append(value.strip())
        return values

    def header(self, name: str) -> str | None:
        """The first value of header `name`, or None."""
        values = self.headers(name)
        return values[0] if values else None

    @property
    def body(self) -> str:
        """The body, line ends as sent."""
        return self._head_and_body()[1]

    def is_(self, kind: str | int) -> bool:
        """Whether this is a request of method `kind` (str) or a response with status `kind` (int)."""
        return self.status == kind if isinstance(kind, int) else self.method == kind.upper()


def _stamp(raw: bytes) -> float | None:
    """`2026-12-03 22:23:02.796582` (SIPp's local time) as epoch seconds; None if it is not that."""
    try:
        return datetime.strptime(raw.decode().strip(), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def parse_trace(raw: bytes) -> list[TracedMessage]:
    """The SIP messages of a SIPp -trace_msg log, in order (other entries of the log are skipped)."""
    out = []
    for m in _ENTRY.finditer(raw):
        data = raw[m.end() : m.end() + int(m["size"])]
        out.append(
            TracedMessage(m["direction"].decode(), data.decode("utf-8", "replace"), _stamp(m["stamp"]))
        )
    return out


def digest_ok(request: TracedMessage, username: str, password: str) -> bool:
    """Whether the request's (Proxy-)Authorization carries a right RFC 2617 MD5 digest for these credentials.

    SIPp 3.6's <verifyauth> never reads Proxy-Authorization, so uas_challenge leaves the 407 case to this.
    """
    credentials = request.header("Proxy-Authorization") or request.header("Authorization")
    if not credentials or not credentials.lower().startswith("digest "):
        return False
    pairs = re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', credentials[7:])
    params = {key.lower(): quoted or bare for key, quoted, bare in pairs}
    if params.get("username") != username or request.method is None:
        return False

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{username}:{params.get('realm', '')}:{password}")
    ha2 = md5(f"{request.method}:{params.get('uri', '')}")
    if params.get("qop"):
        expected = md5(
            f"{ha1}:{params.get('nonce', '')}:{params.get('nc', '')}:{params.get('cnonce', '')}:"
            f"{params['qop']}:{ha2}"
        )
    else:
        expected = md5(f"{ha1}:{params.get('nonce', '')}:{ha2}")
    return params.get("response", "").lower() == expected


# --- results ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SippResult:
    """How a SIPp run ended, with the texts of its traces."""

    command: tuple[str, ...]
    returncode: int  # 0: all calls succeeded, 1: some failed, 97: internal stop, 255 (-1): fatal error
    successful: int
    failed: int
    calls: int  # the number of calls asked for (-m)
    messages: str  # -trace_msg: every SIP message sent and received
    errors: str  # -trace_err: unexpected messages, failed checks, timeouts
    logs: str  # -trace_logs: the scenario's <log> actions
    screen: str  # -trace_screen: the final screens (scenario counters, statistics)
    output: str  # stdout and stderr
    trace: tuple[TracedMessage, ...]

    @property
    def ok(self) -> bool:
        """Exit code 0, no failed call and every call asked for successful."""
        return self.returncode == 0 and self.failed == 0 and self.successful >= self.calls

    def received(self, kind: str | int | None = None) -> list[TracedMessage]:
        """Messages received: all, or the requests of method `kind` (str) or responses `kind` (int)."""
        return [m for m in self.trace if m.direction == "received" and (kind is None or m.is_(kind))]

    def sent(self, kind: str | int | None = None) -> list[TracedMessage]:
        """Messages sent: all, or the requests of method `kind` (str) or responses `kind` (int)."""
        return [m for m in self.trace if m.direction == "sent" and (kind is None or m.is_(kind))]

    def report(self, limit: int = 20000) -> str:
        """A readable account of the run for a failing assertion: command, counts, errors, traces."""
        hint = ""
        if "need to run as root" in self.output + self.errors:
            hint = "\n(pcap play needs a raw socket: run as root or `setcap cap_net_raw+ep /usr/bin/sipp`)"
        output = "\n".join(line for line in self.output.splitlines() if line.strip())[-3000:]
        return (
            f"sipp {' '.join(self.command[1:])}\n"
            f"exit code {self.returncode}, {self.successful} successful / {self.failed} failed "
            f"of {self.calls} call(s){hint}\n"
            f"--- errors ---\n{self.errors[-limit:]}\n"
            f"--- logs ---\n{self.logs[-limit:]}\n"
            f"--- output (tail) ---\n{output}\n"
            f"--- messages ---\n{self.messages[-limit:]}"
        )

    def assert_ok(self) -> SippResult:
        """Raise an AssertionError carrying the report unless the run is `ok`; the result otherwise."""
        if not self.ok:
            raise AssertionError(f"SIPp run failed\n{self.report()}")
        return self


def _counts(stat_csv: Path, screen: str) -> tuple[int, int]:
    """Cumulative successful and failed calls: from the last row of -trace_stat, else the final screen."""
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        with stat_csv.open(newline="", encoding="latin-1") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
        last = rows[-1]
        return int(last["SuccessfulCall(C)"]), int(last["FailedCall(C)"])
    found = [
        int(m[1])
        for name in ("Successful call", "Failed call")
        for m in re.findall(rf"^\s*{name}\s*\|[^|]*\|\s*(\d+)", screen, re.MULTILINE)[-1:]
    ]
    return (found[0], found[1]) if len(found) == 2 else (0, 0)


# --- the process -----------------------------------------------------------------------------------------


def scenario_path(scenario: str | os.PathLike[str]) -> Path:
    """A scenario of tests/sip/scenarios by name ("uas_answer" or "uas_answer.xml"), or any file path."""
    path = Path(scenario)
    if path.suffix != ".xml":
        path = path.with_name(path.name + ".xml")
    if not path.is_absolute() and not path.exists():
        path = SCENARIOS / path
    if not path.is_file():
        raise FileNotFoundError(f"no SIPp scenario {scenario!s} (looked in {SCENARIOS})")
    return path.resolve()


class Sipp:
    """One SIPp process: a UAS (no `remote`) or a UAC calling `remote`, on free ports of 127.0.0.1.

    `variables` become `-set NAME VALUE` (the scenarios' parameters), `keys` become `-key NAME VALUE`
    ([NAME] in messages; SIPp refuses a scenario that uses a key not given). `auth` is the UAC's
    (-au, -ap) for [authentication]. `timeout` (seconds) is SIPp's global -timeout, after which it gives
    up and fails (-timeout_error). Traces go into `workdir` (a fresh temporary directory by default,
    removed on close)."""

    def __init__(
        self,
        scenario: str | os.PathLike[str],
        *,
        remote: str | tuple[str, int] | None = None,
        service: str | None = None,
        calls: int = 1,
        limit: int | None = None,
        rate: float | None = None,
        rate_period_ms: int | None = None,
        variables: Mapping[str, object] | None = None,
        keys: Mapping[str, object] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float = 30.0,
        host: str = HOST,
        port: int | None = None,
        media_port: int | None = None,
        extra_args: Sequence[str] = (),
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.scenario = scenario_path(scenario)
        self.host = host
        self.port = port or free_udp_port(host)
        self.media_port = media_port or free_media_port(host)
        self.control_port = free_udp_port(host)
        self.remote = f"{remote[0]}:{remote[1]}" if isinstance(remote, tuple) else remote
        self.service = service
        self.calls = calls
        self.timeout = timeout
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="sipp-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.command = self._command(
            limit, rate, rate_period_ms, variables or {}, keys or {}, auth, extra_args
        )
        self._process: asyncio.subprocess.Process | None = None
        self._output: int | None = None
        self._result: SippResult | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where this SIPp takes SIP requests."""
        return (self.host, self.port)

    @property
    def uri(self) -> str:
        """A SIP URI that reaches this SIPp (its -s service as the user part)."""
        return f"sip:{self.service or 'service'}@{self.host}:{self.port}"

    def _file(self, name: str) -> Path:
        return self.workdir / name

    def _command(
        self,
        limit: int | None,
        rate: float | None,
        rate_period_ms: int | None,
        variables: Mapping[str, object],
        keys: Mapping[str, object],
        auth: tuple[str, str] | None,
        extra_args: Sequence[str],
    ) -> list[str]:
        cmd = [shutil.which("sipp") or SIPP]
        if self.remote:
            cmd.append(self.remote)
        cmd += ["-sf", str(self.scenario), "-i", self.host, "-mi", self.host, "-bind_local"]
        cmd += ["-p", str(self.port), "-mp", str(self.media_port)]
        cmd += ["-ci", self.host, "-cp", str(self.control_port)]  # not 0.0.0.0:8888
        cmd += ["-m", str(self.calls), "-nostdin"]
        cmd += ["-timeout", f"{round(self.timeout * 1000)}ms", "-timeout_error"]
        if self.service:
            cmd += ["-s", self.service]
        if limit is not None:
            cmd += ["-l", str(limit)]
        if rate is not None:
            cmd += ["-r", f"{rate:g}"]
        if rate_period_ms is not None:
            cmd += ["-rp", f"{rate_period_ms}ms"]
        if auth is not None:
            cmd += ["-au", auth[0], "-ap", auth[1]]
        for name, value in variables.items():
            cmd += ["-set", name, str(value)]
        for name, value in keys.items():
            cmd += ["-key", name, str(value)]
        cmd += ["-trace_msg", "-message_file", str(self._file("messages.log"))]
        cmd += ["-trace_err", "-error_file", str(self._file("errors.log"))]
        cmd += ["-trace_logs", "-log_file", str(self._file("logs.log"))]
        cmd += ["-trace_stat", "-stf", str(self._file("stat.csv"))]
        cmd += ["-trace_screen", "-screen_file", str(self._file("screen.log"))]
        return cmd + list(extra_args)

    async def start(self, ready_timeout: float = 5.0) -> Sipp:
        """Start SIPp and wait until its SIP and media ports are bound (raises SippError if it dies)."""
        if self._process is not None:
            raise RuntimeError("this Sipp was already started")
        self._output = os.open(self._file("output.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._output,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.workdir,
        )
        deadline = asyncio.get_running_loop().time() + ready_timeout
        while not (_udp_bound(self.host, self.port) and _udp_bound(self.host, self.media_port)):
            if self._process.returncode is not None:
                raise SippError("SIPp exited at start", self._collect(self._process.returncode))
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                message = f"SIPp did not bind {self.host}:{self.port} in {ready_timeout:g} s"
                raise SippError(message, self._result)
            await asyncio.sleep(0.02)
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to finish its calls and exit; after `timeout` seconds (default: its own -timeout
        plus 5 s) stop it and raise SippError."""
        if self._process is None:
            raise RuntimeError("this Sipp was not started")
        if self._result is not None:
            return self._result
        limit = self.timeout + 5 if timeout is None else timeout
        try:
            rc = await asyncio.wait_for(self._process.wait(), limit)
        except TimeoutError:
            result = await self.stop()
            raise SippError(f"SIPp did not finish in {limit:g} s", result) from None
        return self._collect(rc)

    async def stop(self, grace: float = 2.0) -> SippResult:
        """End SIPp: SIGUSR1 (no new calls, let the current ones end), then SIGTERM, then SIGKILL."""
        if self._process is None:
            raise RuntimeError("this Sipp was not started")
        if self._result is not None:
            return self._result
        process = self._process
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL):
            if process.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), grace)
        return self._collect(await process.wait())

    def _read(self, name: str) -> str:
        try:
            return self._file(name).read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def _collect(self, returncode: int) -> SippResult:
        if self._result is not None:
            return self._result
        if self._output is not None:
            os.close(self._output)
            self._output = None
        screen = self._read("screen.log")
        successful, failed = _counts(self._file("stat.csv"), screen)
        try:
            raw = self._file("messages.log").read_bytes()
        except OSError:
            raw = b""
        self._result = SippResult(
            command=tuple(self.command),
            returncode=returncode,
            successful=successful,
            failed=failed,
            calls=self.calls,
            messages=raw.decode("utf-8", "replace"),
            errors=self._read("errors.log"),
            logs=self._read("logs.log"),
            screen=screen,
            output=self._read("output.log"),
            trace=tuple(parse_trace(raw)),
        )
        return self._result

    async def close(self) -> SippResult | None:
        """Stop SIPp if it still runs and remove a temporary work directory; the result, if it started."""
        result = None
        if self._process is not None:
            result = await self.stop() if self.running else self._collect(await self._process.wait())
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return result

    async def __aenter__(self) -> Sipp:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class SippOptions(TypedDict, total=False):
    """The keyword arguments of `Sipp` that `run_uac` passes on."""

    calls: int
    limit: int | None
    rate: float | None
    rate_period_ms: int | None
    variables: Mapping[str, object] | None
    keys: Mapping[str, object] | None
    auth: tuple[str, str] | None
    timeout: float
    host: str
    port: int | None
    media_port: int | None
    extra_args: Sequence[str]
    workdir: str | os.PathLike[str] | None


async def run_uac(
    scenario: str | os.PathLike[str],
    target: str | tuple[str, int],
    *,
    service: str = "service",
    wait_timeout: float | None = None,
    **options: Unpack[SippOptions],
) -> SippResult:
    """Run a UAC scenario against `target` ("host:port" or (host, port)) calling `service` (-s), to its end.

    `options` are those of `Sipp` (calls, variables, auth, timeout, ...); `wait_timeout` that of `wait`."""
    uac = Sipp(scenario, remote=target, service=service, **options)
    async with uac:
        return await uac.wait(wait_timeout)
