"""Hardening of the coordination server against hostile clients.

Rate limits per source address (HTTP 429 on registration and enrollment,
dropped STUN datagrams), X-Forwarded-For trusted only from configured
proxies, a bound on how long a request may take to arrive (slowloris), and
property tests over every API field and the UDP parsers: no input gets a
5xx, stores a bad value, or changes another node's record.

Everything runs in memory or on 127.0.0.1, on fake clocks.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport, MemoryReactorClock
from twisted.python import usage
from twisted.trial import unittest

from tests.helpers import body_for, make_coordinator, registration_for, settled
from wire.protocol import (
    parse_ip_address,
    parse_nat_type,
    parse_node_id,
    parse_node_name,
    parse_port,
    parse_registration,
    parse_wg_public_key,
)
from wire.relayproto import (
    MAGIC,
    MAX_PAYLOAD,
    OVERHEAD,
    TO_NODE,
    TO_SERVER,
    FrameKey,
    read_header,
)
from wire.server.api import ClientRules, build_root, forwarded_client
from wire.server.auth import Authority
from wire.server.metrics import ServerMetrics
from wire.server.netmap import MAX_WAIT_SECONDS
from wire.server.options import DEFAULT_RATE_LIMITS, Options
from wire.server.ratelimit import RateLimiter, address_key
from wire.server.relay import RelayTable
from wire.server.connguard import ConnectionGuard
from wire.server.tap import makeService
from wire.stun import StunServerProtocol, encode_binding_request, reply_limit
from wire.web import REQUEST_RECEIVE_TIMEOUT, DeadlineChannel, make_site

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)  # StubTreq's client address
SHELL_METACHARACTERS = ";|&$()`<>'\"\\\n\r\t *?[]{}!#~"


# -- the rate limiter ------------------------------------------------------


class RateLimiterTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.limiter = RateLimiter(rate=2, burst=3, clock=self.clock)

    def test_burst_then_rate(self):
        self.assertEqual([self.limiter.allow("a") for _ in range(4)], [True, True, True, False])
        self.assertEqual(self.limiter.retry_after("a"), 0.5)
        self.clock.advance(0.5)
        self.assertEqual([self.limiter.allow("a") for _ in range(2)], [True, False])

    def test_keys_are_independent(self):
        for _ in range(10):
            self.limiter.allow("flood")
        self.assertFalse(self.limiter.allow("flood"))
        self.assertTrue(self.limiter.allow("quiet"))
        self.assertEqual(self.limiter.retry_after("quiet"), 0)

    def test_refilled_keys_are_forgotten(self):
        self.limiter.allow("a")
        self.limiter.allow("b")
        self.clock.advance(1.5)  # burst / rate: both buckets are full again
        self.limiter.allow("c")
        self.assertEqual(len(self.limiter), 1)

    def test_memory_bound_evicts_the_least_recently_seen(self):
        limiter = RateLimiter(rate=1, burst=1, clock=self.clock, max_keys=2)
        limiter.allow("a")
        limiter.allow("b")
        limiter.allow("a")  # a is now the most recent
        limiter.allow("c")
        self.assertEqual(len(limiter), 2)
        self.assertFalse(limiter.allow("a"), "a was kept, still empty")
        self.assertTrue(limiter.allow("b"), "b was evicted and starts afresh")

    def test_a_clock_stepping_back_takes_nothing(self):
        self.limiter.allow("a")
        self.clock.rightNow -= 100
        self.assertEqual([self.limiter.allow("a") for _ in range(3)], [True, True, False])

    def test_bad_settings(self):
        for rate, burst in ((0, 1), (1, 0.5), (-1, 5)):
            self.assertRaises(ValueError, RateLimiter, rate, burst, self.clock)

    @settings(deadline=None, max_examples=200)
    @given(
        st.lists(st.tuples(st.integers(0, 30), st.floats(0, 2)), max_size=300),
        st.integers(1, 8),
    )
    def test_a_polite_key_is_never_starved(self, others, max_keys):
        """Whatever other keys do (flood, churn past max_keys), a key that
        calls no faster than the rate is always allowed, and memory stays bounded."""
        clock = Clock()
        limiter = RateLimiter(rate=4, burst=2, clock=clock, max_keys=max_keys)
        since_polite = 0.25
        for key, dt in others:
            clock.advance(dt)
            since_polite += dt
            limiter.allow(key)
            if since_polite >= 0.25:
                self.assertTrue(limiter.allow("polite"))
                since_polite = 0.0
            self.assertLessEqual(len(limiter), max_keys)

    @settings(deadline=None, max_examples=200)
    @given(st.lists(st.floats(0, 1), max_size=300))
    def test_never_more_than_burst_plus_rate(self, gaps):
        clock = Clock()
        limiter = RateLimiter(rate=5, burst=10, clock=clock)
        allowed = 0
        for gap in gaps:
            clock.advance(gap)
            allowed += limiter.allow("k")
            self.assertLessEqual(allowed, 10 + 5 * clock.seconds() + 1e-9)

    def test_address_keys(self):
        self.assertEqual(address_key("203.0.113.5"), "203.0.113.5")
        self.assertEqual(address_key("::ffff:203.0.113.5"), "203.0.113.5")
        # One IPv6 host owns a /64 and can use a new address for every request.
        self.assertEqual(address_key("2001:db8:1:2::5"), address_key("2001:db8:1:2:ffff::9"))
        self.assertNotEqual(address_key("2001:db8:1:2::5"), address_key("2001:db8:1:3::5"))
        self.assertEqual(address_key("fe80::1%eth0"), "fe80::/64")
        self.assertEqual(address_key("not an address"), "not an address")

    def test_the_default_register_limit_carries_a_site_of_heartbeating_nodes(self):
        """150 nodes behind one NAT, heartbeating every 30 s, never see a 429."""
        rate, burst = DEFAULT_RATE_LIMITS["register"]
        clock = Clock()
        limiter = RateLimiter(rate, burst, clock)
        for _ in range(5):  # rounds of 30 s
            for _ in range(150):
                clock.advance(30 / 150)
                self.assertTrue(limiter.allow("198.51.100.1"))


# -- X-Forwarded-For -------------------------------------------------------


PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ff::/48"))


class ForwardedForTests(unittest.TestCase):
    def test_trust_rules(self):
        for peer, header, client in [
            # Not from a proxy: the header is the client's own claim, ignored.
            ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
            ("10.0.0.1", "", "10.0.0.1"),
            ("10.0.0.1", "203.0.113.7", "203.0.113.7"),
            # The client's own X-Forwarded-For stands left of what the proxy appended.
            ("10.0.0.1", "1.2.3.4, 203.0.113.7", "203.0.113.7"),
            # Through two trusted proxies.
            ("10.0.0.1", "1.2.3.4, 203.0.113.7,10.0.0.2", "203.0.113.7"),
            # A proxy writing garbage: its own address is all we know.
            ("10.0.0.1", "203.0.113.7, unknown", "10.0.0.1"),
            ("10.0.0.1", "203.0.113.7, 10.0.0.2, 203.0.113.7:80", "10.0.0.1"),
            ("10.0.0.1", "\x00\xff;$(id)", "10.0.0.1"),
            # Only proxies in the chain: the first of them.
            ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),
            ("::ffff:10.0.0.1", "203.0.113.7", "203.0.113.7"),
            ("2001:db8:ff::1", "2001:db8::5", "2001:db8::5"),
            ("10.0.0.1", "::ffff:203.0.113.7", "203.0.113.7"),
        ]:
            self.assertEqual(forwarded_client(peer, header, PROXIES), client, (peer, header))

    def test_without_trusted_proxies_the_peer_is_the_client(self):
        self.assertEqual(forwarded_client("10.0.0.1", "203.0.113.7", ()), "10.0.0.1")

    @settings(deadline=None, max_examples=300)
    @given(
        st.sampled_from(["10.0.0.1", "203.0.113.9", "::ffff:10.1.2.3", "2001:db8:ff::1", "2001:db8::1"]),
        st.lists(
            st.one_of(
                st.ip_addresses().map(str),
                st.sampled_from(["10.0.0.2", "unknown", "", " ", "[::1]:80", "1.2.3.4:5"]),
                st.text(max_size=20),
            ),
            max_size=6,
        ).map(",".join),
    )
    def test_the_client_is_the_peer_or_a_valid_address_from_the_header(self, peer, header):
        client = forwarded_client(peer, header, PROXIES)
        if client != forwarded_client(peer, "", PROXIES):
            ipaddress.ip_address(client)
            self.assertIn(ipaddress.ip_address(client), [_ip(e) for e in header.split(",")])
        if not any(ipaddress.ip_address(forwarded_client(peer, "", ())) in n for n in PROXIES):
            self.assertEqual(client, forwarded_client(peer, "", ()), "an untrusted peer's header counts for nothing")


def _ip(text: str):
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return address.ipv4_mapped or address if address.version == 6 else address


class ForwardedForApiTests(unittest.TestCase):
    def setUp(self):
        self.coordinator = make_coordinator(self)

    def call(self, http, method, path, body=None, headers=None):
        return _drive(self, self.coordinator.clock, http, method, path, json.dumps(body).encode() if body else None, headers)

    def test_ip_and_registration_see_the_client_behind_a_trusted_proxy(self):
        http = StubTreq(build_root(self.coordinator, ClientRules(trusted_proxies=LOOPBACK)))
        forwarded = {b"x-forwarded-for": [b"6.6.6.6, 203.0.113.7"]}
        self.assertEqual(self.call(http, "GET", "/ip", headers=forwarded), (200, {"ip": "203.0.113.7"}))
        code, answer = self.call(http, "POST", "/register", body_for("web1"), headers=forwarded)
        self.assertEqual((code, answer["your_ip"]), (200, "203.0.113.7"))
        self.assertEqual(self.coordinator.registry.get(answer["node_id"]).public_ip, "203.0.113.7")
        code, answer = self.call(http, "GET", "/ip", headers={b"x-forwarded-for": [b"\xff\xfe not an address"]})
        self.assertEqual((code, answer), (200, {"ip": "127.0.0.1"}))

    def test_the_header_is_ignored_from_anyone_else(self):
        http = StubTreq(build_root(self.coordinator))
        forwarded = {b"x-forwarded-for": [b"203.0.113.7"]}
        self.assertEqual(self.call(http, "GET", "/ip", headers=forwarded), (200, {"ip": "127.0.0.1"}))
        code, answer = self.call(http, "POST", "/register", body_for("web1"), headers=forwarded)
        self.assertEqual(answer["your_ip"], "127.0.0.1")


# -- HTTP rate limits --------------------------------------------------------


class HttpRateLimitTests(unittest.TestCase):
    def setUp(self):
        self.coordinator = make_coordinator(self)
        self.clock = self.coordinator.clock
        self.rules = ClientRules(
            trusted_proxies=LOOPBACK,
            register_limit=RateLimiter(1, 3, self.clock),
            enroll_limit=RateLimiter(1, 2, self.clock),
        )
        self.http = StubTreq(build_root(self.coordinator, self.rules))

    def register_from(self, address: str, name: str):
        headers = {b"x-forwarded-for": [address.encode()]}
        return _drive_raw(self, self.clock, self.http, "POST", "/register", json.dumps(body_for(name)).encode(), headers)

    def test_a_flood_from_one_address_does_not_starve_another(self):
        flood = [self.register_from("203.0.113.66", "flood")[0] for _ in range(6)]
        self.assertEqual(flood, [200, 200, 200, 429, 429, 429])
        self.assertEqual(self.register_from("198.51.100.7", "quiet")[0], 200, "another address is served")
        code, answer, headers = self.register_from("203.0.113.66", "flood")
        self.assertEqual(code, 429)
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"1"])
        self.assertIn("too many registrations from 203.0.113.66", answer["error"])
        self.clock.advance(1)
        self.assertEqual(self.register_from("203.0.113.66", "flood")[0], 200, "the limit refills")

    def test_a_forged_header_does_not_escape_the_limit(self):
        http = StubTreq(build_root(self.coordinator, ClientRules(register_limit=RateLimiter(1, 3, self.clock))))
        codes = []
        for i in range(5):
            headers = {b"x-forwarded-for": [f"198.51.100.{i}".encode()]}
            codes.append(_drive(self, self.clock, http, "POST", "/register", json.dumps(body_for("web1")).encode(), headers)[0])
        self.assertEqual(codes, [200, 200, 200, 429, 429])

    def test_refused_before_parsing(self):
        for _ in range(3):
            self.register_from("203.0.113.66", "flood")
        headers = {b"x-forwarded-for": [b"203.0.113.66"]}
        code, _ = _drive(self, self.clock, self.http, "POST", "/register", b"not json", headers)
        self.assertEqual(code, 429)

    def test_enrollment_has_its_own_limit(self):
        for _ in range(3):
            self.register_from("203.0.113.66", "flood")
        headers = {b"x-forwarded-for": [b"203.0.113.66"]}
        body = json.dumps({**body_for("web1"), "join_key": "x"}).encode()
        codes = [_drive(self, self.clock, self.http, "POST", "/enroll", body, headers)[0] for _ in range(3)]
        # An open server refuses enrollment (401), until the limit refuses first.
        self.assertEqual(codes, [401, 401, 429])

    def test_other_endpoints_are_not_limited(self):
        for _ in range(3):
            self.register_from("203.0.113.66", "flood")
        headers = {b"x-forwarded-for": [b"203.0.113.66"]}
        for path in ("/ip", "/health", "/status", "/peers"):
            self.assertEqual(_drive(self, self.clock, self.http, "GET", path, None, headers)[0], 200, path)


# -- STUN rate limits ------------------------------------------------------


class StunRateLimitTests(unittest.TestCase):
    A, B = ("203.0.113.66", 40000), ("198.51.100.7", 40000)

    def setUp(self):
        self.clock = Clock()
        self.outcomes: list[str] = []
        self.relayed: list[tuple[bytes, tuple]] = []
        limiter = RateLimiter(10, 3, self.clock)
        self.protocol = StunServerProtocol(
            self.clock,
            observe=self.outcomes.append,
            relay=lambda data, addr: (self.relayed.append((data, addr)) or ("relay_unknown", None, None)),
            admit=lambda host: limiter.allow(address_key(host)),
        )
        self.transport = FakeDatagramTransport()
        self.protocol.makeConnection(self.transport)

    def test_a_flood_is_dropped_and_counted_and_others_are_served(self):
        request, _ = encode_binding_request()
        for _ in range(5):
            self.protocol.datagramReceived(request, self.A)
        self.protocol.datagramReceived(b"seed probe", self.A)
        self.protocol.datagramReceived(request, self.B)
        self.assertEqual(self.outcomes, ["binding"] * 3 + ["rate_limited"] * 3 + ["binding"])
        self.assertEqual([addr for _, addr in self.transport.written], [self.A] * 3 + [self.B])
        self.clock.advance(0.1)
        self.protocol.datagramReceived(request, self.A)
        self.assertEqual(self.outcomes[-1], "binding")

    def test_relay_frames_bypass_the_address_limit(self):
        for _ in range(5):
            self.protocol.datagramReceived(encode_binding_request()[0], self.A)
        frame = MAGIC + bytes(60)
        self.protocol.datagramReceived(frame, self.A)
        self.assertEqual(self.relayed, [(frame, self.A)])
        self.assertEqual(self.outcomes[-1], "relay_unknown")

    def test_metrics_show_the_outcome_from_the_start(self):
        self.assertIn(b'wire_stun_datagrams_total{outcome="rate_limited"} 0.0', generate_latest(ServerMetrics().registry))

    def test_metrics_count_each_outcome_known_or_not(self):
        metrics = ServerMetrics()
        for outcome in ("relay_forwarded", "relay_forwarded", "an_outcome_added_later"):
            metrics.count_datagram(outcome)
        exposed = generate_latest(metrics.registry)
        self.assertIn(b'wire_stun_datagrams_total{outcome="relay_forwarded"} 2.0', exposed)
        self.assertIn(b'wire_stun_datagrams_total{outcome="an_outcome_added_later"} 1.0', exposed)

    @settings(deadline=None, max_examples=100)
    @given(st.lists(st.tuples(st.binary(max_size=80), st.floats(0, 0.5)), max_size=200))
    def test_replies_to_one_source_stay_within_its_budget(self, datagrams):
        clock = Clock()
        limiter = RateLimiter(10, 3, clock)
        protocol = StunServerProtocol(clock, admit=lambda host: limiter.allow(address_key(host)))
        transport = FakeDatagramTransport()
        protocol.makeConnection(transport)
        for data, gap in datagrams:
            clock.advance(gap)
            protocol.datagramReceived(data, self.A)
            self.assertLessEqual(len(transport.written), 3 + 10 * clock.seconds() + 1e-9)


# -- options and wiring ------------------------------------------------------


class _UdpMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock cannot listen on UDP; this one records the protocols."""

    def __init__(self):
        super().__init__()
        self.udp: dict[int, StunServerProtocol] = {}

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.udp[port] = protocol
        protocol.makeConnection(FakeDatagramTransport())
        return _StoppablePort()


