"""Primary election for subnet routes (wire.server.routebook): one primary
per prefix, stable while online, handed to an online standby at once."""

from __future__ import annotations

import ipaddress

from twisted.trial import unittest

from wire.server.routebook import RouteBook, overlapping

LAN = "192.168.1.0/24"


class ElectionTests(unittest.TestCase):
    def test_the_first_online_server_is_primary_and_stays(self):
        book = RouteBook()
        self.assertEqual(book.update("a", [LAN], online=True), {"a"})
        self.assertEqual(book.update("b", [LAN], online=True), set(), "a stays primary")
        self.assertEqual((book.primary(LAN), book.primary_routes("a"), book.primary_routes("b")), ("a", (LAN,), ()))
        self.assertEqual(book.servers(LAN), ("a", "b"))

    def test_failover_to_an_online_standby_and_no_flap_back(self):
        book = RouteBook()
        book.update("a", [LAN], True)
        book.update("b", [LAN], True)
        self.assertEqual(book.update("a", [LAN], online=False), {"a", "b"}, "a netmap change of both")
        self.assertEqual(book.primary(LAN), "b")
        self.assertEqual(book.update("a", [LAN], online=True), set(), "b stays while online")
        self.assertEqual(book.primary(LAN), "b")

    def test_an_offline_primary_keeps_the_prefix_until_someone_online_serves_it(self):
        book = RouteBook()
        book.update("a", [LAN], True)
        self.assertEqual(book.update("a", [LAN], False), set())
        self.assertEqual(book.primary(LAN), "a")
        book.update("b", [LAN], False)
        self.assertEqual(book.primary(LAN), "a", "b is offline too: nobody better")
        self.assertEqual(book.update("b", [LAN], True), {"a", "b"})
        self.assertEqual(book.primary(LAN), "b")

    def test_a_node_that_stops_serving_or_goes_hands_over(self):
        book = RouteBook()
        book.update("a", [LAN, "10.1.0.0/16"], True)
        book.update("b", [LAN], True)
        self.assertEqual(book.update("a", ["10.1.0.0/16"], True), {"a", "b"})
        self.assertEqual((book.primary_routes("a"), book.primary_routes("b")), (("10.1.0.0/16",), (LAN,)))
        self.assertEqual(book.update("a", [], False), {"a"})
        self.assertIsNone(book.primary("10.1.0.0/16"))
        self.assertEqual(book.servers("10.1.0.0/16"), ())

    def test_exit_routes_are_never_elected(self):
        book = RouteBook()
        self.assertEqual(book.update("a", ["0.0.0.0/0", "::/0"], True), set())
        self.assertEqual(book.primary_routes("a"), ())

    def test_routes_come_in_route_order(self):
        book = RouteBook()
        book.update("a", ["fd00:1::/64", "192.168.1.0/24", "10.0.0.0/8"], True)
        self.assertEqual(book.primary_routes("a"), ("10.0.0.0/8", "192.168.1.0/24", "fd00:1::/64"))

    def test_nothing_changes_nothing(self):
        book = RouteBook()
        book.update("a", [LAN], True)
        self.assertEqual(book.update("a", [LAN], True), set())


class OverlapTests(unittest.TestCase):
    def test_only_subnet_routes_of_the_same_family_that_overlap(self):
        mesh = ipaddress.ip_network("10.99.0.0/16")
        routes = ["10.0.0.0/8", "10.99.5.0/24", "10.100.0.0/16", "0.0.0.0/0", "::/0", "fd00::/8"]
        self.assertEqual(overlapping(routes, mesh), ["10.0.0.0/8", "10.99.5.0/24"])
