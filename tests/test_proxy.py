"""HTTP proxies (wire/proxy.py): parsing, NO_PROXY, and CONNECT against a
real proxy on 127.0.0.1 (tests/connect_proxy.py), with TLS pinned through it."""

from __future__ import annotations

import base64
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.filepath import FilePath
from twisted.trial import unittest
from twisted.web.client import URI
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.connect_proxy import ConnectProxy
from wire.client import (
    CoordinationClient,
    ServerUnreachable,
    TLSRefused,
    make_http_client,
)
from wire.proxy import (
    MAX_HEAD_BYTES,
    ProxyConfig,
    ProxyConfigError,
    ProxyEndpointFactory,
    ProxyError,
    ProxyTunnelEndpoint,
    parse_no_proxy,
    parse_proxy_url,
    proxy_from_environment,
)
from wire.tls import client_policy, ensure_self_signed, read_fingerprint
from wire.tlsserver import TLSServerEndpoint, server_context


class ParseProxyURLTests(unittest.TestCase):
    def test_host_and_port(self):
        proxy = parse_proxy_url("http://proxy.example.com:3128")
        self.assertEqual((proxy.host, proxy.port, proxy.authorization()), ("proxy.example.com", 3128, None))
        self.assertEqual(proxy.display(), "http://proxy.example.com:3128")

    def test_no_scheme_is_http_and_no_port_is_80(self):
        self.assertEqual(parse_proxy_url("Proxy.Example.com/").address, "proxy.example.com:80")

    def test_ipv6_in_brackets(self):
        proxy = parse_proxy_url("http://[2001:db8::1]:3128")
        self.assertEqual((proxy.host, proxy.display()), ("2001:db8::1", "http://[2001:db8::1]:3128"))

    def test_credentials_are_percent_decoded_into_basic(self):
        proxy = parse_proxy_url("http://al%40ice:p%3Ass@w@10.0.0.1:3128")
        self.assertEqual((proxy.username, proxy.password), ("al@ice", "p:ss@w"))
        self.assertEqual(proxy.authorization(), b"Basic " + base64.b64encode(b"al@ice:p:ss@w"))

    def test_credentials_never_shown(self):
        proxy = parse_proxy_url("http://alice:s3cret@10.0.0.1:3128", "HTTPS_PROXY")
        for shown in (repr(proxy), str(proxy), proxy.display(), repr(proxy.describe())):
            self.assertNotIn("s3cret", shown)
            self.assertNotIn("alice", shown)
        self.assertEqual(proxy.display(), "http://***@10.0.0.1:3128")

    def test_errors_name_what_is_wrong_and_hide_credentials(self):
        cases = {
            "https://p:3128": "https:// proxies are not supported",
            "socks5://p:1080": "socks5:// proxies are not supported",
            "http://alice:s3cret@p:99999": "port must be 1-65535",
            "http://alice:s3cret@p:3128/path": "no path",
            "http://alice:s3cret@:3128": "no host",
            "http://2001:db8::1:3128": "in brackets",
            "http://[p]:3128": "is not an IPv6 address",
            "http://:pw@p:3128": "no user name",
            "http://p q:3128": "spaces",
            "": "empty",
            "http://bad_host!:1": "is not a host name",
        }
        for url, wanted in cases.items():
            with self.assertRaises(ProxyConfigError, msg=url) as caught:
                parse_proxy_url(url)
            self.assertIn(wanted, str(caught.exception), url)
            self.assertNotIn("s3cret", str(caught.exception))
            self.assertTrue(str(caught.exception).startswith("--proxy: "))

    @given(st.text(max_size=80))
    def test_garbage_is_a_clean_error(self, text):
        try:
            proxy = parse_proxy_url(text)
        except ProxyConfigError:
            return
        self.assertTrue(proxy.host)
        self.assertTrue(0 < proxy.port < 65536)

    @given(st.text(alphabet="http:/@[]%:.0123456789abc-_", max_size=40))
    def test_url_like_garbage_is_a_clean_error(self, text):
        try:
            parse_proxy_url(text)
        except ProxyConfigError:
            pass


