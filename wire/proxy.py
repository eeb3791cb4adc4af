"""HTTP proxies: which one (``--proxy``, ``HTTPS_PROXY``, ``NO_PROXY``), and
a tunnel through it (``CONNECT host:port``).

A proxy here is an ``http://`` proxy reached in plain TCP that opens a tunnel
with CONNECT; what runs in the tunnel (TLS, pinned or not, then HTTP, or the
relay stream) is the caller's, so the proxy sees only the host and port.

Credentials in a proxy URL (``http://user:secret@proxy:3128``) are a secret:
they go into the ``Proxy-Authorization`` header and nowhere else: not into
``repr()``, errors, logs or status, which show ``http://***@proxy:3128``.

:class:`ProxyTunnelEndpoint` is an ``IStreamClientEndpoint``: the HTTP client
wraps it in TLS (:class:`ProxyEndpointFactory`), and so can any stream.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from wire.tcpkeepalive import KeepaliveEndpoint

# The proxy's answer to CONNECT: its status line and headers, no more than this.
MAX_HEAD_BYTES = 16 * 1024
DEFAULT_PROXY_PORT = 80  # as curl's http:// URLs, Go and urllib3 have it
# Where the environment names a proxy, in the order asked (lower case too).
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")

log = Logger()


class ProxyConfigError(ValueError):
    """A proxy URL or NO_PROXY list we cannot use; says where and what is wrong (never the credentials)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class ProxyError(ConnectError):
    """The tunnel through the proxy did not open; ``str()`` says where and why."""

    def __init__(self, message: str):
        super().__init__(string=message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# -- NO_PROXY --------------------------------------------------------------


@dataclass(frozen=True)
class NoProxyRule:
    """One NO_PROXY entry: every host (``*``), a domain and its subdomains, or an
    IP network; only on ``port`` when given (0: any port)."""

    domain: str = ""
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    everything: bool = False
    port: int = 0

    def matches(self, host: str, port: int) -> bool:
        if self.port and self.port != port:
            return False
        if self.everything:
            return True
        address = _ip_address(host)
        if self.network is not None:
            return address is not None and address.version == self.network.version and address in self.network
        if address is not None:
            return False
        name = host.lower().rstrip(".")
        return name == self.domain or name.endswith("." + self.domain)


_DOMAIN = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def parse_no_proxy(text: str, where: str = "NO_PROXY") -> tuple[NoProxyRule, ...]:
    """A NO_PROXY list: comma- (or space-) separated ``*``, ``example.com``
    (and its subdomains), ``.example.com``, ``*.example.com``, IP addresses,
    CIDRs, each optionally with ``:port`` (``[v6]:port`` for IPv6)."""
    rules = []
    for entry in re.split(r"[,\s]+", text):
        if entry:
            rules.append(_no_proxy_rule(entry, where))
    return tuple(rules)


def _no_proxy_rule(entry: str, where: str) -> NoProxyRule:
    shown = entry[:60]
    if entry == "*":
        return NoProxyRule(everything=True)
    text, port = entry, 0
    bracketed = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", text)
    if bracketed:
        text, port_text = bracketed.group(1), bracketed.group(2)
        port = _port(port_text, where, shown) if port_text is not None else 0
    elif text.count(":") == 1:
        text, port_text = text.split(":")
        port = _port(port_text, where, shown)
    try:
        if "/" in text:
            return NoProxyRule(network=ipaddress.ip_network(text, strict=False), port=port)
        address = ipaddress.ip_address(text)
        return NoProxyRule(network=ipaddress.ip_network(address), port=port)
    except ValueError:
        if "/" in text or (":" in text and not bracketed):
            raise ProxyConfigError(where, f"{shown!r} is not an IP address, network or host name")
    domain = text.lower().rstrip(".")
    domain = domain[2:] if domain.startswith("*.") else domain.lstrip(".")
    if not domain or len(domain) > 253 or not _DOMAIN.match(domain):
        raise ProxyConfigError(where, f"{shown!r} is not a host name, domain, IP address or network")
    return NoProxyRule(domain=domain, port=port)


def _port(text: str, where: str, shown: str) -> int:
    if not text.isdigit() or not text.isascii() or not 0 < int(text) < 65536:
        raise ProxyConfigError(where, f"{shown!r} has a bad port (1-65535)")
    return int(text)


# -- the proxy -------------------------------------------------------------


@dataclass(frozen=True)
class ProxyConfig:
    """An HTTP proxy to CONNECT through, and the hosts reached without it."""

    host: str
    port: int = DEFAULT_PROXY_PORT
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    no_proxy: tuple[NoProxyRule, ...] = ()
    # Where it came from: "--proxy", "HTTPS_PROXY", ...
    source: str = "--proxy"

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 in brackets), for messages."""
        return f"{_bracketed(self.host)}:{self.port}"

    def display(self) -> str:
        """The proxy as shown to people: ``http://host:port``, credentials as ``***``."""
        return f"http://{'***@' if self.has_credentials else ''}{self.address}"

    def __repr__(self) -> str:
        return f"ProxyConfig({self.display()!r}, source={self.source!r}, no_proxy={len(self.no_proxy)} rules)"

    __str__ = display

    def applies_to(self, host: str, port: int) -> bool:
        """Whether a connection to ``host:port`` goes through the proxy (NO_PROXY says not)."""
        host = host.strip("[]")
        return not any(rule.matches(host, port) for rule in self.no_proxy)

    def authorization(self) -> bytes | None:
        """The ``Proxy-Authorization`` header's value, when the URL carried credentials."""
        if not self.has_credentials:
            return None
        return b"Basic " + base64.b64encode(f"{self.username}:{self.password}".encode())

    def describe(self) -> dict:
        """For status output (no credentials)."""
        return {"url": self.display(), "source": self.source, "no_proxy_rules": len(self.no_proxy)}


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_URL = re.compile(r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?P<rest>.*)$", re.DOTALL)


