"""The LAN address: found without the reactor ever waiting on a resolver."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHostnameResolver, IResolutionReceiver
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface import implementer

from wire.node import lan
from wire.node.lan import RESOLVE_EVERY, RESOLVE_TIMEOUT, RETRY_FAILED_AFTER, LanAddress, detect_lan_ip, route_source


@implementer(IHostnameResolver)
class ScriptedResolver:
    """Answers each lookup when told (or never): a DNS server on a fake clock."""

    def __init__(self):
        self.pending: list[tuple[IResolutionReceiver, str]] = []
        self.asked: list[str] = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        self.asked.append(hostName)
        self.pending.append((receiver, hostName))
        receiver.resolutionBegan(None)

    def answer(self, *addresses: str) -> None:
        receiver, _ = self.pending.pop(0)
        for address in addresses:
            receiver.addressResolved(IPv4Address("UDP", address, 0))
        receiver.resolutionComplete()


class RouteSourceTests(unittest.TestCase):
    def test_a_numeric_address_is_routed(self):
        self.assertEqual(route_source("127.0.0.1"), "127.0.0.1")

    def test_a_name_is_never_resolved_here(self):
        self.assertEqual(route_source("localhost"), "")
        self.assertEqual(route_source(""), "")


class DetectLanIpTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.resolver = ScriptedResolver()

    def test_a_numeric_server_needs_no_resolver(self):
        d = detect_lan_ip(self.clock, "https://127.0.0.1:8443", resolver=self.resolver)
        self.assertEqual(self.successResultOf(_deferred(d)), "127.0.0.1")
        self.assertEqual(self.resolver.asked, [])

    def test_a_name_goes_through_the_resolver(self):
        d = _deferred(detect_lan_ip(self.clock, "https://wire.test:8443", resolver=self.resolver))
        self.assertNoResult(d)
        self.assertEqual(self.resolver.asked, ["wire.test"])
        self.resolver.answer("127.0.0.1")
        self.assertEqual(self.successResultOf(d), "127.0.0.1")

    def test_a_resolver_that_never_answers_times_out_as_unknown(self):
        d = _deferred(detect_lan_ip(self.clock, "https://wire.test", resolver=self.resolver))
        self.clock.advance(RESOLVE_TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "")
        # The answer arriving late changes nothing (and raises nothing).
        self.resolver.answer("127.0.0.1")

    def test_a_name_without_addresses_is_unknown(self):
        d = _deferred(detect_lan_ip(self.clock, "https://wire.test", resolver=self.resolver))
        self.resolver.answer()
        self.assertEqual(self.successResultOf(d), "")


class LanAddressTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.resolver = ScriptedResolver()
        self.lan = LanAddress(self.clock, "https://wire.test:8443", resolver=self.resolver)

    def test_calls_never_wait_and_share_one_lookup(self):
        self.assertEqual(self.lan(), "", "nothing known yet: no address, at once")
        self.assertEqual(self.lan(), "")
        self.assertEqual(self.resolver.asked, ["wire.test"], "one lookup at a time")
        self.resolver.answer("127.0.0.1")
        self.assertEqual(self.lan(), "127.0.0.1")
        self.assertEqual(len(self.resolver.asked), 1, "cached")

    def test_resolved_again_after_a_while(self):
        self.lan()
        self.resolver.answer("127.0.0.1")
        self.clock.advance(RESOLVE_EVERY - 1)
        self.lan()
        self.assertEqual(len(self.resolver.asked), 1)
        self.clock.advance(1)
        self.assertEqual(self.lan(), "127.0.0.1", "the last address serves while a new lookup runs")
        self.assertEqual(len(self.resolver.asked), 2)

    def test_a_dead_resolver_keeps_the_last_address_and_retries_later(self):
        self.lan()
        self.resolver.answer("127.0.0.1")
        self.clock.advance(RESOLVE_EVERY)
        self.lan()  # a new lookup, which never answers
        self.clock.advance(RESOLVE_TIMEOUT)
        self.assertEqual(self.lan(), "127.0.0.1")
        self.assertEqual(len(self.resolver.asked), 2, "no new lookup at every call")
        self.clock.advance(RETRY_FAILED_AFTER)
        self.lan()
        self.assertEqual(len(self.resolver.asked), 3)

    def test_refresh_waits_for_the_lookup(self):
        d = _deferred(self.lan.refresh())
        self.assertNoResult(d)
        self.resolver.answer("127.0.0.1")
        self.assertEqual(self.successResultOf(d), "127.0.0.1")

    def test_refresh_of_a_dead_resolver_ends_with_the_timeout(self):
        d = _deferred(self.lan.refresh())
        self.clock.advance(RESOLVE_TIMEOUT)
        self.assertEqual(self.successResultOf(d), "")

    def test_cancelling_one_refresh_leaves_the_lookup_to_the_others(self):
        first = _deferred(self.lan.refresh())
        second = _deferred(self.lan.refresh())
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.resolver.answer("127.0.0.1")
        self.assertEqual(self.successResultOf(second), "127.0.0.1")

    def test_a_numeric_server_is_never_resolved(self):
        numeric = LanAddress(self.clock, "http://127.0.0.1:8080", resolver=self.resolver)
        self.assertEqual(numeric(), "127.0.0.1")
        self.assertEqual(self.successResultOf(_deferred(numeric.refresh())), "127.0.0.1")
        self.assertEqual(self.resolver.asked, [])

    def test_the_module_has_no_blocking_lookup_left(self):
        # The only socket call left works on numeric addresses; getaddrinfo
        # (which waits on DNS) is not used at all.
        import inspect

        self.assertNotIn("getaddrinfo", inspect.getsource(lan))


def _deferred(coroutine) -> Deferred:
    return Deferred.fromCoroutine(coroutine)