class NoProxyTests(unittest.TestCase):
    def proxy(self, no_proxy: str) -> ProxyConfig:
        return ProxyConfig("proxy", 3128, no_proxy=parse_no_proxy(no_proxy))

    def test_domains_match_themselves_and_subdomains(self):
        for entry in ("example.com", ".example.com", "*.example.com", "EXAMPLE.com."):
            proxy = self.proxy(f"other.org, {entry}")
            self.assertFalse(proxy.applies_to("example.com", 443), entry)
            self.assertFalse(proxy.applies_to("vpn.Example.COM", 443), entry)
            self.assertTrue(proxy.applies_to("notexample.com", 443), entry)
            self.assertTrue(proxy.applies_to("example.com.evil.org", 443), entry)

    def test_star_is_everything(self):
        self.assertFalse(self.proxy("*").applies_to("anything.at.all", 1))

    def test_addresses_and_networks(self):
        proxy = self.proxy("10.0.0.0/8,192.168.1.5,::1,fd00::/8")
        self.assertFalse(proxy.applies_to("10.1.2.3", 443))
        self.assertFalse(proxy.applies_to("192.168.1.5", 443))
        self.assertTrue(proxy.applies_to("192.168.1.6", 443))
        self.assertFalse(proxy.applies_to("[::1]", 443))
        self.assertFalse(proxy.applies_to("fd12::3", 443))
        self.assertTrue(proxy.applies_to("2001:db8::1", 443))
        # Names are not resolved: a name is not an address.
        self.assertTrue(proxy.applies_to("localhost", 443))

    def test_ports(self):
        proxy = self.proxy("example.com:8787,10.0.0.1:443,[::1]:8787")
        self.assertFalse(proxy.applies_to("vpn.example.com", 8787))
        self.assertTrue(proxy.applies_to("vpn.example.com", 443))
        self.assertFalse(proxy.applies_to("10.0.0.1", 443))
        self.assertTrue(proxy.applies_to("10.0.0.1", 8787))
        self.assertFalse(proxy.applies_to("::1", 8787))
        self.assertTrue(proxy.applies_to("::1", 443))

    def test_bad_entries_are_named(self):
        for entry, wanted in (("10.0.0.0/99", "not an IP address"), ("a b!c", "not a host name"), ("x:0", "bad port")):
            with self.assertRaises(ProxyConfigError) as caught:
                parse_no_proxy(f"ok.org,{entry}")
            self.assertIn(wanted, str(caught.exception))
            self.assertTrue(str(caught.exception).startswith("NO_PROXY: "))

    @given(st.text(max_size=80))
    def test_garbage_lists_are_clean_errors(self, text):
        try:
            rules = parse_no_proxy(text)
        except ProxyConfigError:
            return
        for rule in rules:
            rule.matches("vpn.example.org", 443)
            rule.matches("10.0.0.1", 443)
            rule.matches("::1", 443)


class EnvironmentTests(unittest.TestCase):
    def test_order_of_the_variables(self):
        env = {"ALL_PROXY": "http://all:1", "https_proxy": "http://lower:2", "HTTPS_PROXY": "http://upper:3"}
        self.assertEqual(proxy_from_environment(env).address, "upper:3")
        del env["HTTPS_PROXY"]
        self.assertEqual(proxy_from_environment(env).source, "https_proxy")
        del env["https_proxy"]
        self.assertEqual(proxy_from_environment(env).address, "all:1")
        self.assertIsNone(proxy_from_environment({"HTTP_PROXY": "http://not-for-https:1"}))

    def test_explicit_wins_and_no_proxy_applies_to_it(self):
        env = {"HTTPS_PROXY": "http://env:1", "no_proxy": ".corp"}
        proxy = proxy_from_environment(env, explicit="http://given:2")
        self.assertEqual((proxy.address, proxy.source), ("given:2", "--proxy"))
        self.assertFalse(proxy.applies_to("vpn.corp", 443))

    def test_a_bad_variable_is_named(self):
        with self.assertRaises(ProxyConfigError) as caught:
            proxy_from_environment({"https_proxy": "socks5://x:1"})
        self.assertTrue(str(caught.exception).startswith("https_proxy: socks5://"))

    def test_the_nodes_client_honours_the_environment(self):
        from wire.node.config import NodeConfig
        from wire.node.enroll import coordination_client
        from wire.node.proxy import node_proxy

        config = NodeConfig("https://vpn.example.org:8787", "n1", "node-1", server_fingerprint="ab" * 32)
        env = {"HTTPS_PROXY": "http://u:p@127.0.0.1:3128"}
        self.assertEqual(node_proxy(config, env).display(), "http://***@127.0.0.1:3128")
        self.assertIsNone(node_proxy(config, {}))
        memory = MemoryReactorClock()
        client = coordination_client(memory, config, self.mktemp(), persistent=False, credential=None, environ=env)
        endpoint = client._http._agent._endpointFactory.endpointForURI(URI.fromBytes(b"https://vpn.example.org:8787/"))
        endpoint.connect(Factory.forProtocol(Protocol))
        (host, port, *_), = memory.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 3128))


