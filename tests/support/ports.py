"""Free TCP ports for servers a test starts."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A port on ``HOST`` that nothing listens on now (the kernel's pick for port 0).

    The port is released before it is returned, so another process could take it first;
    on a test machine that race is rare enough, and a server that cannot bind fails loudly."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])