class _StoppablePort:
    def stopListening(self):
        return None


class OptionsTests(unittest.TestCase):
    def parse(self, *args):
        options = Options()
        options.parseOptions(["--open", "--interface", "127.0.0.1", "--data-dir", self.mktemp(), *args])
        return options

    def test_defaults(self):
        options = self.parse()
        self.assertEqual(
            [options[f"rate-limit-{name}"] for name in ("register", "enroll", "stun")], [(5, 50), (1, 10), (20, 40)]
        )
        self.assertEqual((options["trusted-proxy"], options["no-rate-limits"]), ([], False))

    def test_values(self):
        options = self.parse(
            "--rate-limit-register", "2/7", "--rate-limit-stun", "0.5/1",
            "--trusted-proxy", "10.0.0.1", "--trusted-proxy", "fd00::/8", "--no-rate-limits",
        )  # fmt: skip
        self.assertEqual((options["rate-limit-register"], options["rate-limit-stun"]), ((2, 7), (0.5, 1)))
        self.assertEqual([str(n) for n in options["trusted-proxy"]], ["10.0.0.1/32", "fd00::/8"])
        self.assertTrue(options["no-rate-limits"])

    def test_bad_values_name_the_option(self):
        for args, words in [
            (("--rate-limit-register", "5"), "--rate-limit-register: '5' is not RATE/BURST"),
            (("--rate-limit-enroll", "a/b"), "--rate-limit-enroll: 'a' is not a number"),
            (("--rate-limit-stun", "0/5"), "--rate-limit-stun: 0.0 is outside"),
            (("--rate-limit-stun", "5/0.5"), "--rate-limit-stun: 0.5 is outside"),
            (("--trusted-proxy", "proxy.example"), "--trusted-proxy: 'proxy.example' is not an IP"),
            (("--trusted-proxy", "10.0.0.1/8"), "--trusted-proxy: '10.0.0.1/8'"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*args)
            self.assertIn(words, str(caught.exception))


class ServiceWiringTests(unittest.TestCase):
    def start(self, *args):
        options = Options()
        options.parseOptions(["--open", "--interface", "127.0.0.1", "--port", "18787", "--data-dir", self.mktemp(), *args])
        self.reactor = _UdpMemoryReactor()
        service = makeService(options, self.reactor)
        service.startService()
        self.addCleanup(service.stopService)
        (port, guard, _, _), = self.reactor.tcpServers
        self.assertEqual(port, 18787)
        # The site sits behind the connection guard (wire.server.connguard).
        self.assertIsInstance(guard, ConnectionGuard)
        # And behind the relay stream's Upgrade, which shares the port (wire.server.relaystream).
        site = guard.wrappedFactory.site
        self.http = StubTreq(site.resource)
        return site

    def register(self, name, forwarded_for=b"203.0.113.7"):
        body = json.dumps(body_for(name)).encode()
        return _drive(self, self.reactor, self.http, "POST", "/register", body, {b"x-forwarded-for": [forwarded_for]})

    def test_limits_and_proxies_reach_the_api_and_both_stun_ports(self):
        site = self.start("--rate-limit-register", "1/2", "--rate-limit-stun", "1/2", "--trusted-proxy", "127.0.0.1")
        self.assertIs(site.protocol, DeadlineChannel)
        codes = [self.register(f"web{i}")[0] for i in range(3)]
        self.assertEqual(codes, [200, 200, 429])
        self.assertEqual(self.register("web9", forwarded_for=b"198.51.100.8")[0], 200, "per client behind the proxy")
        request, _ = encode_binding_request()
        for udp_port in (18788, 18789, 18788):
            self.reactor.udp[udp_port].datagramReceived(request, ("203.0.113.7", 4000))
        written = [len(self.reactor.udp[p].transport.written) for p in (18788, 18789)]
        self.assertEqual(written, [1, 1], "the two STUN ports share one budget per source")

    def test_no_rate_limits(self):
        self.start("--no-rate-limits", "--rate-limit-register", "1/1")
        self.assertEqual([self.register(f"web{i}")[0] for i in range(5)], [200] * 5)
        request, _ = encode_binding_request()
        for _ in range(100):
            self.reactor.udp[18788].datagramReceived(request, ("203.0.113.7", 4000))
        self.assertEqual(len(self.reactor.udp[18788].transport.written), 100)


# -- slow connections --------------------------------------------------------


class _RawClient(Protocol):
    def __init__(self):
        self.data = b""
        self.lost: Deferred = Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(None)


class SlowConnectionTests(unittest.TestCase):
    """A real TCP connection on 127.0.0.1; the server's timers run on a fake clock."""

    async def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.coordinator = make_coordinator(self, clock=self.clock)
        self.channels: list[DeadlineChannel] = []
        self.arrived: DeferredQueue = DeferredQueue()
        connected: Deferred = Deferred()
        test = self

        class ObservedChannel(DeadlineChannel):
            def connectionMade(self):
                super().connectionMade()
                test.channels.append(self)
                connected.callback(None)

            def dataReceived(self, data):
                super().dataReceived(data)
                test.arrived.put(data)

        site = make_site(build_root(self.coordinator), timeout=60, reactor=self.clock)
        site.protocol = ObservedChannel
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.client = _RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port), self.client)
        self.addCleanup(self._disconnect)
        await connected

    async def _disconnect(self):
        if not self.client.lost.called:
            self.client.transport.loseConnection()
        await self.client.lost

    async def send(self, data: bytes) -> None:
        """Send, and wait until the server has read it."""
        self.client.transport.write(data)
        received = b""
        while len(received) < len(data):
            received += await self.arrived.get()

    @property
    def cut(self) -> bool:
        return self.channels[0].transport.disconnecting

    async def test_a_request_dripping_in_is_cut_after_the_receive_timeout(self):
        # Each byte comes well within the 60 s idle timeout, which restarts
        # on every byte; only the deadline from the first byte ends this.
        for byte in b"GET /he":
            await self.send(bytes([byte]))
            self.clock.advance(4)
        self.clock.advance(REQUEST_RECEIVE_TIMEOUT - 7 * 4 - 0.5)
        await self.send(b"a")
        self.assertFalse(self.cut)
        self.clock.advance(0.5)
        self.assertTrue(self.cut)
        await self.client.lost
        self.assertEqual(self.client.data, b"", "the slow request was never answered")

    async def test_a_long_poll_may_wait_longer_than_any_timeout(self):
        self.coordinator.registry.register(registration_for("web1"), "192.0.2.1", self.clock.seconds())
        cursor = self.coordinator.registry.changes.cursor
        await self.send(b"GET /peers?since=%s&wait=110 HTTP/1.1\r\nHost: wire.test\r\nConnection: close\r\n\r\n" % str(cursor).encode())
        for _ in range(10):
            self.clock.advance(10)
            self.assertFalse(self.cut)
        self.clock.advance(10)
        await self.client.lost
        self.assertTrue(self.client.data.startswith(b"HTTP/1.1 200 "), self.client.data[:100])
        self.assertIn(b'"upserts":[]', self.client.data)

    async def test_a_kept_alive_connection_is_left_to_the_idle_timeout(self):
        await self.send(b"GET /health HTTP/1.1\r\nHost: wire.test\r\n\r\n")
        self.clock.advance(45)
        self.assertFalse(self.cut, "the receive deadline starts with the next request, not after the last")
        await self.send(b"G")
        self.clock.advance(REQUEST_RECEIVE_TIMEOUT - 0.5)
        self.assertFalse(self.cut)
        self.clock.advance(0.5)
        self.assertTrue(self.cut, "the next request has the same deadline")
        await self.client.lost
        self.assertTrue(self.client.data.startswith(b"HTTP/1.1 200 "))

    async def test_an_idle_connection_still_times_out(self):
        self.clock.advance(59)
        self.assertFalse(self.cut)
        self.clock.advance(1)
        self.assertTrue(self.cut)


