"""The relay's kernel path without shims: side ports, bind frames from
WireGuard's port, the table's rules for WireGuard's own packets, and the
node pointing WireGuard at the server's port and back to its shim."""

from __future__ import annotations

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from tests.fakes import FakeProcessRunner, FakeRawSender, UDPClock
from wire.node.relay import KEEPALIVE_INTERVAL, KERNEL_VALID, RECENT_KERNEL_ENDPOINT, RelayShim
from wire.protocol import RelayGrant
from wire.relayproto import KERNEL_PATH, OVERHEAD, REFRESH_PEER, TO_NODE, TO_SERVER, FrameKey, read_header
from wire.server.fastpath import ON, REBUILD_EVERY, FastSide, RelayFastPath, ruleset
from wire.server.relay import RelayTable
from wire.server.relayports import DirectPorts, parse_port_range
from wire.stun.rawport import checksum, udp_packet

PORT = 8788
LOW, HIGH = 8790, 8793
SERVER_IP = "192.0.2.1"
# The shims' sockets, and the two WireGuards, as the server sees them.
A, B = ("198.51.100.1", 40000), ("203.0.113.2", 50000)
A_WG, B_WG, B_WG2 = ("198.51.100.1", 1025), ("203.0.113.2", 2048), ("203.0.113.2", 3333)
WG_PORT = 51820


class BusyClock(UDPClock):
    """Some ports of the range are another program's."""

    def __init__(self, busy=()) -> None:
        super().__init__()
        self.busy = set(busy)

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if port in self.busy:
            raise CannotListenError(interface, port, OSError("address in use"))
        return super().listenUDP(port, protocol, interface, maxPacketSize)


class Sides:
    """A relay table with side ports, the fast path on, and two nodes' frames."""

    def __init__(self, clock: UDPClock, low=LOW, high=HIGH):
        self.clock = clock
        self.table = RelayTable(clock)
        self.outcomes: list[str] = []
        self.table.direct_ports = DirectPorts(clock, low, high, receive=lambda d, s, p: self.outcomes.append(self.table.bind(d, s, p)))
        self.table.offer_peer_keys = self.table.offer_direct = True
        self.told: list[tuple[bytes, tuple[str, int]]] = []
        self.table.send = lambda data, address: self.told.append((data, address))
        self.counters: dict[bytes, int] = {}

    def grant(self, node="a", peer="b", direct=True) -> RelayGrant:
        grant = self.table.grant(node, peer, PORT, fresh=True, fastpath=True, direct=direct)
        self.counters[grant.token] = 0
        return grant

    def frame(self, grant: RelayGrant, payload=b"", key=None) -> bytes:
        self.counters[grant.token] += 1
        return FrameKey(key or grant.key).seal(grant.token, TO_SERVER, self.counters[grant.token], payload)

    def keepalive(self, grant: RelayGrant, source) -> tuple:
        return self.table.handle(self.frame(grant), source)

    def bind(self, grant: RelayGrant, source, port=None, frame=None) -> str:
        """A datagram arriving at a side port's socket (the grant's own by default)."""
        port = grant.direct_port if port is None else port
        [listening] = [p for p in self.clock.listening() if p.port == port]
        listening.protocol.datagramReceived(self.frame(grant) if frame is None else frame, source)
        return self.outcomes[-1] if self.outcomes else ""

    def held(self) -> list[int]:
        return sorted(p.port for p in self.clock.listening())


