"""A tiny authoritative DNS server for lab tests: answers A records it is
given and NXDOMAIN for everything else, on UDP and TCP; it prints
"query from ADDRESS" for each query, so a test can tell which way it came.

    python tests/dns_upstream.py ADDRESS PORT NAME=IP [NAME=IP ...]

Run inside a lab namespace, it stands for a resolver the machine had before
wire (the mesh resolver's upstream) or an office DNS behind a forwarded zone.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, reactor
from twisted.names import dns, error, server
from twisted.names.common import ResolverBase


class Fixed(ResolverBase):
    def __init__(self, addresses: dict[str, str]):
        super().__init__()
        self.addresses = addresses

    def _lookup(self, name, cls, type, timeout):
        text = name.decode().lower().rstrip(".")
        if text not in self.addresses:
            return defer.fail(error.DomainError(name))
        if type not in (dns.A, dns.ALL_RECORDS):
            return defer.succeed(([], [], []))
        record = dns.RRHeader(name, dns.A, dns.IN, 5, dns.Record_A(self.addresses[text], 5))
        return defer.succeed(([record], [], []))


class Telling(server.DNSServerFactory):
    def handleQuery(self, message, protocol, address):
        source = address[0] if address else protocol.transport.getPeer().host
        print(f"query from {source}", flush=True)
        return super().handleQuery(message, protocol, address)


def main(argv: list[str]) -> None:
    address, port = argv[0], int(argv[1])
    addresses = dict(item.split("=", 1) for item in argv[2:])
    factory = Telling(authorities=[Fixed(addresses)])
    reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface=address)
    reactor.listenTCP(port, factory, interface=address)
    print(f"dns upstream on {address}:{port}: {addresses}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