# -- the API under fuzzing ---------------------------------------------------

NODES = ("alice", "bob", "mallory")  # mallory is the attacker's own node
HONEST = ("alice", "bob")
REGISTER_FIELDS = ("node_id", "node_name", "wg_public_key", "port", "nat_port", "lan_ip", "vpn_ip", "nat_type")


@dataclass(frozen=True)
class Ref:
    """A value of one of the mesh's nodes or keys, looked up once the mesh exists."""

    owner: str
    field: str


hostile_text = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=SHELL_METACHARACTERS + "aZ09.:-_/+=%", max_size=40),
    st.sampled_from(
        [
            "$(reboot)", "`id`", "; rm -rf /", "a|b", "web1 && id", "web1\nweb2", "10.99.0.5\n",
            "\ud800", "\x00", "web1\x00", "../../etc/passwd", "x" * 5000, "0x10", "1e5", "٣", "²",
            "10.99.0.0", "10.99.255.255", "10.99.0.1", "0.0.0.0", "::", "255.255.255.255", "10.99.0.5/32",
        ]
    ),  # fmt: skip
)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.floats(), hostile_text
)
json_values = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6
)
node_refs = st.builds(
    Ref, st.sampled_from(NODES), st.sampled_from(("node_id", "node_name", "wg_public_key", "vpn_ip", "lan_ip", "public_ip"))
)
key_refs = st.builds(Ref, st.just("keys"), st.sampled_from(("valid", "used", "revoked")))
field_values = st.one_of(
    json_values, node_refs, key_refs, st.builds(lambda ref, tail: (ref, tail), node_refs, hostile_text)
)
raw_bodies = st.one_of(
    st.binary(max_size=100),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"[" * 5000, b'{"a":' * 3000, b"\xff\xfe{}", b"{}", b"null", b'{"node_id": "a"' + b" " * 70000 + b"}"]),
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=40)
credentials = st.one_of(st.none(), st.just(Ref("mallory", "credential")), st.just(Ref("mallory", "credential")), header_text)
forwarded_for = st.one_of(st.none(), header_text, st.ip_addresses().map(str))


