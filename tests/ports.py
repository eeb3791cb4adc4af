"""Free local ports, for tests and benches (imports no reactor, so a bench
may still install the one it wants)."""

from __future__ import annotations

import socket


def free_port_triple() -> int:
    """A port P with TCP P and UDP P+1, P+2 free on 127.0.0.1 (best effort)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 65530:
            continue
        try:
            for offset in (1, 2):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port triple found")