class TunnelInMemoryTests(unittest.TestCase):
    """The CONNECT exchange over a StringTransport, time on a fake clock."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.proxy = parse_proxy_url("http://alice:s3cret@10.0.0.1:3128")
        self.endpoint = ProxyTunnelEndpoint(self.clock, self.proxy, "2001:db8::7", 8787, timeout=5)
        self.received = []
        test = self

        class Inner(Protocol):
            def dataReceived(self, data):
                test.received.append(data)

        self.opened = self.endpoint.connect(Factory.forProtocol(Inner))
        (host, port, factory, *_), = self.clock.tcpClients
        self.assertEqual((host, port), ("10.0.0.1", 3128))
        self.tunnel = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.tunnel.makeConnection(self.transport)

    def test_the_request_and_what_follows_the_head(self):
        self.assertEqual(
            self.transport.value(),
            b"CONNECT [2001:db8::7]:8787 HTTP/1.1\r\nHost: [2001:db8::7]:8787\r\n"
            b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:s3cret") + b"\r\n\r\n",
        )
        self.tunnel.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertNoResult(self.opened)
        self.tunnel.dataReceived(b"\r\nfirst bytes")
        inner = self.successResultOf(self.opened)
        self.assertIs(inner.transport, self.transport)
        self.tunnel.dataReceived(b" then more")
        self.assertEqual(b"".join(self.received), b"first bytes then more")

    def test_refusal_is_named(self):
        self.tunnel.dataReceived(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
        error = self.failureResultOf(self.opened, ProxyError).value
        self.assertEqual(
            str(error), "proxy 10.0.0.1:3128 refused CONNECT to [2001:db8::7]:8787: 407 Proxy Authentication Required"
        )
        self.assertTrue(self.transport.disconnecting or self.transport.disconnected)

    def test_an_oversize_head_is_dropped(self):
        self.tunnel.dataReceived(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES)
        self.assertIn("more than 16384 bytes", str(self.failureResultOf(self.opened, ProxyError).value))

    def test_not_http(self):
        self.tunnel.dataReceived(b"SSH-2.0-x\r\n\r\n")
        self.assertIn("did not answer CONNECT in HTTP", str(self.failureResultOf(self.opened, ProxyError).value))

    def test_a_stalled_proxy_times_out(self):
        self.tunnel.dataReceived(b"HTTP/1.1 200")
        self.clock.advance(4.9)
        self.assertNoResult(self.opened)
        self.clock.advance(0.2)
        self.tunnel.connectionLost(None)  # the abort, as the reactor would report it
        self.assertEqual(
            str(self.failureResultOf(self.opened, ProxyError).value),
            "proxy 10.0.0.1:3128 did not open a tunnel to [2001:db8::7]:8787 within 5s",
        )
        self.assertTrue(self.transport.disconnected)

    def test_cancel(self):
        self.opened.cancel()
        self.failureResultOf(self.opened, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RealProxyTests(unittest.TestCase):
    """The node's HTTPS client through a real CONNECT proxy to a real wire-style TLS server."""

    def setUp(self):
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        cert_path, key_path = ensure_self_signed(data_dir)
        self.fingerprint = read_fingerprint(cert_path)
        resource = Resource()
        resource.putChild(b"health", Data(b'{"status": "ok"}', "application/json"))
        self.big = os.urandom(100_000).hex().encode()
        resource.putChild(b"big", Data(self.big, "text/plain"))
        endpoint = TLSServerEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), server_context(cert_path, key_path))

        def listening(port):
            self.addCleanup(port.stopListening)
            self.url = f"https://127.0.0.1:{port.getHost().port}"

        return endpoint.listen(Site(resource)).addCallback(listening)

    async def client(self, mode="tunnel", credentials=None, url_credentials="", fingerprint=None, no_proxy=""):
        self.proxy = ConnectProxy(reactor, mode, credentials)
        port = await self.proxy.listen(self)
        config = parse_proxy_url(f"http://{url_credentials}127.0.0.1:{port}", no_proxy=parse_no_proxy(no_proxy))
        http = make_http_client(reactor, persistent=False, tls_fingerprint=fingerprint or self.fingerprint, proxy=config)
        return CoordinationClient(http, self.url, clock=reactor)

    async def test_pinned_https_through_the_proxy_with_credentials(self):
        client = await self.client(credentials="al@ice:pw", url_credentials="al%40ice:pw@")
        self.assertEqual(await client.health(), {"status": "ok"})
        (request,) = self.proxy.requests
        target = self.url.removeprefix("https://").encode()
        self.assertEqual(request[0], b"CONNECT " + target + b" HTTP/1.1")

    async def test_a_large_answer_through_the_tunnel(self):
        client = await self.client()
        response = await client._http.get(self.url + "/big")
        self.assertEqual(await response.content(), self.big)

    async def test_pinning_holds_through_the_tunnel(self):
        client = await self.client(fingerprint="0" * 64)
        with self.assertRaises(TLSRefused):
            await client.health()
        self.assertEqual(len(self.proxy.requests), 1)

    async def test_missing_credentials_are_named(self):
        client = await self.client(credentials="alice:pw", url_credentials="alice:wrong@")
        with self.assertRaises(ServerUnreachable) as caught:
            await client.health()
        message = str(caught.exception)
        self.assertIn("refused CONNECT to 127.0.0.1:", message)
        self.assertIn("407 Proxy Authentication Required", message)
        self.assertNotIn("wrong", message)

    async def test_forbidden(self):
        client = await self.client(mode=403)
        with self.assertRaises(ServerUnreachable) as caught:
            await client.health()
        self.assertIn(": 403 Go Away", str(caught.exception))

    async def test_oversize_head(self):
        client = await self.client(mode="oversize")
        with self.assertRaises(ServerUnreachable) as caught:
            await client.health()
        self.assertIn("more than 16384 bytes of headers", str(caught.exception))

    async def test_a_stalled_proxy_times_out(self):
        self.proxy = ConnectProxy(reactor, "stall")
        port = await self.proxy.listen(self)
        endpoint = ProxyTunnelEndpoint(reactor, parse_proxy_url(f"127.0.0.1:{port}"), "127.0.0.1", 9, timeout=0.2)
        with self.assertRaises(ProxyError) as caught:
            await endpoint.connect(Factory.forProtocol(Protocol))
        self.assertIn("did not open a tunnel to 127.0.0.1:9 within 0.2s", str(caught.exception))

    async def test_no_proxy_goes_direct(self):
        client = await self.client(mode=403, no_proxy="127.0.0.0/8")
        self.assertEqual(await client.health(), {"status": "ok"})
        self.assertEqual(self.proxy.requests, [])

    async def test_an_unreachable_proxy_is_named(self):
        # A port nothing listens on: bind one, then close it.
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        number = port.getHost().port
        await port.stopListening()
        config = parse_proxy_url(f"http://127.0.0.1:{number}")
        client = CoordinationClient(make_http_client(reactor, persistent=False, tls_fingerprint=self.fingerprint, proxy=config), self.url)
        with self.assertRaises(ServerUnreachable) as caught:
            await client.health()
        self.assertIn(f"proxy 127.0.0.1:{number} is unreachable", str(caught.exception))


