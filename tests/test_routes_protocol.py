"""Routes in the protocol (wire.protocol.routes): what a node may advertise,
and what a peer's view may carry; both refused with the reason otherwise."""

from __future__ import annotations

from twisted.trial import unittest

from tests.helpers import body_for
from wire.protocol import PeerView, ProtocolError
from wire.protocol.registration import parse_registration
from wire.protocol.routes import EXIT_ROUTES, is_exit_route, parse_route, parse_routes


class RouteTests(unittest.TestCase):
    def test_networks_are_canonical_and_sorted(self):
        self.assertEqual(parse_routes(["192.168.1.0/24", "10.0.0.0/8", "::/0", "0.0.0.0/0", "10.0.0.0/8", "fd00:1::/64"]),
                         ("0.0.0.0/0", "10.0.0.0/8", "192.168.1.0/24", "::/0", "fd00:1::/64"))
        self.assertEqual(parse_route("FD00:1::/64"), "fd00:1::/64")
        self.assertTrue(all(is_exit_route(r) for r in EXIT_ROUTES))
        self.assertFalse(is_exit_route("10.0.0.0/8"))

    def test_refusals_name_what_was_wrong(self):
        for value, message in [
            ("192.168.1.1/24", "has host bits set"),
            ("192.168.1.0", "needs a prefix length"),
            ("10.0.0.0/33", "is not a network"),
            ("224.0.0.0/4", "multicast, link-local or loopback"),
            ("127.0.0.0/8", "multicast, link-local or loopback"),
            ("fe80::/64", "multicast, link-local or loopback"),
            (5, "must be a network like"),
            ("", "must be a network like"),
        ]:
            with self.assertRaises(ProtocolError, msg=value) as caught:
                parse_route(value)
            self.assertIn(message, str(caught.exception), value)
        with self.assertRaises(ProtocolError):
            parse_routes([f"10.{i}.0.0/16" for i in range(65)])
        with self.assertRaises(ProtocolError):
            parse_routes("10.0.0.0/8")

    def test_a_registration_carries_them(self):
        body = dict(body_for("router1"), advertise_routes=["192.168.1.0/24"])
        registration = parse_registration(body)
        self.assertEqual(registration.advertise_routes, ("192.168.1.0/24",))
        self.assertEqual(parse_registration(registration.as_body()), registration)
        self.assertNotIn("advertise_routes", parse_registration(body_for("web1")).as_body())
        with self.assertRaises(ProtocolError):
            parse_registration(dict(body, advertise_routes=["192.168.1.1/24"]))

    def test_a_peer_view_carries_them_strictly(self):
        view = dict(body_for("router1"), vpn_ip="10.99.0.7", routes=["192.168.1.0/24"], exit_node=True)
        peer = PeerView.from_json(view)
        self.assertEqual((peer.routes, peer.exit_node), (("192.168.1.0/24",), True))
        self.assertEqual(PeerView.from_json(dict(body_for("web1"), vpn_ip="10.99.0.8")).routes, ())
        with self.assertRaises(ProtocolError):
            PeerView.from_json(dict(view, routes=["192.168.1.1/24"]))  # they may reach AllowedIPs


class Ipv6FieldsTests(unittest.TestCase):
    """The IPv6 mesh address in the register answer and in a peer's view."""

    def test_register_answer(self):
        from wire.protocol.registration import RegisterAnswer

        answer = RegisterAnswer(vpn_ip="10.99.0.7", vpn_subnet="10.99.0.0/16", vpn_ip6="fd7a:115c:a1e0::7", vpn_subnet6="fd7a:115c:a1e0::/48")
        self.assertEqual(RegisterAnswer.from_json(answer.to_json()), answer)
        self.assertEqual(RegisterAnswer.from_json({"vpn_ip": "10.99.0.7"}).vpn_ip6, "")
        for bad in ({"vpn_ip6": "10.0.0.1"}, {"vpn_ip6": "fd7a::/48"}, {"vpn_subnet6": "10.99.0.0/16"}, {"vpn_subnet6": "fd7a::1/48"}):
            with self.assertRaises(ProtocolError, msg=bad):
                RegisterAnswer.from_json({"vpn_ip": "10.99.0.7", **bad})

    def test_peer_view(self):
        view = dict(body_for("web1"), vpn_ip="10.99.0.8", vpn_ip6="fd7a:115c:a1e0::8")
        self.assertEqual(PeerView.from_json(view).vpn_ip6, "fd7a:115c:a1e0::8")
        with self.assertRaises(ProtocolError):
            PeerView.from_json(dict(view, vpn_ip6="10.99.0.9"))