def parse_proxy_url(text: str, where: str = "--proxy", no_proxy: tuple[NoProxyRule, ...] = ()) -> ProxyConfig:
    """``http://[user:password@]host[:port][/]`` (no scheme: http) as a ProxyConfig;
    a :class:`ProxyConfigError` names what is wrong, never the credentials."""
    if not isinstance(text, str):
        raise ProxyConfigError(where, "a proxy URL must be a string")
    text = text.strip()
    if not text:
        raise ProxyConfigError(where, "the proxy URL is empty")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise ProxyConfigError(where, "the proxy URL holds spaces or control characters")
    match = _URL.match(text)
    assert match is not None  # the pattern matches every string
    scheme, rest = (match.group("scheme") or "http").lower(), match.group("rest")
    if scheme != "http":
        raise ProxyConfigError(
            where, f"{scheme}:// proxies are not supported; give an http:// proxy that speaks CONNECT"
        )
    # Credentials end at the last "@" (a password may hold "@" or "/" unescaped):
    # nothing before it is ever shown.
    userinfo, at, after = rest.rpartition("@")
    hostport, slash, path = after.partition("/")
    shown = f"http://{'***@' if at else ''}{_shown_hostport(hostport)}"
    if "?" in hostport or "#" in hostport:
        raise ProxyConfigError(where, f"{shown}: a proxy URL has no query or fragment")
    if (slash and path) or "?" in after or "#" in after:
        raise ProxyConfigError(where, f"{shown}: a proxy URL has no path, query or fragment")
    username, _, password = userinfo.partition(":")
    try:
        username = unquote(username, errors="strict")
        password = unquote(password, errors="strict")
    except UnicodeDecodeError:
        raise ProxyConfigError(where, f"{shown}: the credentials are not UTF-8 once percent-decoded")
    if at and not username:
        raise ProxyConfigError(where, f"{shown}: the credentials have no user name")
    if any(not c.isprintable() for c in username + password) or ":" in username:
        raise ProxyConfigError(where, f"{shown}: the credentials hold control characters or a ':' in the user name")
    host, port = _host_port(hostport, where, shown)
    return ProxyConfig(host, port, username, password, no_proxy, where)


def _shown_hostport(hostport: str) -> str:
    """HOST[:PORT] as an error may show it: a "port" that is no number may be
    a password given without its "@" (``http://alice:secret/``), so it is masked."""
    head, colon, tail = hostport[:80].rpartition(":")
    if not colon or ("[" in head and not head.endswith("]")):
        return hostport[:80]  # no port, or a colon inside IPv6 brackets
    return f"{head}:{tail}" if tail.isdigit() or not tail else f"{head}:***"


def _host_port(hostport: str, where: str, shown: str) -> tuple[str, int]:
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", hostport)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2)
        address = _ip_address(host)
        if address is None or address.version != 6:
            raise ProxyConfigError(where, f"{shown}: {host[:60]!r} in brackets is not an IPv6 address")
        host = str(address)
    else:
        if hostport.count(":") > 1:
            raise ProxyConfigError(where, f"{shown}: put an IPv6 proxy address in brackets, http://[::1]:3128")
        host, colon, port_text_ = hostport.partition(":")
        port_text = port_text_ if colon else None
        if not host:
            raise ProxyConfigError(where, f"{shown}: the proxy URL has no host")
        address = _ip_address(host)
        if address is not None:
            host = str(address)
        else:
            host = host.lower().rstrip(".")
            if len(host) > 253 or not _DOMAIN.match(host):
                raise ProxyConfigError(where, f"{shown}: {host[:60]!r} is not a host name or IP address")
    if port_text is None or port_text == "":
        return host, DEFAULT_PROXY_PORT
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ProxyConfigError(where, f"{shown}: the proxy's port must be 1-65535")
    return host, int(port_text)