class PortTests(unittest.TestCase):
    def test_a_side_gets_a_port_of_its_own_only_when_it_asks_and_the_kernel_path_is_on(self):
        sides = Sides(UDPClock())
        sides.table.offer_direct = False
        self.assertIsNone(sides.grant(direct=True).direct_port, "the fast path is off")
        sides.table.offer_direct = True
        self.assertIsNone(sides.table.grant("a", "b", PORT, fastpath=True).direct_port, "not asked")
        a = sides.table.grant("a", "b", PORT, fastpath=True, direct=True)
        b = sides.table.grant("b", "a", PORT, fastpath=True, direct=True)
        self.assertEqual((a.direct_port, b.direct_port), (LOW, LOW + 1))
        self.assertEqual(sides.held(), [LOW, LOW + 1], "each port listened on")
        self.assertEqual(sides.table.grant("a", "b", PORT, fastpath=True, direct=True, held=a.token).direct_port, LOW, "kept")
        self.assertEqual(RelayGrant.from_json(a.to_json()).direct_port, LOW)

    def test_ports_are_freed_when_their_sides_end(self):
        clock = UDPClock()
        sides = Sides(clock)
        a, b = sides.grant("a", "b"), sides.grant("b", "a")
        sides.keepalive(a, A)  # a verified side: a fresh grant replaces it
        again = sides.grant("a", "b")
        self.assertNotEqual(again.token, a.token)
        self.assertEqual(again.direct_port, LOW, "the old side's port was freed, and is the lowest free")
        self.assertEqual(sides.held(), [LOW, LOW + 1])
        sides.table.end_sessions_of("b")
        self.assertEqual(sides.held(), [], "a removed node's sessions free theirs")
        sides.grant("a", "c"), sides.grant("c", "a")
        clock.advance(sides.table.idle_timeout + 1)
        sides.table.expire()
        self.assertEqual(sides.held(), [], "an expired session frees its ports")
        self.assertEqual(b.direct_port, LOW + 1)

    def test_exhaustion_and_busy_ports_leave_sides_on_the_shim(self):
        clock = BusyClock(busy={LOW + 1})
        sides = Sides(clock)
        ports = [sides.grant(n, "hub").direct_port for n in ("a", "b", "c")]
        self.assertEqual(ports, [LOW, LOW + 2, LOW + 3], "the busy port is skipped")
        self.assertEqual(sides.grant("hub", "a").direct_port, None, "all held: a grant without one")
        sides.table.end_sessions_of("b")
        self.assertEqual(sides.grant("hub", "c").direct_port, LOW + 2, "freed, given again")

    def test_the_port_range_option(self):
        self.assertEqual(parse_port_range("8790-8989"), (8790, 8989))
        self.assertIsNone(parse_port_range("off"))
        self.assertIsNone(parse_port_range(""))
        for bad in ("8790", "9-8", "a-b", "0-10", "1-70000", "-5"):
            self.assertRaises(ValueError, parse_port_range, bad)


class OptionTests(unittest.TestCase):
    def options(self, *args):
        from wire.server.options import Options

        options = Options()
        options.parseOptions(["--open", "--data-dir", self.mktemp(), *args])
        return options

    def test_a_default_range_beside_the_servers_ports_and_clear_errors(self):
        from twisted.python.usage import UsageError

        self.assertEqual(self.options()["relay-direct-ports"], (8790, 8989))
        self.assertEqual(self.options("--port", "9000")["relay-direct-ports"], (9003, 9202))
        self.assertIsNone(self.options("--relay-direct-ports", "off")["relay-direct-ports"])
        with self.assertRaises(UsageError) as e:
            self.options("--relay-direct-ports", "8780-8788")
        self.assertIn("overlaps the server's ports 8787-8789", str(e.exception))
        with self.assertRaises(UsageError) as e:
            self.options("--relay-direct-ports", "lots")
        self.assertIn("--relay-direct-ports", str(e.exception))

    def test_the_relays_rate_limit_per_side(self):
        from twisted.python.usage import UsageError

        self.assertEqual(self.options()["rate-limit-relay"], (50 * 1024 * 1024, 4 * 1024 * 1024))
        self.assertEqual(self.options("--rate-limit-relay", "200/8")["rate-limit-relay"], (200 * 1024 * 1024, 8 * 1024 * 1024))
        with self.assertRaises(UsageError) as e:
            self.options("--rate-limit-relay", "fast")
        self.assertIn("--rate-limit-relay", str(e.exception))