def bodies(fields: tuple[str, ...]):
    """A valid body from a node (or a new one), with fields replaced or removed."""
    return st.tuples(
        st.sampled_from(("new",) + NODES),
        st.dictionaries(st.sampled_from(fields + ("unexpected",)), field_values, max_size=3),
        st.sets(st.sampled_from(fields), max_size=2),
    )


def requests(fields: tuple[str, ...]):
    # Mostly well-formed bodies with bad fields: they get past the JSON layer.
    body = st.one_of(bodies(fields), bodies(fields), bodies(fields), raw_bodies)
    return st.tuples(body, credentials, forwarded_for)


def assert_valid_record(test, record, pool) -> None:
    """A stored record is exactly what the protocol's parsers accept."""
    test.assertEqual(parse_node_id(record.node_id), record.node_id)
    test.assertEqual(parse_node_name(record.node_name), record.node_name)
    test.assertEqual(parse_wg_public_key(record.wg_public_key), record.wg_public_key)
    parse_port(record.port, "port")
    parse_port(record.nat_port, "nat_port")
    if record.lan_ip:
        test.assertEqual(parse_ip_address(record.lan_ip, "lan_ip"), record.lan_ip)
    test.assertEqual(parse_ip_address(record.public_ip, "public_ip"), record.public_ip)
    test.assertEqual(parse_nat_type(record.nat_type), record.nat_type)
    test.assertTrue(pool.is_assignable(ipaddress.IPv4Address(record.vpn_ip)), record.vpn_ip)


