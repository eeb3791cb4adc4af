"""HeartbeatState's decision, pure: facts and ``now`` in, "may the long-poll carry it" out."""

from __future__ import annotations

from twisted.trial import unittest

from wire.node.heartbeat import HEARTBEAT_INTERVAL, REGISTER_AT_LEAST_EVERY, HeartbeatState
from wire.protocol import NatType, Registration

T0 = 1_700_000_000.0


def body(lan_ip: str = "192.168.1.10") -> Registration:
    return Registration(
        node_id="n1",
        node_name="web1",
        wg_public_key="k" * 43 + "=",
        port=51820,
        nat_port=40000,
        lan_ip=lan_ip,
        requested_vpn_ip=None,
        nat_type=NatType.EASY,
    )


class HeartbeatStateTests(unittest.TestCase):
    def carried(self, state: HeartbeatState, now: float, reachable: bool = True, current=None) -> bool:
        return state.carried_by_longpoll(now, reachable, lambda: current or body())

    def registered_and_polled(self, longpoll: bool = True) -> HeartbeatState:
        state = HeartbeatState()
        state.registered(body(), T0, longpoll=longpoll)
        state.poll_sent(T0)
        state.poll_closed()
        state.poll_answered(T0)
        return state

    def test_a_fresh_state_must_register(self):
        self.assertFalse(self.carried(HeartbeatState(), T0))

    def test_carried_while_the_server_counts_polls_and_holds_our_body(self):
        self.assertTrue(self.carried(self.registered_and_polled(), T0 + 1))

    def test_a_server_that_counts_no_polls_gets_every_heartbeat(self):
        self.assertFalse(self.carried(self.registered_and_polled(longpoll=False), T0 + 1))

    def test_unreachable_means_register(self):
        self.assertFalse(self.carried(self.registered_and_polled(), T0 + 1, reachable=False))

    def test_a_changed_body_registers(self):
        self.assertFalse(self.carried(self.registered_and_polled(), T0 + 1, current=body(lan_ip="192.168.7.7")))

    def test_asked_to_register_registers(self):
        state = self.registered_and_polled()
        state.must_register()
        self.assertFalse(self.carried(state, T0 + 1))

    def test_a_registration_too_old_registers(self):
        state = self.registered_and_polled()
        state.poll_answered(T0 + REGISTER_AT_LEAST_EVERY - 1)
        self.assertTrue(self.carried(state, T0 + REGISTER_AT_LEAST_EVERY - 1))
        self.assertFalse(self.carried(state, T0 + REGISTER_AT_LEAST_EVERY))

    def test_no_poll_within_an_interval_registers(self):
        state = self.registered_and_polled()
        self.assertTrue(self.carried(state, T0 + HEARTBEAT_INTERVAL))
        self.assertFalse(self.carried(state, T0 + HEARTBEAT_INTERVAL + 1))

    def test_an_open_poll_counts_from_when_it_was_sent(self):
        state = self.registered_and_polled()
        state.poll_sent(T0 + 20)
        self.assertTrue(self.carried(state, T0 + 20 + HEARTBEAT_INTERVAL), "sent, still open, young enough")
        self.assertFalse(self.carried(state, T0 + 21 + HEARTBEAT_INTERVAL), "open too long")

    def test_the_body_is_looked_at_only_when_all_else_holds(self):
        looked: list[bool] = []

        def current() -> Registration:
            looked.append(True)
            return body()

        HeartbeatState().carried_by_longpoll(T0, True, current)
        self.assertEqual(looked, [], "a LAN lookup for nothing")
        self.registered_and_polled().carried_by_longpoll(T0 + 1, True, current)
        self.assertEqual(looked, [True])
