"""The one IPv4-mapped normalisation, and the three users that share it."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from wire.server.ratelimit import address_key
from wire.sourceaddress import normalize_client_ip, unmapped
from wire.stun import encode_binding_request, encode_binding_success, parse_mapped_address, parse_message


class SourceAddressTests(unittest.SynchronousTestCase):
    def test_unmapped(self):
        self.assertEqual(unmapped(ipaddress.ip_address("::ffff:203.0.113.5")), ipaddress.ip_address("203.0.113.5"))
        self.assertEqual(unmapped(ipaddress.ip_address("203.0.113.5")), ipaddress.ip_address("203.0.113.5"))
        self.assertEqual(unmapped(ipaddress.ip_address("2001:db8::5")), ipaddress.ip_address("2001:db8::5"))

    def test_client_ip_text(self):
        self.assertEqual(normalize_client_ip("::ffff:10.0.0.1"), "10.0.0.1")
        self.assertEqual(normalize_client_ip("2001:db8::1"), "2001:db8::1")
        self.assertEqual(normalize_client_ip("unix socket"), "unix socket")

    @given(st.ip_addresses(v=4))
    def test_an_ipv4_sender_is_one_address_on_either_socket(self, address):
        mapped = f"::ffff:{address}"
        self.assertEqual(normalize_client_ip(mapped), str(address))
        self.assertEqual(address_key(mapped), address_key(str(address)))
        request = parse_message(encode_binding_request()[0])
        for host in (mapped, str(address)):
            response = parse_message(encode_binding_success(request, host, 4500))
            self.assertEqual(parse_mapped_address(response), (str(address), 4500))