class BindTests(unittest.TestCase):
    def setUp(self):
        self.sides = Sides(UDPClock())
        self.a, self.b = self.sides.grant("a", "b"), self.sides.grant("b", "a")
        self.changes: list[int] = []
        self.sides.table.on_change = lambda: self.changes.append(1)

    def side(self, grant):
        [session] = self.sides.table.sessions()
        return next(s for s in session.sides.values() if s.token == grant.token)

    def test_a_bind_tells_where_wireguard_is(self):
        self.assertEqual(self.sides.bind(self.a, A_WG), "relay_bound")
        self.assertEqual(self.side(self.a).wg_address, A_WG)
        self.assertIsNone(self.side(self.a).address, "the shim's address is another thing")
        self.assertEqual(len(self.changes), 1)
        self.assertEqual(self.sides.bind(self.a, A_WG), "relay_bound")
        self.assertEqual(len(self.changes), 1, "told once per new address")
        self.assertEqual(self.sides.table.direct_candidates(), [], "one side bound")
        self.sides.bind(self.b, B_WG)
        self.assertEqual(len(self.sides.table.direct_candidates()), 1)

    def test_forged_replayed_misdirected_or_garbage_binds_move_nothing(self):
        sides, a = self.sides, self.a
        self.assertEqual(sides.bind(a, A_WG, frame=sides.frame(a, key=bytes(32))), "relay_forged", "a bad MAC")
        captured = sides.frame(a)
        self.assertEqual(sides.bind(a, A_WG, frame=captured), "relay_bound")
        self.assertEqual(sides.bind(a, ("192.0.2.66", 1), frame=captured), "relay_replay", "replayed from elsewhere")
        self.assertEqual(sides.bind(a, ("192.0.2.66", 1), port=self.b.direct_port), "relay_forged", "on the other side's port")
        self.assertEqual(sides.bind(a, A_WG, frame=sides.frame(a, b"payload")), "relay_forged", "a bind carries nothing")
        self.assertEqual(sides.bind(a, A_WG, frame=b"\x01\x00\x00\x00junk"), "relay_malformed", "WireGuard's or junk")
        self.assertEqual(self.side(a).wg_address, A_WG)
        self.assertEqual(len(self.changes), 1)
        # The frame sent to the wrong port spent nothing: a's next counter still binds.
        self.assertEqual(sides.bind(a, A_WG), "relay_bound")
        self.assertEqual(sides.table.bind(sides.frame(a), A_WG, HIGH), "relay_unknown", "a port nobody holds")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def test_any_datagram_on_a_side_port_is_answered_by_an_outcome(self, data):
        before = self.side(self.a).wg_address
        outcome = self.sides.table.bind(data, ("192.0.2.99", 9), self.a.direct_port)
        self.assertIn(outcome, ("relay_malformed", "relay_unknown", "relay_forged", "relay_replay"))
        self.assertEqual(self.side(self.a).wg_address, before)

    def test_wireguard_packets_on_a_port_the_kernel_should_forward_say_so(self):
        missed: list[int] = []
        self.sides.table.on_kernel_missed = lambda: missed.append(1)
        self.sides.bind(self.a, A_WG)
        self.sides.bind(self.a, A_WG, frame=b"\x04\x00\x00\x00" + bytes(60))
        self.assertEqual(missed, [], "not in the kernel: nothing amiss")
        self.sides.table.set_kernel(frozenset({self.a.token}))
        self.sides.bind(self.a, ("192.0.2.66", 1), frame=b"\x04\x00\x00\x00" + bytes(60))
        self.assertEqual(missed, [], "a stranger's packets say nothing of the kernel")
        self.sides.bind(self.a, A_WG, frame=b"\x04\x00\x00\x00" + bytes(60))
        self.assertEqual(missed, [1])


class RulesetTests(unittest.TestCase):
    def test_wireguards_packets_by_port(self):
        side = FastSide("s1", b"T" * 8, A_WG, B_WG, LOW, LOW + 1, sealed=False)
        lines = ruleset(PORT, frozenset({side}), 100, 10).splitlines()
        # The table around them is the sealed path's (tests.test_fastpath); the side's own lines:
        for line in (
            "\tcounter d5454545454545454 { }",
            "\t\tudp dport 8790 ip saddr 198.51.100.1 udp sport 1025 dnat to 203.0.113.2:2048",
            "\t\tip saddr 198.51.100.1 udp sport 1025 ip daddr 203.0.113.2 udp dport 2048"
            ' counter name "d5454545454545454" limit rate over 100 bytes/second burst 10 bytes drop',
            "\t\tip saddr 198.51.100.1 udp sport 1025 ip daddr 203.0.113.2 udp dport 2048 masquerade to :8791",
        ):
            self.assertIn(line, lines)
        self.assertEqual(len([x for x in lines if "dnat" in x or "masquerade" in x or "limit" in x]), 3, "one of each")
        self.assertNotIn("@th", "\n".join(lines), "WireGuard's packets carry no token")


def flush(address, port) -> list[str]:
    return ["conntrack", "-D", "-p", "udp", "-s", address[0], "--sport", str(address[1]), "--dport", str(port)]


def answer_flags(side_grant: RelayGrant, frame: bytes) -> int:
    """The flags of a keepalive answer the server sent to a side."""
    token, direction, _ = read_header(frame)
    assert (token, direction) == (side_grant.token, TO_NODE) and FrameKey(side_grant.key).authentic(frame)
    return frame[OVERHEAD - 16] if len(frame) > OVERHEAD else 0


