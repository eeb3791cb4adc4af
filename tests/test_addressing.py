import hashlib
import ipaddress

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from wire.addressing import AddressPool, PoolExhausted, parse_subnet
from wire.protocol import ProtocolError


class ParseSubnetTests(unittest.TestCase):
    def test_cidr(self):
        self.assertEqual(parse_subnet("10.99.0.0/16"), ipaddress.IPv4Network("10.99.0.0/16"))

    def test_seed_prefix_form(self):
        self.assertEqual(parse_subnet("10.99"), ipaddress.IPv4Network("10.99.0.0/16"))
        self.assertEqual(parse_subnet("10.7.3"), ipaddress.IPv4Network("10.7.3.0/24"))

    def test_bad_values_name_the_problem(self):
        for bad in ("", "banana", "10.99.0.1/16", "10.0.0.0/30", "300.1", "10.99.0.0/33", "fd00::/64"):
            with self.assertRaises(ProtocolError, msg=bad) as caught:
                parse_subnet(bad)
            self.assertEqual(caught.exception.field, "subnet")

    def test_only_a_private_subnet_is_a_mesh(self):
        for public in ("8.0.0.0/8", "198.18.0.0/16", "127.0.0.0/8", "224.0.0.0/8", "169.254.0.0/16"):
            with self.assertRaises(ProtocolError, msg=public) as caught:
                parse_subnet(public)
            self.assertIn("nodes accept only a private mesh subnet", caught.exception.problem)
        for private in ("10.99.0.0/16", "172.20.0.0/16", "192.168.50.0/24", "100.64.0.0/10"):
            self.assertEqual(str(parse_subnet(private)), private)


class AddressPoolTests(unittest.TestCase):
    pool = AddressPool(ipaddress.IPv4Network("10.99.0.0/16"))

    def test_first_candidate_matches_the_seed(self):
        # The seed client computes 10.99.{h[0]}.{h[1]} with h = sha256(node_id).
        node_id = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
        h = hashlib.sha256(node_id.encode()).digest()
        self.assertEqual(str(next(self.pool.candidates(node_id))), f"10.99.{h[0]}.{h[1]}")

    def test_reserved_addresses_are_never_assignable(self):
        for text in ("10.99.0.0", "10.99.0.1", "10.99.255.255", "10.99.7.0", "10.99.7.255", "10.98.1.1"):
            self.assertFalse(self.pool.is_assignable(ipaddress.IPv4Address(text)), text)
        self.assertTrue(self.pool.is_assignable(ipaddress.IPv4Address("10.99.7.1")))

    def test_collision_takes_next_deterministic_candidate(self):
        first = self.pool.allocate("node-a", set())
        again = self.pool.allocate("node-a", {first})
        self.assertNotEqual(first, again)
        self.assertEqual(again, self.pool.allocate("node-a", {first}))

    def test_requested_address_honoured_only_when_free(self):
        self.assertEqual(self.pool.allocate("n", set(), "10.99.3.4"), "10.99.3.4")
        self.assertNotEqual(self.pool.allocate("n", {"10.99.3.4"}, "10.99.3.4"), "10.99.3.4")
        self.assertNotEqual(self.pool.allocate("n", set(), "10.99.0.1"), "10.99.0.1")
        self.assertNotEqual(self.pool.allocate("n", set(), "192.168.1.1"), "192.168.1.1")

    def test_small_pool_fills_completely_then_refuses(self):
        pool = AddressPool(parse_subnet("10.5.5.0/28"))
        assignable = {str(a) for a in pool.network if pool.is_assignable(a)}
        taken: set[str] = set()
        for i in range(len(assignable)):
            taken.add(pool.allocate(f"node{i}", taken))
        self.assertEqual(taken, assignable)
        self.assertRaises(PoolExhausted, pool.allocate, "one-more", taken)

    @settings(max_examples=200)
    @given(st.text(min_size=1, max_size=64), st.sets(st.integers(0, 65535), max_size=300))
    def test_allocation_is_always_free_and_assignable(self, node_id, taken_offsets):
        taken = {str(ipaddress.IPv4Address(int(self.pool.network.network_address) + o)) for o in taken_offsets}
        address = self.pool.allocate(node_id, taken)
        self.assertNotIn(address, taken)
        self.assertTrue(self.pool.is_assignable(ipaddress.IPv4Address(address)))
