"""The node's end of the relay over TCP (:mod:`wire.relaystream`).

When UDP to the server does not work, the relay shim sends its frames here
instead: one TLS connection to the server's API port (certificate pinned as
the API client pins it; through an HTTP proxy when one is given), upgraded
to the relay stream. While the shim wants it, a lost stream is opened again
with backoff (0.5 s doubling to 30 s); a slow connection drops frames
rather than queueing them (the tunnel inside recovers, as over UDP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from wire.node.backoff import Backoff
from wire.relaystream import MAX_HEAD, RecordReader, RecordWriter, StreamError, request_head, response_status
from wire.textsafe import escaped
from wire.tls import client_policy

CONNECT_TIMEOUT = 10.0
# From the connection to the server's 101: the TLS handshake and the head.
HEAD_TIMEOUT = 15.0
# The server answers every keepalive (each session's, every 10 s): a stream
# silent this long is dead (the server's host gone, a NAT's state dropped).
SILENT_TIMEOUT = 30.0
RETRY_FIRST = 0.5
RETRY_CAP = 30.0

log = Logger()


def stream_endpoint(reactor: Any, server_url: str, fingerprint: str, via: Any = None) -> IStreamClientEndpoint:
    """Where the stream connects: the server URL's host and port, in TLS for
    https (pinned to ``fingerprint`` when given). ``via(host, port)``, when
    given, makes the TCP endpoint (a proxy's CONNECT tunnel)."""
    parts = urlsplit(server_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    tcp = via(host, port) if via is not None else HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    if parts.scheme != "https":
        return tcp
    return wrapClientTLS(client_policy(fingerprint).creatorForNetloc(host.encode("idna"), port), tcp)


class _StreamProtocol(Protocol, TimeoutMixin):
    transport: Any  # a TCP (or TLS) transport: a producer's consumer too

    def __init__(self, client: RelayStreamClient):
        self.client = client
        self._head = b""
        self._reader: RecordReader | None = None
        self._writer: RecordWriter | None = None

    def callLater(self, period: float, func: Any, *args: Any, **kw: Any) -> Any:
        return self.client.reactor.callLater(period, func, *args, **kw)

    def connectionMade(self) -> None:
        self.setTimeout(HEAD_TIMEOUT)
        self._writer = RecordWriter(self.client.reactor, self.transport)
        self.transport.write(request_head(self.client.host, self.client.node_id, self.client.credential()))

    def timeoutConnection(self) -> None:
        if self._reader is None:
            self.client.problem = f"no answer to the relay stream's upgrade within {HEAD_TIMEOUT:.0f}s"
        else:
            self.client.problem = f"the relay stream was silent for {SILENT_TIMEOUT:.0f}s"
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self._reader is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD:
                    self._fail("the server's answer head is too large")
                return
            head, rest = self._head[:end], self._head[end + 4 :]
            self._head = b""
            try:
                status, reason = response_status(head)
            except StreamError as e:
                self._fail(str(e))
                return
            if status != 101:
                body = rest.decode("utf-8", "replace").strip()[:200]
                self._fail(f"the server refused the relay stream: {status} {body or reason}")
                return
            self._reader = RecordReader()
            self.setTimeout(SILENT_TIMEOUT)
            self.client.connected(self)
            data = rest
            if not data:
                return
        try:
            frames = self._reader.feed(data)
        except StreamError as e:
            self._fail(f"the server's stream is garbled: {e}")
            return
        for frame in frames:
            self.client.frame(frame)

    def write_frame(self, frame: bytes) -> bool:
        if self._reader is None or self._writer is None:
            return False  # not upgraded yet
        return self._writer.add(frame)

    def _fail(self, problem: str) -> None:
        self.client.problem = problem
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        if self._writer is not None:
            self._writer.cancel()
        self.client.lost(self, reason)


class RelayStreamClient:
    """One stream to the server while wanted; ``send`` a frame, ``on_frame`` for each one back."""

    def __init__(
        self,
        reactor: Any,
        endpoint: Callable[[], IStreamClientEndpoint],
        host: str,
        node_id: str,
        credential: Callable[[], str | None],
        on_frame: Callable[[bytes], bool],
        on_up: Callable[[], None] = lambda: None,
    ):
        self.reactor = reactor
        self._endpoint = endpoint
        self.host = host
        self.node_id = node_id
        self.credential = credential
        # Each frame from the server (True: authentic), and the stream being up.
        self.on_frame = on_frame
        self.on_up = on_up
        self.problem: str | None = None  # why the last stream failed, for status
        self.dropped = 0
        self._wanted = False
        self._protocol: _StreamProtocol | None = None  # upgraded and carrying records
        self._connecting: Any = None
        self._retry: Any = None
        self._backoff = Backoff(RETRY_FIRST, RETRY_CAP)

    @property
    def is_up(self) -> bool:
        return self._protocol is not None

    def want(self, wanted: bool) -> None:
        """Open the stream (and keep it open), or close it."""
        if wanted == self._wanted:
            return
        self._wanted = wanted
        if wanted:
            self._connect()
            return
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.loseConnection()
        self._protocol = None

    def send(self, frame: bytes) -> bool:
        """False when there is no stream, or it is too slow to take more."""
        protocol = self._protocol
        if protocol is None or not protocol.write_frame(frame):
            self.dropped += 1
            return False
        return True

    # -- the protocol's reports ------------------------------------------------

    def connected(self, protocol: _StreamProtocol) -> None:
        if not self._wanted:
            protocol.transport.loseConnection()
            return
        self._protocol = protocol
        self.problem = None
        log.info("relay stream to the server open (over TCP: UDP to the server does not work)")
        # Every side tells the server at once that it is on this stream now.
        self.on_up()

    def frame(self, frame: bytes) -> None:
        """A frame from the stream. The backoff starts again only once one is
        authentic: a stream the server ends at once (it no longer knows our
        sessions) is opened again after 0.5, 1, 2 ... 30 s, not every 0.5 s."""
        if self.on_frame(frame):
            self._backoff.reset()

    def lost(self, protocol: _StreamProtocol, reason: Any) -> None:
        if self._protocol is protocol:
            self._protocol = None
            if self._wanted:
                log.warn("relay stream to the server lost; opening it again")
        self._again()

    # -- connecting --------------------------------------------------------------

    def _connect(self) -> None:
        if not self._wanted or self._connecting is not None or self._protocol is not None:
            return
        factory = Factory.forProtocol(lambda: _StreamProtocol(self))
        try:
            attempt = self._endpoint().connect(factory)
        except Exception as e:  # a bad URL, a proxy refused at once
            self.problem = f"cannot open the relay stream: {e}"
            self._again()
            return
        self._connecting = attempt

        def done(result: Any) -> None:
            self._connecting = None

        def failed(failure: Any) -> None:
            self._connecting = None
            if not failure.check(Exception) or self._wanted is False:
                return None
            self.problem = f"cannot open the relay stream: {escaped(str(failure.value) or type(failure.value).__name__)}"
            self._again()
            return None

        attempt.addCallbacks(done, failed)

    def _again(self) -> None:
        if not self._wanted or self._protocol is not None or (self._retry is not None and self._retry.active()):
            return
        self._retry = self.reactor.callLater(self._backoff.next(), self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        self._connect()