class EndpointFactoryTests(unittest.TestCase):
    def test_plain_http_through_the_proxy_and_tls_for_https(self):
        proxy = ProxyConfig("127.0.0.1", 3128, no_proxy=parse_no_proxy("direct.org"))
        factory = ProxyEndpointFactory(MemoryReactorClock(), proxy, client_policy(""), 10)
        self.assertIsInstance(factory.endpointForURI(URI.fromBytes(b"http://a.org:8787/")), ProxyTunnelEndpoint)
        tls = factory.endpointForURI(URI.fromBytes(b"https://a.org/"))
        self.assertIsInstance(tls._wrappedEndpoint, ProxyTunnelEndpoint)
        direct = factory.endpointForURI(URI.fromBytes(b"https://direct.org/"))
        self.assertNotIsInstance(direct._wrappedEndpoint, ProxyTunnelEndpoint)


class NodeSettingTests(unittest.TestCase):
    """``wire set --proxy`` (and ``wire up --proxy``): the URL in config.json,
    the credentials in a 0600 file of their own; status shows the proxy hidden."""

    def setUp(self):
        from wire.node.config import NodeConfig, save_config

        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)
        save_config(self.config_dir, NodeConfig(server_url="https://wire.test:8787", node_name="r1", node_id="node-" + "a" * 16))

    async def test_set_keeps_the_url_in_config_and_the_credentials_apart(self):
        from wire import ops
        from wire.cli.formatting import Style, format_set
        from wire.node.config import config_path, load_config
        from wire.node.proxy import node_proxy, proxy_auth_path

        ctx = ops.Context(reactor, self.config_dir, is_root=lambda: True)
        result = await ops.set_settings(ctx, {"proxy": "http://al%40ice:s3cret@proxy.corp:3128"})
        self.assertEqual(result["settings"]["proxy"], "http://proxy.corp:3128")
        self.assertNotIn("s3cret", format_set(result, Style(False)))
        self.assertNotIn(b"s3cret", FilePath(config_path(self.config_dir)).getContent())
        self.assertEqual(os.stat(proxy_auth_path(self.config_dir)).st_mode & 0o777, 0o600)
        config = load_config(self.config_dir)
        proxy = node_proxy(config, {"HTTPS_PROXY": "http://env:1"}, self.config_dir)
        self.assertEqual((proxy.address, proxy.username, proxy.password, proxy.source), ("proxy.corp:3128", "al@ice", "s3cret", "--proxy"))
        self.assertEqual(ctx.proxy_in_use(config.server_url), {"url": "http://***@proxy.corp:3128", "source": "--proxy", "no_proxy_rules": 0})

        # '' goes back to the environment, and forgets the credentials.
        await ops.set_settings(ctx, {"proxy": ""})
        self.assertFalse(os.path.exists(proxy_auth_path(self.config_dir)))
        self.assertEqual(load_config(self.config_dir).proxy, "")

    async def test_a_bad_proxy_is_named(self):
        from wire import ops

        ctx = ops.Context(reactor, self.config_dir, is_root=lambda: True)
        with self.assertRaises(ops.OpError) as caught:
            await ops.set_settings(ctx, {"proxy": "socks5://u:s3cret@x:1"})
        self.assertEqual(str(caught.exception), "--proxy: socks5:// proxies are not supported; give an http:// proxy that speaks CONNECT")

    def test_status_lines_show_the_proxy(self):
        from wire.cli.formatting import _via_proxy

        self.assertEqual(_via_proxy({"proxy": {"url": "http://***@p:3128", "source": "HTTPS_PROXY"}}), " via proxy http://***@p:3128 (HTTPS_PROXY)")
        self.assertEqual(_via_proxy({"proxy": None}), "")

    def test_no_proxy_means_direct_in_status(self):
        from unittest import mock

        from wire import ops

        ctx = ops.Context(reactor, self.config_dir, is_root=lambda: True)
        env = {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".test"}
        with mock.patch.dict(os.environ, env):
            self.assertIsNone(ctx.proxy_in_use("https://wire.test:8787"))
            self.assertEqual(ctx.proxy_in_use("https://other.org")["url"], "http://p:3128")


