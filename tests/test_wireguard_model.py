"""wire.node.wireguard.model: peers are normalised as WireGuard stores them, and
whatever is accepted is safe for an argv."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.wgscript import (
    ALICE,
)
from wire.node.wireguard import (
    InvalidWireGuardConfig,
    PeerConfig,
    parse_endpoint,
)


class NormalisationTests(SynchronousTestCase):
    def test_peer_config_is_normalised_as_wireguard_stores_it(self) -> None:
        config = PeerConfig(ALICE, ["fd00::9/128", "10.99.0.5/24", "10.99.0.0/24", "10.99.0.9"], "[2001:DB8:0::1]:51820")
        self.assertEqual(config.allowed_ips, ("10.99.0.0/24", "10.99.0.9/32", "fd00::9/128"))
        self.assertEqual(config.endpoint, "[2001:db8::1]:51820")

    @given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
    def test_endpoints_round_trip(self, address, port) -> None:
        text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        normal = parse_endpoint(text)
        self.assertEqual(parse_endpoint(normal), normal)

    @given(st.text(max_size=60))
    def test_accepted_text_is_safe_for_an_argv(self, text) -> None:
        for parse in (parse_endpoint, lambda t: PeerConfig(ALICE, (t,)).allowed_ips[0]):
            try:
                value = parse(text)
            except InvalidWireGuardConfig:
                continue
            self.assertRegex(value, r"\A[0-9a-f:.\[\]/]+\Z")