def proxy_from_environment(environ: Mapping[str, str] | None = None, explicit: str = "") -> ProxyConfig | None:
    """The proxy to use: ``explicit`` (``--proxy URL``) when given, else the first of
    HTTPS_PROXY, https_proxy, ALL_PROXY, all_proxy that is set; None: none.
    NO_PROXY (or no_proxy) applies to either. Raises :class:`ProxyConfigError`."""
    environ = os.environ if environ is None else environ
    no_proxy_name = next((name for name in NO_PROXY_VARIABLES if environ.get(name, "").strip()), None)
    rules = parse_no_proxy(environ[no_proxy_name], no_proxy_name) if no_proxy_name else ()
    if explicit:
        return parse_proxy_url(explicit, "--proxy", rules)
    for name in PROXY_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            return parse_proxy_url(value, name, rules)
    return None


# -- the tunnel ------------------------------------------------------------


class _TunnelProtocol(Protocol):
    """Speaks CONNECT to the proxy; once it says 2xx, passes the connection
    (and what came after the answer) to the protocol that asked for the tunnel."""

    def __init__(self, endpoint: ProxyTunnelEndpoint, factory: Factory, opened: Deferred):
        self._endpoint = endpoint
        self._factory = factory
        self._opened = opened
        self._head = b""
        self.inner: IProtocol | None = None

    def connectionMade(self) -> None:
        e = self._endpoint
        target = e.target.encode("ascii" if e.target.isascii() else "idna")
        lines = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        authorization = e.proxy.authorization()
        if authorization is not None:
            lines.append(b"Proxy-Authorization: " + authorization)
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if self._opened.called:
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self._fail(f"answered CONNECT with more than {MAX_HEAD_BYTES} bytes of headers")
            return
        if end > MAX_HEAD_BYTES:
            self._fail(f"answered CONNECT with more than {MAX_HEAD_BYTES} bytes of headers")
            return
        head, rest = self._head[:end], self._head[end + 4:]
        self._head = b""
        status_line = head.split(b"\r\n", 1)[0]
        match = re.fullmatch(rb"HTTP/1\.[01] ([0-9]{3})(?: (.*))?", status_line)
        if match is None:
            self._fail("did not answer CONNECT in HTTP")
            return
        code = int(match.group(1))
        if not 200 <= code < 300:
            reason = _printable(match.group(2) or b"")
            self._fail(f"refused CONNECT to {self._endpoint.target}: {code}{' ' + reason if reason else ''}")
            return
        self._open(rest)

    def _open(self, rest: bytes) -> None:
        transport = self.transport
        assert transport is not None
        inner = self._factory.buildProtocol(transport.getPeer())
        if inner is None:
            transport.loseConnection()
            self._opened.errback(ConnectingCancelledError(transport.getPeer()))
            return
        self.inner = inner
        inner.makeConnection(transport)
        self._opened.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _fail(self, why: str) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]
        if not self._opened.called:
            self._opened.errback(ProxyError(f"proxy {self._endpoint.proxy.address} {why}"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)
        elif not self._opened.called:
            self._opened.errback(
                ProxyError(f"proxy {self._endpoint.proxy.address} closed the connection before answering CONNECT")
            )


def _printable(raw: bytes) -> str:
    text = raw.decode("latin-1")[:100]
    return "".join(c if c.isprintable() else "?" for c in text)


class _TunnelFactory(Factory):
    def __init__(self, endpoint: ProxyTunnelEndpoint, wrapped: Factory, opened: Deferred):
        self._endpoint = endpoint
        self._wrapped = wrapped
        self._opened = opened

    def buildProtocol(self, addr):
        return _TunnelProtocol(self._endpoint, self._wrapped, self._opened)


@implementer(IStreamClientEndpoint)
class ProxyTunnelEndpoint:
    """A stream to ``host:port`` through ``proxy`` (``CONNECT``): the TCP
    connection to the proxy and its answer within ``timeout`` seconds.
    ``connect`` fires with the protocol built by the factory once the tunnel
    is open; errors are :class:`ProxyError` (a ConnectError) naming proxy,
    target and the proxy's answer."""

    def __init__(self, reactor, proxy: ProxyConfig, host: str, port: int, timeout: float = 10.0):
        self._reactor = reactor
        self.proxy = proxy
        self.host = host.strip("[]") if isinstance(host, str) else host.decode("idna").strip("[]")
        if not self.host or not self.host.isprintable() or any(c.isspace() for c in self.host):
            # It goes into the CONNECT request line: no room for a header of its own.
            raise ValueError(f"not a host to CONNECT to: {self.host[:60]!r}")
        if not 0 < port < 65536:
            raise ValueError(f"not a port to CONNECT to: {port}")
        self.port = port
        self.timeout = timeout

    @property
    def target(self) -> str:
        return f"{_bracketed(self.host)}:{self.port}"

    def __repr__(self) -> str:
        return f"ProxyTunnelEndpoint({self.proxy.display()!r} -> {self.target})"

    def connect(self, protocolFactory) -> Deferred:
        state: dict = {"tcp": None, "protocol": None, "why": None}

        def cancel(_: Deferred) -> None:
            stop("cancelled")

        opened: Deferred = Deferred(cancel)

        def stop(why: str) -> None:
            if opened.called:
                return
            state["why"] = why
            if state["protocol"] is not None and state["protocol"].transport is not None:
                state["protocol"].transport.abortConnection()
            elif state["tcp"] is not None:
                state["tcp"].cancel()

        timer = self._reactor.callLater(self.timeout, stop, "timeout")

        def settled(result):
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure) and state["why"] is not None:
                if state["why"] == "timeout":
                    return Failure(ProxyError(
                        f"proxy {self.proxy.address} did not open a tunnel to {self.target} within {self.timeout:g}s"
                    ))
                return Failure(CancelledError())
            return result

        tunnel = _TunnelFactory(self, protocolFactory, opened)
        tcp = _tcp_endpoint(self._reactor, self.proxy.host, self.proxy.port, self.timeout).connect(tunnel)
        state["tcp"] = tcp

        def connected(protocol):
            state["protocol"] = protocol

        def unreachable(failure: Failure) -> None:
            if not opened.called:
                if state["why"] is not None:
                    opened.errback(failure)
                else:
                    opened.errback(ProxyError(
                        f"proxy {self.proxy.address} is unreachable: {failure.getErrorMessage()}"
                    ))

        tcp.addCallbacks(connected, unreachable)
        return opened.addBoth(settled)


