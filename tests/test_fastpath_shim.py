"""The node's shim and the server's kernel fast path: frames sealed by the
peer's side, a socket of its own per session, and the peer's side anew."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.fakes import UDPClock
from wire.node.relay import REFRESH_EVERY, RelayShim
from wire.protocol import RelayGrant
from wire.relayproto import OVERHEAD, REFRESH_PEER, TO_NODE, TO_SERVER, FrameKey
from wire.server.relay import RelayTable

SERVER = ("192.0.2.1", 8788)
WG_PORT = 51820


class FastShimTests(unittest.TestCase):
    def setUp(self):
        self.clock = UDPClock()
        self.shim = RelayShim(self.clock, SERVER[0], SERVER[1], WG_PORT)
        self.table = RelayTable(self.clock)
        self.table.offer_peer_keys = True  # the server's fast path is on
        self.addCleanup(lambda: Deferred.fromCoroutine(self.shim.stop()))

    def add(self, grant: RelayGrant) -> str:
        return self.successResultOf(Deferred.fromCoroutine(self.shim.add(grant)))

    def upstreams(self):
        return [p for p in self.clock.listening() if p.host != "127.0.0.1"]

    def wireguard_got(self) -> list[bytes]:
        [socket] = [p for p in self.clock.listening() if p.host == "127.0.0.1"]
        return [data for data, addr in socket.written if addr == ("127.0.0.1", WG_PORT)]

    def deliver(self, frame: bytes, source=SERVER) -> None:
        for port in self.upstreams():
            port.protocol.datagramReceived(frame, source)
            return

    def test_peer_sealed_frames_are_taken_and_others_refused(self):
        mine = self.table.grant("a", "b", SERVER[1], fresh=True, fastpath=True)
        peer = self.table.grant("b", "a", SERVER[1], fresh=True, fastpath=True)
        self.add(mine)
        upstream = self.upstreams()
        self.assertEqual(len(upstream), 2, "the shared socket, and the session's own")
        self.assertEqual([a for _, a in upstream[1].written], [SERVER], "the first keepalive leaves on the session's socket")
        self.assertEqual(upstream[0].written, [])
        as_peer = FrameKey(peer.key)
        self.deliver(as_peer.seal(peer.token, TO_SERVER, 1, b"handshake"))
        self.assertEqual(self.wireguard_got(), [b"handshake"], "forwarded unchanged by the kernel, checked here")
        self.assertTrue(self.shim.is_alive("b"))
        refused = [
            as_peer.seal(peer.token, TO_SERVER, 1, b"replayed"),
            as_peer.seal(peer.token, TO_NODE, 2, b"reflected"),  # the server's direction under the peer's token
            FrameKey(mine.key).seal(peer.token, TO_SERVER, 3, b"our key, the peer's token"),
            FrameKey(bytes(32)).seal(peer.token, TO_SERVER, 4, b"a stranger's key"),
            as_peer.seal(mine.token, TO_NODE, 5, b"the peer's key, our token"),
            FrameKey(mine.key).seal(mine.token, TO_SERVER, 6, b"our own frame, reflected"),
        ]
        for frame in refused:
            self.deliver(frame)
        self.deliver(as_peer.seal(peer.token, TO_SERVER, 7, b"from elsewhere"), ("198.51.100.9", 8788))
        self.assertEqual(self.wireguard_got(), [b"handshake"])
        # The server's own frames (the Python path) still work, with their own window.
        self.deliver(FrameKey(mine.key).seal(mine.token, TO_NODE, 1, b"via python"))
        self.assertEqual(self.wireguard_got(), [b"handshake", b"via python"])
        # A keepalive the peer sent: liveness, nothing for WireGuard.
        self.deliver(as_peer.seal(peer.token, TO_SERVER, 8, b""))
        self.assertEqual(len(self.wireguard_got()), 2)

    def test_an_old_style_grant_shares_the_socket_and_takes_no_peer_frames(self):
        mine = self.table.grant("a", "b", SERVER[1], fresh=True)
        peer = self.table.grant("b", "a", SERVER[1], fresh=True)
        self.assertIsNone(mine.peer_key)
        self.add(mine)
        self.assertEqual(len(self.upstreams()), 1)
        self.deliver(FrameKey(peer.key).seal(peer.token, TO_SERVER, 1, b"x"))
        self.assertEqual(self.wireguard_got(), [])

    def test_the_servers_word_that_the_peer_changed_asks_for_it_again(self):
        asked = []
        self.shim.on_peer_changed = asked.append
        mine = self.table.grant("a", "b", SERVER[1], fresh=True, fastpath=True)
        old_peer = self.table.grant("b", "a", SERVER[1], fresh=True, fastpath=True)
        self.add(mine)
        [_, own] = self.upstreams()
        # The peer's daemon restarted: a new side the server tells us of.
        self.table.handle(FrameKey(old_peer.key).seal(old_peer.token, TO_SERVER, 1, b""), ("203.0.113.2", 5000))
        new_peer = self.table.grant("b", "a", SERVER[1], fresh=True, fastpath=True)
        self.assertNotEqual(new_peer.token, old_peer.token)
        keepalive = own.written[-1][0]
        outcome, answer, _ = self.table.handle(keepalive, ("198.51.100.1", 4000))
        self.assertEqual((outcome, len(answer)), ("relay_keepalive", OVERHEAD + len(REFRESH_PEER)))
        self.deliver(answer)
        self.assertEqual(asked, ["b"])
        self.assertEqual(self.wireguard_got(), [], "the word is not a packet")
        self.assertTrue(self.shim.is_alive("b"))
        # Said again soon: asked once per REFRESH_EVERY.
        self.deliver(FrameKey(mine.key).seal(mine.token, TO_NODE, 99, REFRESH_PEER))
        self.assertEqual(asked, ["b"])
        self.clock.advance(REFRESH_EVERY)
        self.deliver(FrameKey(mine.key).seal(mine.token, TO_NODE, 100, REFRESH_PEER))
        self.assertEqual(asked, ["b", "b"])
        # The grant asked for keeping our side: the same session, the peer's new side.
        refreshed = self.table.grant("a", "b", SERVER[1], fresh=True, fastpath=True, held=mine.token)
        endpoint = self.shim.sessions()["b"].endpoint
        self.assertEqual(self.add(refreshed), endpoint)
        self.assertEqual(self.shim.sessions()["b"].peer_token, new_peer.token)
        self.deliver(FrameKey(new_peer.key).seal(new_peer.token, TO_SERVER, 1, b"new side"))
        self.deliver(FrameKey(old_peer.key).seal(old_peer.token, TO_SERVER, 2, b"old side"))
        self.assertEqual(self.wireguard_got(), [b"new side"])
        # And the server says nothing more: both know each other's sides.
        outcome, answer, _ = self.table.handle(FrameKey(mine.key).seal(mine.token, TO_SERVER, 50, b""), ("198.51.100.1", 4000))
        self.assertEqual(len(answer), OVERHEAD)

    def test_an_old_shim_is_never_sent_the_word(self):
        mine = self.table.grant("a", "b", SERVER[1], fresh=True)  # no fastpath: an old node
        self.table.grant("b", "a", SERVER[1], fresh=True, fastpath=True)
        self.table.handle(FrameKey(mine.key).seal(mine.token, TO_SERVER, 1, b""), ("198.51.100.1", 4000))
        self.table.grant("b", "a", SERVER[1], fresh=True, fastpath=True)
        _, answer, _ = self.table.handle(FrameKey(mine.key).seal(mine.token, TO_SERVER, 2, b""), ("198.51.100.1", 4000))
        self.assertEqual(len(answer), OVERHEAD)

    def test_stopping_closes_the_sessions_sockets(self):
        self.add(self.table.grant("a", "b", SERVER[1], fresh=True, fastpath=True))
        self.successResultOf(Deferred.fromCoroutine(self.shim.stop()))
        self.assertEqual(self.clock.listening(), [])