class ClientEndpointTests(unittest.TestCase):
    """``client_endpoint``: what a raw stream (the relay's) uses."""

    def test_through_the_proxy_unless_no_proxy_or_none(self):
        from twisted.internet.endpoints import HostnameEndpoint

        from wire.proxy import client_endpoint
        from wire.tcpkeepalive import KeepaliveEndpoint

        memory = MemoryReactorClock()
        proxy = parse_proxy_url("http://10.0.0.1:3128", no_proxy=parse_no_proxy("direct.org"))
        self.assertIsInstance(client_endpoint(memory, proxy, "vpn.example.org", 8787), ProxyTunnelEndpoint)
        # Direct: a HostnameEndpoint whose connections get keepalive probes.
        for direct in (client_endpoint(memory, proxy, "direct.org", 8787), client_endpoint(memory, None, "vpn.example.org", 8787)):
            self.assertIsInstance(direct, KeepaliveEndpoint)
            self.assertIsInstance(direct.wrapped, HostnameEndpoint)

    def test_a_host_that_would_inject_a_header_is_refused(self):
        proxy = parse_proxy_url("http://10.0.0.1:3128")
        for host in ("a.org\r\nX-Evil: 1", "", "a b"):
            with self.assertRaises(ValueError):
                ProxyTunnelEndpoint(MemoryReactorClock(), proxy, host, 443)
        with self.assertRaises(ValueError):
            ProxyTunnelEndpoint(MemoryReactorClock(), proxy, "a.org", 0)