class ServiceTests(unittest.TestCase):
    def setUp(self):
        self.clock = UDPClock()
        self.sides = Sides(self.clock)
        self.runner = FakeProcessRunner()
        self.fp = RelayFastPath(self.clock, self.runner, self.sides.table, PORT, 100, 10, is_root=lambda: True, forwarding_on=lambda: True)
        self.runner.expect(["conntrack", "--version"])
        self.runner.expect(["nft", "-f", "-"])
        self.runner.expect(["conntrack", "-D", "-p", "udp", "--dport", str(PORT)], rc=1)
        self.runner.expect(["conntrack", "-D", "-p", "udp", "--dport", f"{LOW}-{HIGH}"], rc=1)
        self.sides.table.offer_direct = False
        self.fp.startService()
        self.successResultOf(self.fp.ready)
        self.runner.assert_all_called()
        self.assertEqual((self.fp.state, self.sides.table.offer_direct), (ON, True))

    def bound(self) -> tuple[RelayGrant, RelayGrant]:
        """Both shims heard from, and both WireGuards bound."""
        a, b = self.sides.grant("a", "b"), self.sides.grant("b", "a")
        self.sides.keepalive(a, A)
        self.sides.keepalive(b, B)
        self.sides.bind(a, A_WG)
        self.sides.bind(b, B_WG)
        return a, b

    def expect_install(self, a: RelayGrant, b: RelayGrant) -> None:
        """The table, then the flows of both WireGuards' addresses."""
        self.runner.expect(["nft", "-f", "-"])
        for address, port in sorted({(A_WG, a.direct_port), (B_WG, b.direct_port)}):
            self.runner.expect(flush(address, port))
        self.clock.advance(0)
        self.runner.assert_all_called()

    def both_bound(self) -> tuple[RelayGrant, RelayGrant]:
        a, b = self.bound()
        self.expect_install(a, b)
        return a, b

    def test_both_sides_bound_go_into_the_kernel_and_are_told(self):
        a, b = self.both_bound()
        text = self.runner.calls[-3].stdin.decode()
        self.assertIn(f"udp dport {a.direct_port} ip saddr {A_WG[0]} udp sport {A_WG[1]} dnat to {B_WG[0]}:{B_WG[1]}", text)
        self.assertIn(f"udp dport {b.direct_port} ip saddr {B_WG[0]} udp sport {B_WG[1]} dnat to {A_WG[0]}:{A_WG[1]}", text)
        self.assertIn(f"masquerade to :{b.direct_port}", text)
        self.assertNotIn("@th,96,64", text, "the shims' frames stay in Python: their keepalives are answered")
        self.assertEqual((self.fp.sessions_on, self.fp.direct_sessions_on), (1, 1))
        self.assertEqual(self.sides.table.kernel, {a.token, b.token})
        told = {address: answer_flags(a if address == A else b, data) for data, address in self.sides.told}
        self.assertEqual(told, {A: KERNEL_PATH, B: KERNEL_PATH}, "each side told at once, on its shim channel")
        _, answer, _ = self.sides.keepalive(a, A)
        self.assertEqual(answer_flags(a, answer), KERNEL_PATH, "and in every keepalive answer")

        # B's NAT rebinds WireGuard's flow: its next bind comes from elsewhere
        # (no rule matches it, so it reaches the socket), and the side moves.
        self.assertEqual(self.sides.bind(b, B_WG2), "relay_bound")
        self.runner.expect(["nft", "-f", "-"])
        for address, port in sorted({(A_WG, a.direct_port), (B_WG, b.direct_port), (B_WG2, b.direct_port)}):
            self.runner.expect(flush(address, port))
        self.clock.advance(0)
        self.runner.assert_all_called()
        self.assertIn(f"dnat to {B_WG2[0]}:{B_WG2[1]}", self.runner.calls[-4].stdin.decode())

        # The server stops: the table goes, the sides are told, the ports freed.
        self.sides.told.clear()
        self.runner.expect(["nft", "delete", "table", "ip", "wire_relay_8788"])
        for address, port in sorted({(A_WG, a.direct_port), (B_WG2, b.direct_port)}):
            self.runner.expect(flush(address, port), rc=1)
        self.successResultOf(self.fp.stopService())
        self.runner.assert_all_called()
        self.assertEqual(self.sides.held(), [])
        self.assertEqual(self.sides.table.kernel, frozenset())
        self.assertEqual({address: answer_flags(a if address == A else b, data) for data, address in self.sides.told}, {A: 0, B: 0})

    def test_wireguard_packets_reaching_a_port_rebuild_the_table_now_and_then(self):
        a, b = self.both_bound()
        junk = b"\x04\x00\x00\x00" + bytes(60)
        self.sides.bind(a, A_WG, frame=junk)
        self.expect_install(a, b)
        self.sides.bind(a, A_WG, frame=junk)
        self.clock.advance(REBUILD_EVERY / 2)
        self.runner.assert_all_called()  # not again so soon
        self.assertEqual(self.sides.told[2:], [], "no side's state changed: nobody told anything")

    def test_a_session_that_loses_its_wireguard_rules_goes_back_to_the_shims_in_the_kernel(self):
        a, b = self.both_bound()
        self.sides.told.clear()
        # B's node restarts without a raw socket: a fresh side, no port.
        b2 = self.sides.table.grant("b", "a", PORT, fresh=True, fastpath=True)
        self.sides.counters[b2.token] = 0
        self.sides.keepalive(b2, B)
        self.sides.table.grant("a", "b", PORT, fresh=True, fastpath=True, direct=True, held=a.token)
        self.runner.expect(["nft", "-f", "-"])
        for address, port in sorted({(A, PORT), (B, PORT), (A_WG, a.direct_port), (B_WG, b.direct_port)}):
            self.runner.expect(flush(address, port))
        self.clock.advance(0)
        self.runner.assert_all_called()
        text = self.runner.calls[-5].stdin.decode()
        self.assertIn("@th,96,64 0x" + a.token.hex(), text)
        self.assertNotIn(f"udp dport {a.direct_port}", text)
        self.assertEqual(self.sides.table.kernel, frozenset())
        self.assertEqual([(answer_flags(a, data), address) for data, address in self.sides.told], [(0, A)], "A told: the shim again")

    def test_an_nft_failure_frees_the_ports(self):
        self.bound()
        self.runner.expect(["nft", "-f", "-"], rc=1, stderr=b"Error")
        self.runner.expect(["nft", "delete", "table", "ip", "wire_relay_8788"])
        self.clock.advance(0)
        self.runner.assert_all_called()
        self.assertEqual(self.sides.held(), [])
        self.assertEqual((self.sides.table.kernel, self.sides.told), (frozenset(), []), "never forwarded: nothing to take back")
        self.assertIsNone(self.sides.grant("c", "a").direct_port, "no more side ports this run")


