import hashlib
import ipaddress
import itertools

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from wire.addressing import AddressPool, Ipv6Pool, PoolExhausted, parse_subnet, parse_subnet6, random_ula_prefix
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


class ParseSubnet6Tests(unittest.TestCase):
    def test_a_ula_prefix_of_48_to_64(self):
        for good in ("fd7a:115c:a1e0::/48", "fd00:1:2:3::/64", "fdab:cdef:1234:5600::/56"):
            self.assertEqual(str(parse_subnet6(good)), good)

    def test_others_are_refused_with_the_reason(self):
        for bad, reason in (
            ("banana", "not an IPv6 network"),
            ("10.99.0.0/16", "not an IPv6 network"),
            ("fd7a:115c:a1e0::1/48", "host bits set"),
            ("fd7a:115c::/32", "outside /48../64"),
            ("fd7a:115c:a1e0:1:2::/80", "outside /48../64"),
            ("2001:db8::/48", "not a unique local prefix"),
            ("fe80::/64", "not a unique local prefix"),
            ("fc00:1::/48", "RFC 4193 leaves undefined"),
        ):
            with self.assertRaises(ProtocolError, msg=bad) as caught:
                parse_subnet6(bad)
            self.assertEqual(caught.exception.field, "subnet6")
            self.assertIn(reason, caught.exception.problem, bad)

    def test_a_drawn_prefix_is_fd_and_40_random_bits(self):
        prefix = random_ula_prefix(lambda n: bytes(range(1, n + 1)))
        self.assertEqual(str(prefix), "fd01:203:405::/48")
        self.assertEqual(parse_subnet6(str(random_ula_prefix())).prefixlen, 48)
        self.assertNotEqual(random_ula_prefix(), random_ula_prefix())


class Ipv6PoolTests(unittest.TestCase):
    pool48 = Ipv6Pool(ipaddress.IPv6Network("fd7a:115c:a1e0::/48"))
    pool64 = Ipv6Pool(ipaddress.IPv6Network("fd7a:115c:a1e0:7::/64"))

    def test_the_address_is_the_node_ids_hash_in_the_host_bits(self):
        digest = int.from_bytes(hashlib.sha256(b"v6:node-a").digest()[:16], "big")
        self.assertEqual(self.pool48.allocate("node-a", set()), str(ipaddress.IPv6Address((0xFD7A_115C_A1E0 << 80) | (digest >> 48))))
        self.assertEqual(self.pool64.allocate("node-a", set()), str(ipaddress.IPv6Address((0xFD7A_115C_A1E0_0007 << 64) | (digest >> 64))))

    def test_deterministic_and_inside_the_prefix(self):
        for pool in (self.pool48, self.pool64):
            addresses = {pool.allocate(f"node{i}", set()) for i in range(200)}
            self.assertEqual(len(addresses), 200)
            self.assertEqual(addresses, {pool.allocate(f"node{i}", set()) for i in range(200)})
            for address in addresses:
                self.assertIn(ipaddress.IPv6Address(address), pool.network)
                self.assertEqual(address, str(ipaddress.IPv6Address(address)), "compressed, as the index keys it")

    def test_a_collision_takes_the_next_candidate_and_still_deterministic(self):
        first = self.pool64.allocate("node-a", set())
        second = self.pool64.allocate("node-a", {first})
        self.assertNotEqual(first, second)
        self.assertEqual(second, self.pool64.allocate("node-a", {first}))
        self.assertNotIn(self.pool64.allocate("node-a", {first, second}), {first, second})

    def test_every_hashed_candidate_taken_scans_on_from_the_first(self):
        candidates = [str(c) for c in self.pool64.candidates("node-a")]
        address = self.pool64.allocate("node-a", set(candidates))
        self.assertNotIn(address, candidates)
        self.assertEqual(int(ipaddress.IPv6Address(address)) - int(ipaddress.IPv6Address(candidates[0])), 1)

    def test_reserved_addresses_are_never_assignable(self):
        for pool in (self.pool48, self.pool64):
            base = int(pool.network.network_address)
            for iid in (0, 1):  # the subnet-router anycast; ::1, kept for the server
                self.assertFalse(pool.is_assignable(ipaddress.IPv6Address(base + iid)), hex(iid))
            for iid in (0xFDFF_FFFF_FFFF_FF80, 0xFDFF_FFFF_FFFF_FFFF, 0x0200_5EFF_FE00_5213, 0x0200_5EFF_FEFF_FFFF):
                self.assertFalse(pool.is_assignable(ipaddress.IPv6Address(base + iid)), hex(iid))
            for iid in (2, 0xFDFF_FFFF_FFFF_FF7F, 0x0200_5EFF_FDFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF):
                self.assertTrue(pool.is_assignable(ipaddress.IPv6Address(base + iid)), hex(iid))
            self.assertFalse(pool.is_assignable(ipaddress.IPv6Address("fd7a:115c:a1e1::5")))
        # In a /48 the subnet-router anycast of every /64 in it too, but ::1 only once.
        self.assertFalse(self.pool48.is_assignable(ipaddress.IPv6Address("fd7a:115c:a1e0:42::")))
        self.assertTrue(self.pool48.is_assignable(ipaddress.IPv6Address("fd7a:115c:a1e0:42::1")))

    def test_a_reserved_candidate_is_passed_over(self):
        pool = Ipv6Pool(ipaddress.IPv6Network("fd00::/64"))
        reserved, free = ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd00::7")
        pool.candidates = lambda node_id: iter([reserved, free])  # type: ignore[method-assign]
        self.assertEqual(pool.allocate("n", set()), "fd00::7")
        # Past the candidates, the scan from the first one skips the reserved too.
        self.assertEqual(pool.allocate("n", {"fd00::7", "fd00::2"}), "fd00::3")

    def test_only_48_to_64(self):
        for length in (40, 80):
            self.assertRaises(ValueError, Ipv6Pool, ipaddress.IPv6Network(f"fd00::/{length}"))

    @settings(max_examples=200)
    @given(st.text(min_size=1, max_size=64), st.sets(st.integers(0, 2**64 - 1), max_size=50))
    def test_allocation_is_always_free_and_assignable(self, node_id, taken_iids):
        base = int(self.pool64.network.network_address)
        taken = {str(ipaddress.IPv6Address(base + iid)) for iid in taken_iids}
        taken |= {str(c) for c in itertools.islice(self.pool64.candidates(node_id), len(taken_iids) % 4)}
        address = self.pool64.allocate(node_id, taken)
        self.assertNotIn(address, taken)
        self.assertTrue(self.pool64.is_assignable(ipaddress.IPv6Address(address)))
