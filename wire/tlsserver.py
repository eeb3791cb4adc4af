"""The server's TLS: Python's own ``ssl`` module under a Twisted transport.

Every node holds a connection to the server for good (its long-poll), so
what one costs the server is multiplied by the mesh. Twisted's TLS runs on
pyOpenSSL, whose OpenSSL (4.x, bundled in the ``cryptography`` wheel)
spends about 33 KiB on each connection, 16 KiB of it before the handshake.
The ``ssl`` module's ``SSLObject`` over two memory BIOs is the same
memory-BIO design (asyncio's) on the system's OpenSSL (3.0 here), and
costs about 17 KiB: at 10,000 nodes, 170 MB instead of 330
(``bench/tls_idle_memory.py`` measures it).

The transport encrypts as it is written to, straight into the TCP
transport, so the TCP transport's buffer and its producer do the flow
control, as without TLS. TLS 1.2 is the least accepted, and renegotiation
is refused, so a write never waits on a read."""

from __future__ import annotations

import json
import ssl

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport, IStreamServerEndpoint, ITransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from wire.protocol import error_body

# A connection's memory BIOs keep, for as long as it lives, the capacity of
# the most they ever held at once: what the server wrote in one go (every
# node's first long-poll brings the whole netmap) and what it was handed in
# one go (a node's ClientHello with post-quantum key shares is ~1.5 KB).
# So the server encrypts at most TLS_RECORD_DATA per record and hands
# OpenSSL at most TLS_RECEIVE_PIECE at a time: each BIO stays near 1 KiB.
# 16 KiB records left 22 KiB per connection, 4 KiB ones 5.5 KiB. The price:
# a 3.8 MB netmap (10,000 nodes) takes ~10 ms to encrypt instead of ~4, and
# 2 % more bytes; answers under 1 KiB (all of steady state) are one record
# either way. bench/tls_idle_memory.py measures it.
TLS_RECORD_DATA = 1024
TLS_RECEIVE_PIECE = 256
# A relay stream (wire.server.relaystream) is the other way round: a few
# connections carrying a frame every few microseconds, where 256-byte
# pieces cost a failed read each and 1 KiB records split every frame in
# two (a third of the server's time per relayed frame, profiled). Once
# upgraded it takes whole records both ways: its BIOs keep up to ~32 KiB
# each once it carried traffic (an idle stream's stay small).
BULK_PIECE = 16384

# What one read from OpenSSL asks for: a whole record's data at most.
_READ_SIZE = 16384


class TLSConfigError(Exception):
    pass