class RawPacketTests(unittest.TestCase):
    def test_the_internet_checksum(self):
        # RFC 1071's example: the sum of 0001 f203 f4f5 f6f7 is ddf2 (one's complement).
        self.assertEqual(checksum(bytes.fromhex("0001f203f4f5f6f7")), 0xFFFF - 0xDDF2)
        self.assertEqual(checksum(b"\x01"), 0xFFFF - 0x0100, "an odd byte is padded")

    def test_a_udp_packet_with_and_without_a_checksum(self):
        ips = ("10.0.0.2", "192.0.2.1")
        packet = udp_packet(51820, 8790, b"bind frame", ips)
        sport, dport, length, _ = struct.unpack("!HHHH", packet[:8])
        self.assertEqual((sport, dport, length, packet[8:]), (51820, 8790, 18, b"bind frame"))
        pseudo = socket.inet_aton(ips[0]) + socket.inet_aton(ips[1]) + struct.pack("!BBH", 0, 17, length)
        self.assertEqual(checksum(pseudo + packet), 0, "a receiver's sum over it all checks")
        self.assertEqual(udp_packet(51820, 8790, b"x")[6:8], b"\x00\x00", "no addresses: no checksum (IPv4 allows it)")


class ShimTests(unittest.TestCase):
    """The node: binds from WireGuard's port, and WireGuard's endpoint for
    the peer follows what the server says."""

    def setUp(self):
        self.clock = UDPClock()
        self.raw = FakeRawSender()
        self.shim = RelayShim(self.clock, SERVER_IP, PORT, WG_PORT, raw=self.raw)
        self.moved: list[str] = []
        self.shim.on_path_changed = self.moved.append
        self.sides = Sides(self.clock, 9000, 9010)
        self.addCleanup(lambda: Deferred.fromCoroutine(self.shim.stop()))
        self.grant = self.sides.grant("a", "b")
        self.endpoint = self.successResultOf(Deferred.fromCoroutine(self.shim.add(self.grant)))
        [self.session] = self.shim.sessions().values()

    def answer(self, flags: int = 0) -> None:
        [session] = self.sides.table.sessions()
        side = session.sides["a"]
        frame = side.wrap(bytes([flags]) if flags else b"")
        [upstream] = [p for p in self.clock.listening() if p.host != "127.0.0.1" and p.protocol is not None and p.written]
        upstream.protocol.datagramReceived(frame, (SERVER_IP, PORT))

    def test_no_raw_socket_no_asking(self):
        self.assertFalse(RelayShim(self.clock, SERVER_IP, PORT, WG_PORT).direct)
        self.assertFalse(RelayShim(self.clock, SERVER_IP, PORT, WG_PORT, raw=FakeRawSender(available=False)).direct)
        self.assertTrue(self.shim.direct)

    def test_binds_come_from_wireguards_port_and_verify_at_the_server(self):
        self.assertTrue(self.endpoint.startswith("127.0.0.1:"), "the shim until the server says otherwise")
        [(source_port, destination, frame)] = self.raw.sent
        self.assertEqual((source_port, destination), (WG_PORT, (SERVER_IP, self.grant.direct_port)))
        self.assertEqual(self.sides.table.bind(frame, A_WG, self.grant.direct_port), "relay_bound")
        self.clock.advance(KEEPALIVE_INTERVAL)
        self.assertEqual(len(self.raw.sent), 2, "again every keepalive round: the mapping stays fresh")
        self.assertEqual(self.sides.table.bind(self.raw.sent[1][2], A_WG, self.grant.direct_port), "relay_bound")

    def test_the_endpoint_follows_the_servers_word_and_its_silence(self):
        kernel = f"{SERVER_IP}:{self.grant.direct_port}"
        self.answer(KERNEL_PATH)
        self.assertEqual((self.session.wg_endpoint, self.moved), (kernel, ["b"]))
        self.answer(KERNEL_PATH | REFRESH_PEER[0])
        self.assertEqual((self.session.wg_endpoint, self.moved), (kernel, ["b"]), "still on; no move")
        self.answer(0)
        self.assertEqual((self.session.wg_endpoint, self.moved), (self.session.endpoint, ["b", "b"]), "not forwarded: the shim")
        self.answer(KERNEL_PATH)
        self.assertEqual(self.session.wg_endpoint, kernel)
        self.clock.advance(KERNEL_VALID + KEEPALIVE_INTERVAL)
        self.assertEqual(self.session.wg_endpoint, self.session.endpoint, "the server went silent: the shim")
        self.assertEqual(self.moved, ["b", "b", "b", "b"])

    def test_a_kernel_endpoint_is_known_as_the_relays_for_a_while_after_its_session(self):
        # The server may go on forwarding an ended session for a moment, and
        # WireGuard roams to where that comes from: the reconciler must know
        # that endpoint for the relay's, not a peer's.
        kernel = f"{SERVER_IP}:{self.grant.direct_port}"
        self.assertIn(kernel, self.shim.kernel_endpoints(), "a live session's")
        self.assertNotIn(f"{SERVER_IP}:51820", self.shim.kernel_endpoints(), "the server's host, another port: maybe a peer there")
        self.assertNotIn(None, self.shim.kernel_endpoints())
        self.successResultOf(Deferred.fromCoroutine(self.shim.remove("b")))
        self.assertIn(kernel, self.shim.kernel_endpoints(), "lately ended")
        self.clock.advance(RECENT_KERNEL_ENDPOINT)
        self.assertNotIn(kernel, self.shim.kernel_endpoints(), "long enough ago")

    def test_a_kernel_endpoint_left_for_another_port_is_still_the_relays(self):
        old = f"{SERVER_IP}:{self.grant.direct_port}"
        moved = RelayGrant.from_json({**self.grant.to_json(), "direct_port": self.grant.direct_port + 1})
        self.successResultOf(Deferred.fromCoroutine(self.shim.add(moved)))
        self.assertEqual(self.session.kernel_endpoint, f"{SERVER_IP}:{self.grant.direct_port + 1}")
        self.assertIn(old, self.shim.kernel_endpoints())

    def test_a_grant_without_a_port_or_a_session_that_ends(self):
        self.answer(KERNEL_PATH)
        plain = RelayGrant(self.grant.session_id, "b", self.grant.token, self.grant.key, PORT, self.grant.peer_token, self.grant.peer_key)
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(self.shim.add(plain))).startswith("127.0.0.1:"))
        self.assertIsNone(self.session.direct_port)
        self.answer(KERNEL_PATH)
        self.assertEqual(self.session.wg_endpoint, self.session.endpoint, "no port of ours: the flag means nothing")
