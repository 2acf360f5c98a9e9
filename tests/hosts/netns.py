"""Hosts in network namespaces: a private bridge in the root namespace, one namespace per host on it.

    with Network(2) as net:
        a, b = net.hosts
        subprocess.Popen(a.command([sys.executable, "-m", "worker"]))   # runs inside a's namespace
        a.kill_all()                                                      # kill -9 of all that runs there

Each host has its own address on a private /24 (10.231.N.0/24, N picked so that no address of this machine
is in it, under a lock so that two pytest workers never pick the same one); the root namespace holds the
bridge's address (`net.gateway`, .1), where the tests' own peers (Redis, SIPp, clients) listen or come
from. The hosts have loopback and that address only: no default route, nothing else is reachable.

Names carry this process's pid and a random tag, so parallel runs never collide; whatever a run that was
killed left behind (its pid gone) is removed by the next one. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)
and `ip` from iproute2.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# The /16 the test networks are taken from: private, and rare on real networks (docker uses 172.17/16,
# libvirt 192.168.122/24, most LANs 192.168/16 or 10.0-10.10).
POOL = ipaddress.ip_network("10.231.0.0/16")
PREFIX = "pbxh"  # namespaces: pbxh-<pid>-<tag>-<i>; links: pbxb<tag> (bridge), pbxv<tag><i> (veth)
LOCK = Path("/tmp/pbx-netns.lock")
MAX_HOSTS = 10


class NetnsUnavailable(RuntimeError):
    """This machine cannot run host tests (not root, no `ip`, no network namespaces)."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
    return done


def check_prerequisites() -> None:
    """Raise NetnsUnavailable, saying what is missing, unless this process may create namespaces."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("no `ip` command: install iproute2 (./scripts/test does, with apt-get)")
    if os.geteuid() != 0:
        raise NetnsUnavailable("host tests create network namespaces and need root (run as root)")
    probe = f"{PREFIX}-{os.getpid()}-probe"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise NetnsUnavailable(f"cannot create a network namespace: {done.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def kill_namespace_pids(netns: str, sig: int = signal.SIGKILL) -> list[int]:
    """Send `sig` to every process in `netns` (`ip netns pids`); the pids signalled."""
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10).stdout
    pids = [int(p) for p in out.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def _remove_leftovers() -> None:
    """Namespaces and bridges of earlier runs whose process is gone (a run killed before its teardown)."""
    tags: set[str] = set()
    for ns in _namespaces():
        parts = ns.split("-")
        if len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            if len(parts) >= 4:
                tags.add(parts[2])
            kill_namespace_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    for tag in tags:
        # The veths too: a namespace whose killed processes left TCP connections in TIME_WAIT outlives its
        # `ip netns del` for a minute, and its veth pairs with it.
        for link in (f"pbxb{tag}", *(f"pbxv{tag}{i}" for i in range(MAX_HOSTS))):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)


def _used_subnets() -> set[int]:
    """The third octets of POOL that some address of this machine (any interface) is in."""
    out = ip("-o", "-4", "addr", "show").stdout
    used: set[int] = set()
    for line in out.splitlines():
        words = line.split()
        if "inet" in words:
            iface = ipaddress.ip_interface(words[words.index("inet") + 1])
            if iface.network.overlaps(POOL):
                used.add(int(iface.ip.packed[2]))
    return used


@dataclass
class Host:
    """One host: a network namespace with one address on the bridge, and loopback."""

    name: str  # what the tests call it, and its HOST_NAME: "a", "b", ...
    netns: str
    address: str

    def command(self, args: Sequence[str]) -> list[str]:
        """`args` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *args]

    def kill_all(self, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every process of this host (everything in its namespace); the pids signalled."""
        return kill_namespace_pids(self.netns, sig)


class Network:
    """`count` hosts on a private bridge; everything is removed on exit, whatever happened."""

    def __init__(self, count: int) -> None:
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"1 to {MAX_HOSTS} hosts, not {count}")
        self.count = count
        self.tag = secrets.token_hex(3)
        self.bridge = f"pbxb{self.tag}"
        self.hosts: list[Host] = []
        self.subnet: ipaddress.IPv4Network | None = None
        self._links: list[str] = []

    @property
    def gateway(self) -> str:
        """The bridge's address, in the root namespace: where the tests' peers listen."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def start(self) -> Network:
        check_prerequisites()
        try:
            with LOCK.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                _remove_leftovers()
                used = _used_subnets()
                free = [n for n in range(1, 255) if n not in used]
                if not free:
                    raise NetnsUnavailable(f"no free /24 left in {POOL}")
                third = free[secrets.randbelow(len(free))]
                self.subnet = ipaddress.IPv4Network(f"10.231.{third}.0/24")
                ip("link", "add", self.bridge, "type", "bridge")
                self._links.append(self.bridge)
                ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
                ip("link", "set", self.bridge, "up")
            for i in range(self.count):
                self._add_host(i)
        except BaseException:
            self.stop()
            raise
        return self

    def _add_host(self, i: int) -> None:
        assert self.subnet is not None
        name = chr(ord("a") + i)
        netns = f"{PREFIX}-{os.getpid()}-{self.tag}-{name}"
        outer, inner = f"pbxv{self.tag}{i}", f"pbxi{self.tag}{i}"
        address = str(self.subnet.network_address + 10 + i)
        ip("netns", "add", netns)
        host = Host(name, netns, address)
        self.hosts.append(host)  # from now on, stop() removes it, even if the rest fails
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        self._links.append(outer)
        ip("link", "set", inner, "netns", netns)
        ip("link", "set", outer, "master", self.bridge)
        ip("link", "set", outer, "up")
        ip("addr", "add", f"{address}/24", "dev", inner, netns=netns)
        ip("link", "set", inner, "up", netns=netns)
        ip("link", "set", "lo", "up", netns=netns)

    def stop(self) -> None:
        for host in self.hosts:
            host.kill_all()
            ip("netns", "del", host.netns, check=False)
        for link in reversed(self._links):
            ip("link", "del", link, check=False)  # a veth whose peer went with its namespace is gone already
        self.hosts = []
        self._links = []

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