class Mesh:
    """A coordinator in memory with alice, bob and mallory, open or with
    authentication (then each has a credential, and there are join keys)."""

    def __init__(self, test: unittest.TestCase, auth: bool):
        self.test = test
        self.auth = auth
        self.coordinator = make_coordinator(test)
        self.clock = self.coordinator.clock
        self.secrets: dict[str, str] = {}
        if auth:
            authority = Authority(self.coordinator.store, self.clock)
            self.coordinator.authority = authority
            self.coordinator.registry.unique_names = True
            _, self.secrets["valid"] = settled(authority.create_key(reusable=True))
            _, self.secrets["used"] = settled(authority.create_key())
            revoked, self.secrets["revoked"] = settled(authority.create_key(reusable=True))
            settled(authority.revoke_key(revoked.key_id))
        # Trusting StubTreq's address lets the fuzzer pick its client address.
        self.http = StubTreq(build_root(self.coordinator, ClientRules(trusted_proxies=LOOPBACK)))
        self.nodes = {name: self._join(name, "valid") for name in NODES}
        if auth:
            self._join("spent", "used")

    def _join(self, name: str, join_key: str) -> dict:
        # Straight to the coordinator: the fuzzing makes many meshes.
        body = body_for(name, lan_ip="192.168.1.10")
        registration = parse_registration(body)
        if self.auth:
            joined = self.coordinator.enroll(self.secrets[join_key], registration, "127.0.0.1")
        else:
            joined = self.coordinator.register(registration, "127.0.0.1")
        d = Deferred.fromCoroutine(joined)
        self.clock.advance(0)  # the store's group commit
        result = self.test.successResultOf(d)
        registered, credential = result if self.auth else (result, None)
        return {**body, **asdict(registered.record), "credential": credential}

    def post(self, path, body):
        return _drive(self.test, self.clock, self.http, "POST", path, json.dumps(body).encode())

    def resolve(self, value):
        if isinstance(value, tuple):  # a node's value with hostile text after it
            head = self.resolve(value[0])
            return head + value[1] if isinstance(head, str) else value[1]
        if not isinstance(value, Ref):
            return value
        if value.owner == "keys":
            return self.secrets.get(value.field, "no-such-key")
        return self.nodes[value.owner].get(value.field)

    def body(self, fields: tuple[str, ...], base: str, replace: dict, remove: set) -> dict:
        body = {field: self.resolve(value) for field, value in self._base(fields, base).items() if field not in remove}
        body.update((field, self.resolve(value)) for field, value in replace.items())
        return body

    def _base(self, fields, base: str) -> dict:
        node = self.nodes.get(base) or {**body_for("newcomer"), "vpn_ip": "10.99.200.1"}
        other = self.nodes["bob" if base == "alice" else "alice"]
        values = {
            **node,
            "join_key": Ref("keys", "valid"),
            "peer_node_id": other["node_id"],
            "from_vpn_ip": node["vpn_ip"],
            "to_vpn_ip": other["vpn_ip"],
        }
        return {field: values[field] for field in fields if field in values}

    def headers(self, credential, forwarded) -> dict:
        headers = {}
        credential = self.resolve(credential)
        if credential is not None:
            headers[b"authorization"] = [b"Bearer " + credential.encode("latin-1")]
        if forwarded is not None:
            headers[b"x-forwarded-for"] = [forwarded.encode("latin-1")]
        return headers

    def state_of(self, name: str):
        node_id = self.nodes[name]["node_id"]
        record = self.coordinator.registry.get(node_id)
        credential = self.nodes[name].get("credential")
        holder = self.coordinator.authority.node_for(credential) if self.auth else None
        return asdict(record) if record else None, self.coordinator.registry.is_online(node_id), holder

    def impersonated(self, path: str, body) -> set[str]:
        """Honest nodes a request may legitimately change.

        Open (the seed's rule): whoever shows a node's id speaks for it
        (/register), or its id and key (/leave). With authentication, only
        a node's credential speaks for it; the attacker has mallory's.
        """
        if not isinstance(body, dict) or self.auth:
            return set()
        return {
            name
            for name in HONEST
            if body.get("node_id") == self.nodes[name]["node_id"]
            and (path == "/register" or body.get("wg_public_key") == self.nodes[name]["wg_public_key"])
        }

    def check(self, status: int, answer, untouched: dict) -> None:
        self.test.assertLess(status, 500, answer)
        self.test.assertIsInstance(answer, dict)
        if status >= 400:
            self.test.assertIn("error", answer)
        for name, before in untouched.items():
            self.test.assertEqual(self.state_of(name), before, f"{name}'s record changed")
        store = self.coordinator.store
        settled(store.flush_touches())
        store.write_pending()
        stored = {r.node_id: r for r in store.load()}
        live = {r.node_id: r for r in self.coordinator.registry.records()}
        self.test.assertEqual(stored, live, "the database holds what the registry does")
        for record in stored.values():
            assert_valid_record(self.test, record, self.coordinator.registry.pool)


