"""The protocol's message types: each end builds what the other parses, and
nothing the network sends gets past a parser as anything but a ProtocolError."""

import base64
import json

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from tests.helpers import make_coordinator, registration_for
from wire.protocol import (
    NAT_TYPES,
    Cursor,
    Heartbeat,
    LeaveRequest,
    NatType,
    NetmapAnswer,
    PathMode,
    PeerView,
    ProtocolError,
    PunchAnswer,
    RegisterAnswer,
    Registration,
    RelayGrant,
    RelayRequest,
    error_body,
    error_message,
    parse_cursor_text,
    parse_enrollment,
    parse_registration,
    peer_view_json,
)
from wire.protocol.peers import RECORD_FIELDS
from wire.server.model import SERVER_ONLY_FIELDS, SHOWN_WHEN_SET_FIELDS, NodeRecord

KEY = base64.b64encode(bytes(range(32))).decode()

# Values every parser meets: JSON's types, and nothing else (a body is JSON).
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=12,
)
node_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
names = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?\Z")
keys = st.binary(min_size=32, max_size=32).map(lambda raw: base64.b64encode(raw).decode())
ports = st.integers(1, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
addresses = st.one_of(ipv4, st.ip_addresses(v=6).map(str))
nat_types = st.sampled_from(list(NatType))

registrations = st.builds(
    Registration,
    node_id=node_ids,
    node_name=names,
    wg_public_key=keys,
    port=ports,
    nat_port=ports,
    lan_ip=st.one_of(st.none(), addresses),
    requested_vpn_ip=st.one_of(st.none(), ipv4),
    nat_type=nat_types,
)


class EnumTests(unittest.TestCase):
    def test_members_are_their_strings_on_the_wire(self):
        self.assertEqual(NAT_TYPES, ("unknown", "none", "easy", "hard"))
        self.assertEqual(json.dumps({"nat_type": NatType.HARD, "path": PathMode.RELAY}), '{"nat_type": "hard", "path": "relay"}')
        self.assertEqual(f"{PathMode.RELAY}: x", "relay: x")
        self.assertEqual([m.value for m in PathMode], ["direct", "lan", "relay", "relay-tcp", "connecting", "none"])


class RegistrationTests(unittest.TestCase):
    @settings(max_examples=200)
    @given(registrations)
    def test_the_body_parses_back_to_the_registration(self, registration):
        body = json.loads(json.dumps(registration.as_body()))
        self.assertEqual(parse_registration(body), registration)
        join_key, enrolled = parse_enrollment(json.loads(json.dumps(registration.enrollment_body("s3cret"))))
        self.assertEqual((join_key, enrolled), ("s3cret", registration))

    def test_the_body_is_the_seeds(self):
        registration = Registration("a1b2c3", "web1", KEY, 51820, 54321, "192.168.1.5")
        self.assertEqual(
            registration.as_body(),
            {"node_id": "a1b2c3", "node_name": "web1", "wg_public_key": KEY, "port": 51820, "nat_port": 54321, "lan_ip": "192.168.1.5"},
        )
        extras = Registration("a1b2c3", "web1", KEY, nat_type=NatType.EASY, requested_vpn_ip="10.99.0.9").as_body()
        self.assertEqual((extras["nat_type"], extras["vpn_ip"]), ("easy", "10.99.0.9"))

    def test_enrollment_needs_a_join_key(self):
        for body in ({}, {"join_key": ""}, {"join_key": 5}):
            with self.assertRaises(ProtocolError) as caught:
                parse_enrollment({**registration_for("web1").as_body(), **body})
            self.assertEqual(caught.exception.field, "join_key")


class RegisterAnswerTests(unittest.TestCase):
    def test_the_servers_answer_parses_back(self):
        coordinator = make_coordinator(self)
        result = coordinator.registry.register(registration_for("web1"), "203.0.113.5", coordinator.now())
        answer = coordinator.registered_answer(result.record, "203.0.113.5", credential="c" * 40)
        body = json.loads(json.dumps(answer.to_json()))
        self.assertEqual(
            sorted(body),
            sorted(["ok", "vpn_ip", "your_ip", "node_id", "node_name", "vpn_subnet", "offline_after", "cursor", "credential", "vpn_ip6", "vpn_subnet6"]),
        )
        self.assertEqual(RegisterAnswer.from_json(body), answer)

    def test_the_seeds_answer_is_enough(self):
        answer = RegisterAnswer.from_json({"ok": True, "vpn_ip": "10.99.23.187", "your_ip": "198.51.100.1"})
        self.assertEqual((answer.vpn_ip, answer.node_name, answer.heartbeat, answer.credential), ("10.99.23.187", "", Heartbeat.REGISTER, None))

    def test_bad_fields_are_named(self):
        good = {"vpn_ip": "10.99.0.2", "node_name": "web1", "vpn_subnet": "10.99.0.0/16", "cursor": "e1:4"}
        for field, value in [
            ("vpn_ip", "10.99.0.2; reboot"),
            ("vpn_ip", None),
            ("node_name", "web 1"),
            ("vpn_subnet", "10.99.0.1/16"),
            ("cursor", "e1:4&wait=0"),
            ("credential", "x" * 201),
            ("offline_after", "soon"),
        ]:
            with self.assertRaises(ProtocolError, msg=f"{field}={value!r}") as caught:
                RegisterAnswer.from_json({**good, field: value})
            self.assertEqual(caught.exception.field, field)

    @settings(max_examples=200)
    @given(st.dictionaries(st.sampled_from(["vpn_ip", "your_ip", "node_id", "node_name", "vpn_subnet", "offline_after", "cursor", "heartbeat", "credential"]), json_values))
    def test_any_answer_is_taken_or_refused_cleanly(self, body):
        try:
            RegisterAnswer.from_json(body)
        except ProtocolError:
            pass


def record(name="db1", **fields) -> NodeRecord:
    values = dict(
        node_id=f"id-{name}", node_name=name, wg_public_key=KEY, vpn_ip="10.99.1.2", public_ip="203.0.113.2",
        port=51820, nat_port=40000, lan_ip="192.168.1.2", nat_type="easy", registered=1000.0, last_seen=1990.5,
    )
    values.update(fields)
    return NodeRecord(**values)


class PeerViewTests(unittest.TestCase):
    def test_the_record_is_what_a_view_shows(self):
        # All but what only the server holds (the routes a node advertises and
        # has approved: a view shows those it serves, Registry.view), and
        # what a view carries only when set (the IPv6 address).
        apart = SERVER_ONLY_FIELDS + SHOWN_WHEN_SET_FIELDS
        self.assertEqual(tuple(f for f in NodeRecord.__dataclass_fields__ if f not in apart), RECORD_FIELDS)
        self.assertIs(record().nat_type, NatType.EASY, "a stored row's text becomes the enum")
        self.assertIs(record(nat_type="from-the-future").nat_type, NatType.UNKNOWN)

    def test_the_servers_view_parses_back(self):
        view = json.loads(json.dumps(peer_view_json(record(), True, 2000.0)))
        self.assertEqual(
            list(view),
            [*RECORD_FIELDS, "online", "status", "last_seen_ago"],
            "the seed's fields, in the seed's order",
        )
        self.assertEqual((view["status"], view["last_seen_ago"], view["nat_type"]), ("online", 9, "easy"))
        peer = PeerView.from_json(view)
        self.assertEqual(
            peer,
            PeerView(
                node_id="id-db1", node_name="db1", vpn_ip="10.99.1.2", wg_public_key=KEY, public_ip="203.0.113.2",
                nat_port=40000, port=51820, lan_ip="192.168.1.2", nat_type=NatType.EASY, online=True,
                registered=1000.0, last_seen=1990.5,
            ),
        )

    def test_the_seeds_sparse_view(self):
        peer = PeerView.from_json({"node_id": "n1", "vpn_ip": "10.99.0.3", "wg_public_key": KEY, "port": 4000, "nat_type": "new-kind"})
        self.assertEqual((peer.nat_port, peer.public_ip, peer.lan_ip, peer.online, peer.nat_type), (4000, "", "", True, NatType.UNKNOWN))

    def test_what_would_reach_wireguard_is_checked(self):
        good = peer_view_json(record(), True, 2000.0)
        for field, value in [
            ("node_id", "a b"),
            ("vpn_ip", "10.99.1.2/0"),
            ("wg_public_key", "x"),
            ("public_ip", "203.0.113.2\nEndpoint = 1.2.3.4"),
            ("lan_ip", "lan"),
            ("port", 70000),
            ("nat_port", "1"),
            ("last_seen", "yesterday"),
        ]:
            with self.assertRaises(ProtocolError, msg=field) as caught:
                PeerView.from_json({**good, field: value})
            self.assertEqual(caught.exception.field, field)


    @settings(max_examples=300)
    @given(st.dictionaries(st.sampled_from([*RECORD_FIELDS, "online", "status", "last_seen_ago"]), json_values))
    def test_any_view_is_taken_or_refused_cleanly(self, view):
        try:
            peer = PeerView.from_json(view)
        except ProtocolError:
            return
        # What passes is inert where it reaches WireGuard or a route.
        for value in (peer.node_id, peer.wg_public_key, peer.vpn_ip, peer.public_ip, peer.lan_ip):
            self.assertRegex(value, r"^[A-Za-z0-9+/=_.:-]*$")
        self.assertIn(peer.nat_type, NAT_TYPES)
        self.assertTrue(1 <= peer.port <= 65535 and 1 <= peer.nat_port <= 65535)


class NetmapAnswerTests(unittest.TestCase):
    def test_the_servers_answer_parses_back(self):
        coordinator = make_coordinator(self)
        for name in ("web1", "db1"):
            coordinator.registry.register(registration_for(name), "203.0.113.5", coordinator.now())
        body = json.loads(json.dumps(coordinator.registry.netmap_since(Cursor("x", 0), coordinator.now())))
        answer = NetmapAnswer.from_json(body)
        self.assertEqual((answer.cursor, answer.full, answer.removals, answer.register, answer.skipped), (body["cursor"], True, (), False, ()))
        self.assertEqual(sorted(p.node_name for p in answer.upserts), ["db1", "web1"])

    def test_a_bad_entry_costs_only_itself(self):
        good = peer_view_json(record(), True, 2000.0)
        answer = NetmapAnswer.from_json(
            {"cursor": "e:5", "full": False, "upserts": [good, {**good, "wg_public_key": "bad"}, 7], "removals": ["gone", "not an id", None]}
        )
        self.assertEqual([p.node_id for p in answer.upserts], ["id-db1"])
        self.assertEqual(answer.removals, ("gone",))
        self.assertEqual(len(answer.skipped), 4)
        self.assertIn("wg_public_key", answer.skipped[0])

    def test_the_frame_is_checked(self):
        for body in ([], {"upserts": {}}, {"removals": "x"}, {"full": "yes"}, {"register": 1}, {"cursor": "e:1 HTTP/1.1"}, {"cursor": 5}):
            with self.assertRaises(ProtocolError, msg=repr(body)):
                NetmapAnswer.from_json(body)
        self.assertTrue(NetmapAnswer.from_json({"cursor": "e:1", "register": True}).register)
        self.assertIsNone(NetmapAnswer.from_json({}).cursor, "no cursor: the node keeps its own")

    @settings(max_examples=300)
    @given(st.dictionaries(st.sampled_from(["cursor", "full", "upserts", "removals", "register"]), json_values))
    def test_any_answer_is_taken_or_refused_cleanly(self, body):
        try:
            answer = NetmapAnswer.from_json(body)
        except ProtocolError:
            return
        for peer in answer.upserts:
            self.assertRegex(peer.wg_public_key, r"^[A-Za-z0-9+/=]+$")

    def test_cursor_text(self):
        self.assertEqual(parse_cursor_text("3f9a1c2b7d4e:42"), "3f9a1c2b7d4e:42")
        self.assertEqual(parse_cursor_text("0"), "0")
        for bad in ("", "e:x", "e&x:1", "é:1", "e:1?", None):
            self.assertRaises(ProtocolError, parse_cursor_text, bad)


class RelayTests(unittest.TestCase):
    GRANT = RelayGrant("0123456789abcdef", "db1", b"T" * 8, bytes(range(32)), 8788)

    def test_the_grant_parses_back(self):
        body = json.loads(json.dumps(self.GRANT.to_json()))
        self.assertEqual(body, {"session_id": "0123456789abcdef", "peer_node_id": "db1", "token": "5454545454545454", "key": base64.b64encode(bytes(range(32))).decode(), "relay_port": 8788})
        self.assertEqual(RelayGrant.from_json(body), self.GRANT)
        self.assertIsNone(RelayGrant.from_json({**body, "relay_port": None}).relay_port)

    def test_each_bad_field_is_named(self):
        good = self.GRANT.to_json()
        for field, value in [
            ("token", "54" * 7),
            ("token", "zz" * 8),
            ("token", None),
            ("key", base64.b64encode(b"k" * 31).decode()),
            ("key", "!!!"),
            ("session_id", "s" * 65),
            ("peer_node_id", "a b"),
            ("relay_port", 0),
        ]:
            with self.assertRaises(ProtocolError, msg=f"{field}={value!r}") as caught:
                RelayGrant.from_json({**good, field: value})
            self.assertEqual(caught.exception.field, field)

    @given(st.dictionaries(st.sampled_from(["session_id", "peer_node_id", "token", "key", "relay_port"]), json_values))
    def test_any_grant_is_taken_or_refused_cleanly(self, body):
        try:
            grant = RelayGrant.from_json(body)
        except ProtocolError:
            return
        self.assertEqual((len(grant.token), len(grant.key)), (8, 32))

    def test_a_fastpath_grant_carries_the_peer_side_and_an_old_one_parses_without(self):
        fast = RelayGrant("0123456789abcdef", "db1", b"T" * 8, bytes(range(32)), 8788, b"P" * 8, bytes(32))
        body = json.loads(json.dumps(fast.to_json()))
        self.assertEqual((body["peer_token"], body["peer_key"]), ("50" * 8, base64.b64encode(bytes(32)).decode()))
        self.assertEqual(RelayGrant.from_json(body), fast)
        self.assertNotIn("peer_token", self.GRANT.to_json(), "an older node sees the grant it knows")
        self.assertIsNone(RelayGrant.from_json(self.GRANT.to_json()).peer_key)
        for missing in ("peer_token", "peer_key"):
            half = {k: v for k, v in body.items() if k != missing}
            with self.assertRaises(ProtocolError) as caught:
                RelayGrant.from_json(half)
            self.assertEqual(caught.exception.field, missing)
        with self.assertRaises(ProtocolError):
            RelayGrant.from_json({**body, "peer_key": base64.b64encode(b"k" * 31).decode()})

    def test_request_and_punch_answer(self):
        asked = RelayRequest("web1", KEY, "db1")
        self.assertEqual(RelayRequest.from_json(asked.to_json()), asked)
        self.assertNotIn("fastpath", asked.to_json(), "an older server sees the request it knows")
        fast = RelayRequest("web1", KEY, "db1", fastpath=True)
        self.assertEqual(RelayRequest.from_json(fast.to_json()), fast)
        self.assertFalse(RelayRequest.from_json({**fast.to_json(), "fastpath": "yes"}).fastpath)
        self.assertEqual(PunchAnswer(1, False).to_json(), {"ok": True, "use_relay": False, "attempts": 1})
        self.assertEqual(PunchAnswer(3, True, self.GRANT).to_json()["relay"], self.GRANT.to_json())


class ErrorBodyTests(unittest.TestCase):
    def test_one_shape(self):
        self.assertEqual(error_body("node_id: is required"), {"error": "node_id: is required"})
        self.assertEqual(error_message(error_body("nope")), "nope")
        for junk in (None, [], {"error": ""}, {"message": "x"}, "text"):
            self.assertEqual(error_message(junk), "no error message")


class LeaveTests(unittest.TestCase):
    def test_round_trip_and_checks(self):
        leaving = LeaveRequest("web1", KEY)
        self.assertEqual(leaving.to_json(), {"node_id": "web1", "wg_public_key": KEY})
        self.assertEqual(LeaveRequest.from_json(leaving.to_json()), leaving)
        with self.assertRaises(ProtocolError) as caught:
            LeaveRequest.from_json({"node_id": "web1", "wg_public_key": "k"})
        self.assertEqual(caught.exception.field, "wg_public_key")