def _tcp_endpoint(reactor, host: str, port: int, timeout: float):
    """A TCP endpoint (to the proxy): an address as it is, a name looked up
    (HostnameEndpoint); probed like a direct one (wire.tcpkeepalive)."""
    address = _ip_address(host)
    if address is None:
        return KeepaliveEndpoint(HostnameEndpoint(reactor, host, port, timeout=timeout))
    if address.version == 6:
        return KeepaliveEndpoint(TCP6ClientEndpoint(reactor, host, port, timeout=timeout))
    return KeepaliveEndpoint(TCP4ClientEndpoint(reactor, host, port, timeout=timeout))


def client_endpoint(reactor, proxy: ProxyConfig | None, host: str, port: int, timeout: float = 10.0):
    """A stream to ``host:port``: through ``proxy`` when there is one and
    NO_PROXY does not exclude the host, else direct (HostnameEndpoint).
    For any TCP stream to the server (the HTTP client's, a relay stream's);
    put TLS on top with ``wrapClientTLS``."""
    if proxy is not None and proxy.applies_to(host, port):
        return ProxyTunnelEndpoint(reactor, proxy, host, port, timeout)
    # Probed, so a server that vanished without a word is noticed (wire.tcpkeepalive).
    return KeepaliveEndpoint(HostnameEndpoint(reactor, host.strip("[]"), port, timeout=timeout))


# -- the HTTP client's endpoints ---------------------------------------------


@implementer(IAgentEndpointFactory)
class ProxyEndpointFactory:
    """Endpoints for twisted.web's Agent: through the proxy when it applies to
    the URL's host, else direct (as the Agent's own); https in TLS under the
    same policy either way, so a pinned certificate is pinned in the tunnel too."""

    def __init__(self, reactor, proxy: ProxyConfig | None, tls_policy, connect_timeout: float):
        self._reactor = reactor
        self._proxy = proxy
        self._tls_policy = tls_policy
        self._timeout = connect_timeout

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii") if isinstance(uri.host, bytes) else uri.host
        endpoint = client_endpoint(self._reactor, self._proxy, host, uri.port, self._timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
        if uri.scheme == b"http":
            return endpoint
        raise ValueError(f"no endpoint for a {uri.scheme!r} URL")