def _drive_raw(test, clock, http, method, path, data=None, headers=None):
    """One request through StubTreq, driving the fake clock until it is answered."""

    async def call():
        response = await getattr(http, method.lower())(f"http://wire.test{path}", data=data, headers=headers)
        return response.code, json.loads(await response.content()), response.headers

    d = Deferred.fromCoroutine(call())
    for _ in range(5):
        clock.advance(0)  # the store's group commit
        http.flush()
    if not d.called:
        clock.advance(MAX_WAIT_SECONDS + 1)  # a long-poll's wait
        http.flush()
    return test.successResultOf(d)


def _drive(test, clock, http, method, path, data=None, headers=None):
    code, answer, _ = _drive_raw(test, clock, http, method, path, data, headers)
    return code, answer


FUZZ = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENDPOINT_FIELDS = {
    "/register": REGISTER_FIELDS,
    "/enroll": REGISTER_FIELDS + ("join_key",),
    "/leave": ("node_id", "wg_public_key"),
    "/relay": ("node_id", "wg_public_key", "peer_node_id"),
    "/punch": ("from_vpn_ip", "to_vpn_ip"),
}


def _drive_metrics_aware(test, mesh, url, headers):
    """GET ``url``; /metrics answers Prometheus text, not JSON."""
    if url.startswith("/metrics"):
        async def call():
            response = await mesh.http.get(f"http://wire.test{url}", headers=headers)
            await response.content()
            return response.code, {}

        d = Deferred.fromCoroutine(call())
        mesh.http.flush()
        return test.successResultOf(d)
    return _drive(test, mesh.clock, mesh.http, "GET", url, None, headers)


