import base64

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from wire.protocol import MAX_BODY_BYTES, ProtocolError, parse_json_object, parse_punch, parse_registration

KEY = base64.b64encode(bytes(range(32))).decode()


def registration(**fields):
    body = {"node_id": "a1b2c3d4e5f6", "node_name": "web1", "wg_public_key": KEY, "port": 51820}
    body.update(fields)
    return body


class RegistrationTests(unittest.TestCase):
    def test_seed_body(self):
        parsed = parse_registration(registration(nat_port=54321, lan_ip="192.168.1.5"))
        self.assertEqual((parsed.node_name, parsed.port, parsed.nat_port, parsed.lan_ip), ("web1", 51820, 54321, "192.168.1.5"))

    def test_nat_port_defaults_to_port(self):
        self.assertEqual(parse_registration(registration(port=4000)).nat_port, 4000)

    def test_name_is_lowercased(self):
        self.assertEqual(parse_registration(registration(node_name="Web-1")).node_name, "web-1")

    def test_each_bad_field_is_named(self):
        cases = {
            "node_id": [None, "", 5, "a b", "$(reboot)", "x" * 65, ["a"]],
            "node_name": ["web_1", "-web", "a" * 64, "web1;rm", 7, "web 1", "wéb"],
            "wg_public_key": ["abc", base64.b64encode(b"x" * 31).decode(), base64.b64encode(b"x" * 33).decode(), 1, KEY[:-1] + "\n"],
            "port": [0, 65536, "51820", True, 1.5, None],
            "nat_port": [0, "1", False],
            "lan_ip": ["10.0.0.0/8", "host.example", "1.2.3", 5],
            "vpn_ip": ["10.99.1.1/32", "nope"],
            "nat_type": ["weird", 3],
        }
        for field, values in cases.items():
            for value in values:
                with self.assertRaises(ProtocolError, msg=f"{field}={value!r}") as caught:
                    parse_registration(registration(**{field: value}))
                self.assertEqual(caught.exception.field, field, f"{field}={value!r}: {caught.exception}")

    @settings(max_examples=300)
    @given(st.dictionaries(st.sampled_from(["node_id", "node_name", "wg_public_key", "port", "nat_port", "lan_ip", "vpn_ip", "nat_type"]),
                           st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.lists(st.integers()))))
    def test_any_body_is_accepted_or_refused_cleanly(self, body):
        try:
            parsed = parse_registration(body)
        except ProtocolError:
            return
        # Whatever passes is inert: no whitespace or shell metacharacters.
        for value in (parsed.node_id, parsed.node_name, parsed.wg_public_key):
            self.assertRegex(value, r"^[A-Za-z0-9+/=_.-]+$")


class BodyTests(unittest.TestCase):
    def test_errors(self):
        for body, words in [
            (b"", "empty"),
            (b"{", "not valid JSON"),
            (b"[]", "list"),
            (b'"x"', "string"),
            (b"\xff\xfe", "UTF-8"),
            (b"[" * 30000 + b"]" * 30000, "nested"),
            (b"{}" + b" " * MAX_BODY_BYTES, "limit"),
        ]:
            with self.assertRaises(ProtocolError, msg=body[:10]) as caught:
                parse_json_object(body)
            self.assertIn(words, str(caught.exception))

    def test_punch(self):
        self.assertEqual(parse_punch({"from_vpn_ip": "10.99.1.1", "to_vpn_ip": "10.99.1.2"}).to_vpn_ip, "10.99.1.2")
        with self.assertRaises(ProtocolError):
            parse_punch({"from_vpn_ip": "10.99.1.1"})

    @given(st.binary(max_size=200))
    def test_garbage_bodies_never_raise_anything_else(self, body):
        try:
            parse_json_object(body)
        except ProtocolError:
            pass