def server_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """The server side's TLS settings, with its certificate and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # One TLS 1.3 ticket (stateless: nothing kept here), not for resuming:
    # it answers the client's Finished at once. Without it the server has
    # nothing to send then, delays its ACK, and a client that writes its
    # request as a second segment waits 40 ms on Nagle (measured).
    context.num_tickets = 1
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as e:
        raise TLSConfigError(f"cannot load the TLS certificate {cert_path} / key {key_path}: {e}")
    return context


# What a plain-HTTP client is told (see TLSServerProtocol._fail). With TLS
# on, nodes authenticate: they join with a token, whose URL says https.
PLAIN_HTTP_MESSAGE = (
    "this server speaks HTTPS, not plain HTTP: nodes join it with a join token "
    "(sudo wire up --join TOKEN, the token from 'wire admin keys create' on the server)"
)
_PLAIN_HTTP_BODY = json.dumps(error_body(PLAIN_HTTP_MESSAGE)).encode()
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
    + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_PLAIN_HTTP_BODY)
    + _PLAIN_HTTP_BODY
)

@implementer(ISSLTransport)
class TLSServerProtocol(ProtocolWrapper):
    """One server-side TLS connection: it decrypts what the TCP transport
    receives for the wrapped protocol, and is the wrapped protocol's
    transport, encrypting what it writes."""

    # Set on the instance only when they change: 10,000 of these live at once.
    _handshake_done = False
    _early_writes: tuple[bytes, ...] = ()  # written before the handshake ended
    _failure: Failure | None = None  # why TLS ended the connection
    _closed_cleanly = False  # the peer's close_notify came
    _record_data = TLS_RECORD_DATA
    _receive_piece = TLS_RECEIVE_PIECE

    def makeConnection(self, transport):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = self.factory.context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        ProtocolWrapper.makeConnection(self, transport)

    @property
    def _tcp(self) -> ITransport:
        """The TCP transport: makeConnection sets it before anything can be
        received, written or closed, and nothing unsets it."""
        assert self.transport is not None
        return self.transport

    # What the peer sends

    def dataReceived(self, data):
        view = memoryview(data)
        piece = self._receive_piece
        for start in range(0, len(view), piece):
            self._receive(view[start : start + piece])

    def _receive(self, data) -> None:
        if self._failure is not None or self._closed_cleanly:
            return
        self._incoming.write(data)
        if not self._handshake_done and not self._handshake():
            return
        self._deliver()

    def _handshake(self) -> bool:
        """Go on with the handshake; whether it is done."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError as e:
            self._fail(e)
            return False
        self._handshake_done = True
        self._flush()
        early, self._early_writes = self._early_writes, ()
        for data in early:
            self._encrypt(data)
        if self.disconnecting:
            self._close()
        return True

    def _deliver(self) -> None:
        """Hand everything decrypted so far to the wrapped protocol."""
        while self._failure is None and not self.disconnecting:
            try:
                data = self._tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as e:
                self._fail(e)
                break
            if not data:
                # close_notify (the ssl module reads it as b""): the peer is
                # done, and may wait for ours before it closes.
                self._closed_cleanly = True
                self._close()
                break
            self.wrappedProtocol.dataReceived(data)
        self._flush()  # a TLS 1.3 key update answers itself

    # What the wrapped protocol writes

    def write(self, data):
        if not data or self.disconnecting or self._failure is not None:
            return
        if not self._handshake_done:
            self._early_writes += (bytes(data),)
            return
        self._encrypt(data)

    def writeSequence(self, iovec):
        # One record for a response's head and body, not one for each piece.
        self.write(b"".join(iovec))

    def _encrypt(self, data) -> None:
        """Encrypt into the TCP transport, a record at a time: the outgoing
        BIO never holds more than one (see TLS_RECORD_DATA). A memory BIO
        takes all there is and renegotiation is off, so a write never has
        to wait."""
        record = self._record_data
        if len(data) <= record:  # every answer in steady state: one record
            self._tls.write(data)
            self._flush()
            return
        view = memoryview(data)
        for start in range(0, len(view), record):
            self._tls.write(view[start : start + record])
            self._flush()

    def carry_bulk(self) -> None:
        """From now on the connection carries bulk data (see BULK_PIECE)."""
        self._record_data = self._receive_piece = BULK_PIECE

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._tcp.write(self._outgoing.read())

    # Ending it

    def loseConnection(self):
        if self.disconnecting:
            return
        self.disconnecting = True
        if self._handshake_done or self._failure is not None:
            self._close()
        elif not self._early_writes:
            # Nothing to say and no TLS yet to say it in: close at once.
            self._tcp.loseConnection()
        # else: _handshake closes once those writes are out.

    def _close(self) -> None:
        """Send close_notify, then close the TCP connection once all written
        is out. The peer's close_notify is not waited for (RFC 8446 6.1)."""
        if self._failure is None:
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass  # SSLWantReadError: its close_notify has not come
            self._flush()
        self.disconnecting = True
        self._tcp.loseConnection()

    def _fail(self, error: ssl.SSLError) -> None:
        """A TLS error: send the alert OpenSSL made, if any, and close.

        A plain HTTP request instead of a handshake (``http://`` for this
        ``https://`` server) gets an HTTP answer it can read, saying so: an
        alert would reach it as a bare closed connection, told to a user as
        "unreachable" and retried for ever."""
        self._failure = Failure(error)
        if not self._handshake_done and error.reason == "HTTP_REQUEST":
            self._tcp.write(PLAIN_HTTP_ANSWER)
        else:
            self._flush()
        self._tcp.loseConnection()

    def connectionLost(self, reason):
        if self._failure is not None:
            reason = self._failure
        elif not self._closed_cleanly and reason.check(ConnectionDone) and not self.disconnecting:
            # The peer closed TCP without close_notify: data may be cut short.
            reason = Failure(ConnectionLost("the TLS connection ended without close_notify"))
        self._tls = self._incoming = self._outgoing = None
        ProtocolWrapper.connectionLost(self, reason)

    # ISSLTransport

    def getPeerCertificate(self):
        return None  # nodes authenticate with bearer credentials, not certificates


class TLSServerFactory(WrappingFactory[TLSServerProtocol]):
    protocol = TLSServerProtocol

    def __init__(self, context: ssl.SSLContext, wrappedFactory):
        super().__init__(wrappedFactory)
        self.context = context


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """TLS over a stream endpoint, as ``SSL4ServerEndpoint`` is over TCP."""

    def __init__(self, endpoint: IStreamServerEndpoint, context: ssl.SSLContext):
        self._endpoint = endpoint
        self._context = context

    def listen(self, factory):
        return self._endpoint.listen(TLSServerFactory(self._context, factory))
