"""common/embedded.py: the ports tests and the embedded Redis take."""

from __future__ import annotations

import socket

from common.embedded import free_port


def test_a_free_port_takes_tcp_and_udp() -> None:
    port = free_port()
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", port))
        udp.bind(("127.0.0.1", port))
