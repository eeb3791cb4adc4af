"""A tiny HTTP CONNECT proxy for tests, on real sockets: it tunnels, or asks
for credentials, refuses, stalls, or answers with an endless head."""

from __future__ import annotations

import base64

from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol


class _Upstream(Protocol):
    def __init__(self, downstream: _ProxyProtocol):
        self.downstream = downstream

    def connectionMade(self):
        self.downstream.upstream_ready(self)

    def dataReceived(self, data):
        self.downstream.transport.write(data)

    def connectionLost(self, reason):
        self.downstream.transport.loseConnection()


class _ProxyProtocol(Protocol):
    def __init__(self, proxy: ConnectProxy):
        self.proxy = proxy
        self.head = b""
        self.upstream: _Upstream | None = None
        self.pending = b""
        self.tunnelling = False

    def dataReceived(self, data):
        if self.tunnelling:
            if self.upstream is None:
                self.pending += data
            else:
                self.upstream.transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, rest = self.head.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        self.proxy.requests.append(lines)
        mode = self.proxy.mode
        if mode == "stall":
            return
        if mode == "oversize":
            self.transport.write(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 40_000 + b"\r\n\r\n")
            return
        if mode == "garbage":
            self.transport.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            return
        if isinstance(mode, int):
            self.transport.write(f"HTTP/1.1 {mode} Go Away\r\n\r\n".encode())
            self.transport.loseConnection()
            return
        if self.proxy.credentials is not None:
            wanted = b"Proxy-Authorization: Basic " + base64.b64encode(self.proxy.credentials.encode())
            if wanted not in lines:
                self.transport.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\n\r\n"
                )
                self.transport.loseConnection()
                return
        _method, target, _ = lines[0].split(b" ")
        host, _, port = target.rpartition(b":")
        self.tunnelling = True
        self.pending = rest
        endpoint = TCP4ClientEndpoint(self.proxy.reactor, host.strip(b"[]").decode(), int(port))
        endpoint.connect(Factory.forProtocol(lambda: _Upstream(self))).addErrback(
            lambda _: self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n") or self.transport.loseConnection()
        )

    def upstream_ready(self, upstream: _Upstream):
        self.upstream = upstream
        # The 200 and the first bytes of the target's in one write: the
        # client must hand what follows the head to its protocol.
        self.transport.write(b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\n")
        if self.pending:
            upstream.transport.write(self.pending)
            self.pending = b""

    def connectionLost(self, reason):
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class ConnectProxy(Factory):
    """``mode``: "tunnel", "stall", "oversize", "garbage" or a status code to refuse with;
    ``credentials``: "user:password" it demands (None: none)."""

    def __init__(self, reactor, mode: str | int = "tunnel", credentials: str | None = None):
        self.reactor = reactor
        self.mode = mode
        self.credentials = credentials
        self.requests: list[list[bytes]] = []
        self.connections: list[_ProxyProtocol] = []

    def buildProtocol(self, addr):
        protocol = _ProxyProtocol(self)
        self.connections.append(protocol)
        return protocol

    async def listen(self, test) -> int:
        port = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(self)
        test.addCleanup(port.stopListening)
        test.addCleanup(self.close_all)
        return port.getHost().port

    def close_all(self):
        for protocol in self.connections:
            if protocol.transport is not None:
                protocol.transport.abortConnection()


def main(argv: list[str]) -> None:
    """``python tests/connect_proxy.py ADDRESS PORT [USER:PASSWORD]``: a tunnelling
    proxy for lab tests, in a namespace of the lab's own."""
    from twisted.internet import reactor

    address, port = argv[0], int(argv[1])
    proxy = ConnectProxy(reactor, credentials=argv[2] if len(argv) > 2 else None)
    reactor.listenTCP(port, proxy, interface=address)
    print(f"connect proxy on {address}:{port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