class DaemonStartTests(unittest.TestCase):
    def test_a_bad_proxy_in_the_environment_stops_the_daemon_with_its_name(self):
        from unittest import mock

        from wire.node.config import NodeConfig, save_config
        from wire.node.tap import Options, makeService

        config_dir = os.path.abspath(self.mktemp())
        os.makedirs(config_dir)
        save_config(config_dir, NodeConfig(server_url="https://wire.test:8787", node_name="r1", node_id="node-" + "b" * 16))
        options = Options()
        options.parseOptions(["--config-dir", config_dir])
        with mock.patch.dict(os.environ, {"HTTPS_PROXY": "socks5://u:s3cret@p:1080"}), self.assertRaises(SystemExit) as caught:
            makeService(options, MemoryReactorClock())
        self.assertEqual(
            str(caught.exception),
            "wire-node: HTTPS_PROXY: socks5:// proxies are not supported; give an http:// proxy that speaks CONNECT",
        )


class LiveProxyTests(unittest.TestCase):
    """`wire set --proxy` on a running daemon: its next connections use it."""

    def start(self):
        from wire.node.config import NodeConfig, save_config
        from wire.node.daemon import NodeDaemon
        from wire.node.tap import Options, makeService

        self.config_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.config_dir)
        save_config(self.config_dir, NodeConfig(server_url="https://wire.test:8787", node_name="r1", node_id="node-" + "b" * 16))
        options = Options()
        options.parseOptions(["--config-dir", self.config_dir])
        service = makeService(options, MemoryReactorClock())
        (daemon,) = [s for s in service if isinstance(s, NodeDaemon)]
        return daemon

    def proxy_of(self, daemon):
        return daemon.client._http._agent._endpointFactory._proxy

    def test_the_new_proxy_is_used_at_once(self):
        from dataclasses import replace

        daemon = self.start()
        self.assertIsNone(self.proxy_of(daemon))
        daemon.on_proxy_changed(replace(daemon.config, proxy="http://127.0.0.1:3128"))
        self.assertEqual(self.proxy_of(daemon).display(), "http://127.0.0.1:3128")
        daemon.on_proxy_changed(replace(daemon.config, proxy=""))
        self.assertIsNone(self.proxy_of(daemon), "back to the environment (none here)")

    def test_an_unusable_proxy_keeps_the_one_in_use(self):
        from dataclasses import replace
        from unittest import mock

        from twisted.internet import defer

        from wire.node.config import load_config, save_config
        from wire.node.daemon import SettingsRefused

        daemon = self.start()
        daemon._join_pending = False
        # As an earlier `wire set --proxy` left it: in use and saved.
        daemon.config = replace(daemon.config, proxy="http://127.0.0.1:3128")
        save_config(self.config_dir, daemon.config)
        daemon.on_proxy_changed(daemon.config)
        before = daemon.client._http
        with mock.patch.dict(os.environ, {"HTTPS_PROXY": "socks5://p:1080"}):
            refused = self.failureResultOf(defer.ensureDeferred(daemon.change_settings({"proxy": ""})), SettingsRefused)
        self.assertIn("socks5:// proxies are not supported", str(refused.value))
        self.assertIs(daemon.client._http, before, "the proxy in use stays")
        self.assertEqual(load_config(self.config_dir).proxy, "http://127.0.0.1:3128", "nothing saved")
        self.assertEqual(daemon.config.proxy, "http://127.0.0.1:3128")


class CredentialLeakTests(unittest.TestCase):
    """A review found passwords in error messages; never again."""

    def test_no_error_shows_a_password(self):
        from wire.proxy import ProxyConfigError, parse_proxy_url

        for url in (
            "http://alice:s3cr3t/@proxy.corp:3128",  # a "/" in the password, unescaped
            "http://alice:s3cr3t/",  # the "@" forgotten
            "http://alice:s3cr3t@proxy.corp:99999",
            "http://alice:s3cr3t@proxy.corp:3128/path",
            "http://alice:s3cr3t@proxy.corp:3128?q",
            "http://alice:s3cr3t@",
        ):
            try:
                shown = parse_proxy_url(url).display()
            except ProxyConfigError as e:
                shown = str(e)
            self.assertNotIn("s3cr3t", shown, url)
        self.assertEqual(parse_proxy_url("http://alice:s3cr3t/@proxy.corp:3128").password, "s3cr3t/")