def api_fuzz_tests(auth: bool, class_name: str) -> type:
    """The fuzz tests for an open server or one with authentication.

    Built per mode, so each mode has its own test functions (hypothesis
    wants one executor per function).
    """

    class ApiFuzzTests(unittest.TestCase):
        def post(self, path, request):
            body_spec, credential, forwarded = request
            mesh = Mesh(self, auth)
            if isinstance(body_spec, bytes):
                body, data = None, body_spec
            else:
                body = mesh.body(ENDPOINT_FIELDS[path], *body_spec)
                data = json.dumps(body).encode()
            untouched = {name: mesh.state_of(name) for name in HONEST if name not in mesh.impersonated(path, body)}
            status, answer = _drive(self, mesh.clock, mesh.http, "POST", path, data, mesh.headers(credential, forwarded))
            mesh.check(status, answer, untouched)

        @FUZZ
        @given(requests(ENDPOINT_FIELDS["/register"]))
        def test_register(self, request):
            self.post("/register", request)

        @FUZZ
        @given(requests(ENDPOINT_FIELDS["/enroll"]))
        def test_enroll(self, request):
            self.post("/enroll", request)

        @FUZZ
        @given(requests(ENDPOINT_FIELDS["/leave"]))
        def test_leave(self, request):
            self.post("/leave", request)

        @FUZZ
        @given(requests(ENDPOINT_FIELDS["/relay"]))
        def test_relay(self, request):
            self.post("/relay", request)

        @FUZZ
        @given(requests(ENDPOINT_FIELDS["/punch"]))
        def test_punch(self, request):
            self.post("/punch", request)

        @FUZZ
        @given(
            st.sampled_from(["/peers", "/status", "/health", "/ip", "/metrics"]),
            st.lists(
                st.tuples(
                    st.sampled_from([b"since", b"wait", b"other"]),
                    st.one_of(st.binary(max_size=30), hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass"))),
                ),
                max_size=3,
            ),
            credentials,
            forwarded_for,
        )
        def test_queries(self, path, query, credential, forwarded):
            mesh = Mesh(self, auth)
            untouched = {name: mesh.state_of(name) for name in HONEST}
            url = path + "?" + "&".join(f"{name.decode()}={quote_from_bytes(value)}" for name, value in query)
            status, answer = _drive_metrics_aware(self, mesh, url, mesh.headers(credential, forwarded))
            mesh.check(status, answer, untouched)

    ApiFuzzTests.__name__ = ApiFuzzTests.__qualname__ = class_name
    return ApiFuzzTests


OpenApiFuzzTests = api_fuzz_tests(auth=False, class_name="OpenApiFuzzTests")
AuthApiFuzzTests = api_fuzz_tests(auth=True, class_name="AuthApiFuzzTests")


class MetacharacterTests(unittest.TestCase):
    """Every text field refuses shell metacharacters: nothing that could
    mean something to a shell or a config line is ever stored."""

    def setUp(self):
        # One server for all examples: what it refuses leaves no trace.
        self.coordinator = make_coordinator(self)
        self.http = StubTreq(build_root(self.coordinator))

    @settings(deadline=None, max_examples=300)
    @given(
        st.sampled_from(["node_id", "node_name", "wg_public_key", "lan_ip", "vpn_ip", "nat_type"]),
        st.text(alphabet=SHELL_METACHARACTERS, min_size=1, max_size=4),
        st.floats(0, 1),
    )
    def test_register_refuses_them_wherever_they_stand(self, field, injected, where):
        valid = body_for("web1", lan_ip="192.168.1.10", vpn_ip="10.99.3.4", nat_type="easy")
        cut = round(where * len(valid[field]))
        body = {**valid, field: valid[field][:cut] + injected + valid[field][cut:]}
        code, answer = _drive(self, self.coordinator.clock, self.http, "POST", "/register", json.dumps(body).encode())
        self.assertEqual(code, 400, answer)
        self.assertIn(field, answer["error"])
        self.assertEqual(len(self.coordinator.registry), 0)

    @settings(deadline=None, max_examples=200)
    @given(st.dictionaries(st.sampled_from(REGISTER_FIELDS), hostile_text, min_size=1))
    def test_no_stored_text_holds_one(self, fields):
        body = json.dumps({**body_for("web1"), **fields}).encode()
        _drive(self, self.coordinator.clock, self.http, "POST", "/register", body)
        for record in self.coordinator.registry.records():
            for value in asdict(record).values():
                if isinstance(value, str):
                    self.assertFalse(set(value) & set(SHELL_METACHARACTERS), value)


# -- holes the fuzzing found (each fixed; these keep them fixed) -----------------


class FoundHoleTests(unittest.TestCase):
    def setUp(self):
        self.coordinator = make_coordinator(self)
        self.http = StubTreq(build_root(self.coordinator))

    def post(self, path, body: bytes):
        return _drive(self, self.coordinator.clock, self.http, "POST", path, body)

    def test_node_id_and_name_refuse_a_trailing_newline(self):
        for field in ("node_id", "node_name"):
            body = body_for("web1")
            body[field] += "\n"
            code, _ = self.post("/register", json.dumps(body).encode())
            self.assertEqual(code, 400, field)


    def test_an_ipv6_scope_id_cannot_carry_metacharacters(self):
        code, _ = self.post("/register", json.dumps(body_for("web1", lan_ip="fe80::1%$(reboot)")).encode())
        self.assertEqual(code, 400)


    def test_a_huge_number_is_a_400(self):
        code, _ = self.post("/register", b'{"port": ' + b"9" * 5000 + b"}")
        self.flushLoggedErrors(ValueError)
        self.assertEqual(code, 400)


    def test_a_cursor_of_other_digits_is_refused(self):
        code, _ = _drive(self, self.coordinator.clock, self.http, "GET", "/peers?since=%C2%B2")
        self.flushLoggedErrors(ValueError)
        self.assertEqual(code, 400)


    def test_a_join_key_cannot_take_over_an_enrolled_node(self):
        mesh = Mesh(self, auth=True)
        before = mesh.state_of("alice")
        alice = body_for("alice", node_name="mallory2", lan_ip="192.0.2.66")
        code, _ = mesh.post("/enroll", {**alice, "join_key": mesh.secrets["valid"]})
        self.assertEqual(code, 409)
        self.assertEqual(mesh.state_of("alice"), before)



# -- the UDP port: STUN and relay parsers ------------------------------------


class UdpPortPropertyTests(unittest.TestCase):
    A, B = ("10.0.0.1", 4000), ("10.0.0.2", 5000)

    def setUp(self):
        self.clock = Clock()
        self.table = RelayTable(self.clock, rate=100_000, burst=100_000)
        self.ga = self.table.grant("node-a", "node-b")
        self.gb = self.table.grant("node-b", "node-a")
        self.counter = 0

    def frame(self, grant, payload, key=None, direction=TO_SERVER):
        self.counter += 1
        return FrameKey(key or grant.key).seal(grant.token, direction, self.counter, payload)

    def strangers_datagrams(self):
        """Bytes of every kind a stranger can send: junk, relay-looking junk,
        frames with a real token and no key, and replays of real frames."""
        token = st.sampled_from([self.ga.token, self.gb.token, b"Z" * 8])
        return st.one_of(
            st.binary(max_size=200),
            st.binary(max_size=200).map(lambda b: MAGIC + b),
            st.builds(
                lambda t, d, c, mac, p: MAGIC + t + bytes([d]) + c.to_bytes(8, "big") + p + mac,
                token, st.integers(0, 255), st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=16),
                st.binary(max_size=MAX_PAYLOAD + 20),
            ),
            st.builds(lambda p: self.frame(self.ga, p, key=bytes(32)), st.binary(max_size=50)),
        )  # fmt: skip

    @settings(deadline=None, max_examples=400)
    @given(st.data())
    def test_the_relay_never_answers_a_stranger(self, data):
        self.table.handle(self.frame(self.ga, b""), self.A)
        self.table.handle(self.frame(self.gb, b""), self.B)
        replay = self.frame(self.ga, b"x")
        self.table.handle(replay, self.A)
        stranger = (data.draw(st.ip_addresses(v=4).map(str)), data.draw(st.integers(1, 65535)))
        for datagram in data.draw(st.lists(st.one_of(self.strangers_datagrams(), st.just(replay)), max_size=10)):
            outcome, reply, destination = self.table.handle(datagram, stranger)
            self.assertEqual((reply, destination), (None, None), outcome)
        # The sides' addresses were not learned from the stranger.
        _, _, destination = self.table.handle(self.frame(self.ga, b"y"), self.A)
        self.assertEqual(destination, self.B)

    @settings(deadline=None, max_examples=200)
    @given(st.binary(max_size=MAX_PAYLOAD))
    def test_relay_replies_are_never_larger_than_their_request(self, payload):
        self.table.handle(self.frame(self.gb, b""), self.B)
        frame = self.frame(self.ga, payload)
        outcome, reply, _ = self.table.handle(frame, self.A)
        self.assertIn(outcome, ("relay_forwarded", "relay_keepalive"))
        self.assertEqual(len(reply), len(frame))
        self.assertEqual(read_header(reply)[1], TO_NODE)

    @settings(deadline=None, max_examples=400)
    @given(st.lists(st.tuples(st.binary(max_size=120), st.sampled_from([("203.0.113.9", 40000), ("::ffff:203.0.113.9", 1), ("fe80::1%lo", 5000), ("10.0.0.1", 0)])), max_size=20))
    def test_the_port_answers_only_the_sender_and_within_bounds(self, datagrams):
        protocol = StunServerProtocol(Clock(), relay=self.table.handle)
        transport = FakeDatagramTransport()
        protocol.makeConnection(transport)
        for datagram, source in datagrams:
            before = len(transport.written)
            protocol.datagramReceived(datagram, source)
            for reply, destination in transport.written[before:]:
                self.assertEqual(destination, source)
                self.assertLessEqual(len(reply), reply_limit(len(datagram)))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_minimal_frames(self):
        self.assertEqual(len(self.frame(self.ga, b"")), OVERHEAD)


# -- no shell ----------------------------------------------------------------


class NoShellTests(unittest.TestCase):
    """Network input can only be rejected or inert if nothing runs a shell."""

    SHELL_CALLS = {"system", "popen", "create_subprocess_shell", "getoutput", "getstatusoutput"}
    SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash"}

    def test_the_package_never_runs_a_shell(self):
        found = []
        for directory, _, files in os.walk(os.path.join(CHECKOUT, "wire")):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    with open(path, encoding="utf-8") as f:
                        found += [f"{os.path.relpath(path, CHECKOUT)}:{line}: {what}" for line, what in self.shell_uses(f.read())]
        self.assertEqual(found, [])

    def shell_uses(self, source: str):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name in self.SHELL_CALLS:
                    yield node.lineno, f"calls {name}"
                if any(k.arg == "shell" for k in node.keywords):
                    yield node.lineno, "passes shell="
            elif isinstance(node, ast.Constant) and node.value in self.SHELLS:
                yield node.lineno, f"names the shell {node.value!r}"
