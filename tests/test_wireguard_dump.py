"""wire.node.wireguard.dump: parsing ``wg show NAME dump``."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.wgscript import (
    ALICE,
    BOB,
    CAROL,
    DUMP,
    FRESH_DUMP,
    NAME,
    PRIVATE,
    PUBLIC,
)
from wire.node.wireguard import (
    InterfaceStatus,
    PeerStatus,
    WireGuardError,
    parse_dump,
)


class DumpTests(SynchronousTestCase):
    def test_parse(self) -> None:
        status = parse_dump(DUMP, backend="wireguard-go", name=NAME)
        self.assertEqual(
            status,
            InterfaceStatus(
                name=NAME,
                public_key=PUBLIC,
                listen_port=51820,
                backend="wireguard-go",
                peers=(
                    PeerStatus(ALICE, "198.18.0.7:51820", ("10.99.0.7/32",), 1700000123.0, 92, 180, 25),
                    PeerStatus(BOB, "[2001:db8::8]:41641", ("10.99.0.8/32", "fd00::8/128"), 0.0, 0, 148, 0),
                    PeerStatus(CAROL, None, (), 0.0, 0, 0, 0),
                ),
            ),
        )
        self.assertNotIn(PRIVATE, repr(status))

    def test_fresh_interface(self) -> None:
        status = parse_dump(FRESH_DUMP)
        self.assertEqual((status.public_key, status.listen_port, status.peers), ("", 0, ()))

    def test_malformed_output_never_quotes_the_private_key(self) -> None:
        for output in [
            b"",
            f"{PRIVATE}\t{PUBLIC}\n".encode(),
            f"{PRIVATE}\t{PUBLIC}\tport\toff\n".encode(),
            f"{PRIVATE}\t{PUBLIC}\t51820\toff\n{ALICE}\t(none)\n".encode(),
            f"{PRIVATE}\t{PUBLIC}\t51820\toff\n{ALICE}\t(none)\t(none)\t(none)\tsoon\t0\t0\toff\n".encode(),
        ]:
            error = self.assertRaises(WireGuardError, parse_dump, output, name=NAME)
            self.assertNotIn(PRIVATE, str(error))
