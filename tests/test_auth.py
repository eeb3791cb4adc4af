"""Join keys in memory, on a fake clock: each key's state (usable, spent,
revoked, expired), decided in one place, and what the admin API lists."""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from wire.server.store import Writes
from tests.helpers import make_coordinator, registration_for, settled
from wire.server.admin import Admin, build_admin_site
from wire.server.auth import Authority, AuthError, KeyState


class AuthorityCase(unittest.TestCase):
    """A coordinator with an authority (join keys, credentials, the audit log)."""

    def setUp(self):
        self.coordinator = make_coordinator(self)
        self.clock = self.coordinator.clock
        self.authority = Authority(self.coordinator.store, self.clock)
        self.coordinator.authority = self.authority


class JoinKeyStateTests(AuthorityCase):

    def use(self, secret: str) -> None:
        """Enroll a node with the key, as the enrollment endpoint does."""
        key = self.authority.check_join_key(secret)
        writes = Writes()
        credential_hash, _ = self.authority.record_enrollment(writes, "n" * 32, "web1", key)
        settled(self.coordinator.store.transaction(writes))
        self.authority.enrolled("n" * 32, credential_hash, key)

    def refused(self, secret: str) -> str:
        with self.assertRaises(AuthError) as caught:
            self.authority.check_join_key(secret)
        return str(caught.exception)

    def test_each_state_and_why_it_cannot_be_used(self):
        now = self.clock.seconds()
        usable, _ = settled(self.authority.create_key(reusable=True, expires_in=3600))
        spent, spent_secret = settled(self.authority.create_key())
        revoked, revoked_secret = settled(self.authority.create_key(reusable=True))
        expired, expired_secret = settled(self.authority.create_key(expires_in=60))
        self.use(spent_secret)
        settled(self.authority.revoke_key(revoked.key_id))
        self.clock.advance(61)
        states = {key.key_id: key.state(self.clock.seconds()) for key in self.authority.keys()}
        self.assertEqual(
            states,
            {usable.key_id: KeyState.USABLE, spent.key_id: KeyState.SPENT, revoked.key_id: KeyState.REVOKED, expired.key_id: KeyState.EXPIRED},
        )
        self.assertEqual(self.refused(spent_secret), "this join key was already used (it is one-time)")
        self.assertEqual(self.refused(revoked_secret), "this join key was revoked")
        self.assertEqual(self.refused(expired_secret), "this join key has expired")
        self.assertEqual(expired.state(now + 59.9), KeyState.USABLE, "usable until the second it expires")

    def test_a_used_reusable_key_stays_usable(self):
        key, secret = settled(self.authority.create_key(reusable=True))
        self.use(secret)
        self.assertEqual((key.uses, key.state(self.clock.seconds())), (1, KeyState.USABLE))

    def test_revoked_wins_over_expired(self):
        key, _ = settled(self.authority.create_key(expires_in=60))
        settled(self.authority.revoke_key(key.key_id))
        self.clock.advance(120)
        self.assertEqual(key.state(self.clock.seconds()), KeyState.REVOKED)

    def test_as_dict_adds_state_and_times_and_keeps_the_old_fields(self):
        self.assertEqual(self.clock.seconds(), 1_700_000_000)
        self.clock.advance(3600)  # 2023-11-14T23:13:20Z
        key, _ = settled(self.authority.create_key(expires_in=86400, note="laptops"))
        never, _ = settled(self.authority.create_key())
        self.assertEqual(
            key.as_dict(self.clock.seconds()),
            {
                "key_id": key.key_id,
                "created": 1_700_003_600.0,
                "expires": 1_700_090_000.0,
                "reusable": False,
                "uses": 0,
                "revoked": False,
                "usable": True,
                "state": "usable",
                "created_at": "2023-11-14T23:13:20Z",
                "expires_at": "2023-11-15T23:13:20Z",
                "note": "laptops",
                "tags": [],
                "ephemeral": False,
                "ephemeral_after": None,
            },
        )
        self.assertEqual((never.as_dict(0)["expires"], never.as_dict(0)["expires_at"]), (None, None))

    def test_a_keys_tags_and_ephemerality_are_kept_and_shown(self):
        key, _ = settled(self.authority.create_key(reusable=True, tags=("tag:ci", "tag:web"), ephemeral_after=1800))
        shown = key.as_dict(self.clock.seconds())
        self.assertEqual((shown["tags"], shown["ephemeral"], shown["ephemeral_after"]), (["tag:ci", "tag:web"], True, 1800))
        [again] = [k for k in Authority(self.coordinator.store, self.clock).keys() if k.key_id == key.key_id]
        self.assertEqual((again.tags, again.ephemeral_after), (("tag:ci", "tag:web"), 1800))

    def test_join_tokens_name_the_replicas(self):
        from wire.jointoken import decode_join_token

        admin = Admin(self.coordinator, "https://a.example.org:8787", "ab" * 32, ("https://b.example.org:8787",))
        token = decode_join_token(settled(admin.create_key())["token"])
        self.assertEqual(token.server_urls, ("https://a.example.org:8787", "https://b.example.org:8787"))
        # A key made for another URL names every replica after it.
        token = decode_join_token(settled(admin.create_key(url="https://b.example.org:8787"))["token"])
        self.assertEqual(token.server_urls, ("https://b.example.org:8787", "https://a.example.org:8787"))
        plain = Admin(self.coordinator, "https://a.example.org:8787", "ab" * 32)
        self.assertEqual(decode_join_token(settled(plain.create_key())["token"]).replicas, ())

    def test_the_admin_api_lists_states_with_the_server_s_clock(self):
        admin = Admin(self.coordinator, "https://vpn.example.org:8787", "ab" * 32)
        http = StubTreq(build_admin_site(admin).resource)
        kept, _ = settled(self.authority.create_key())
        gone, _ = settled(self.authority.create_key())
        settled(self.authority.revoke_key(gone.key_id))

        async def listed() -> dict:
            response = await http.get("http://wire-admin/keys")
            return json.loads(await response.content())

        d = Deferred.fromCoroutine(listed())
        http.flush()
        answer = self.successResultOf(d)
        self.assertEqual(answer["timestamp"], self.clock.seconds())
        self.assertEqual([(k["key_id"], k["state"], k["usable"]) for k in answer["keys"]], [(kept.key_id, "usable", True), (gone.key_id, "revoked", False)])


class RefusedEnrollmentAuditTests(AuthorityCase):
    """Unknown, spent, expired and revoked join keys are audited with who tried, a few a minute."""

    def enroll(self, secret: str, name: str = "web1") -> None:
        d = Deferred.fromCoroutine(self.coordinator.enroll(secret, registration_for(name), "203.0.113.9"))
        self.failureResultOf(d, AuthError)

    def refusals(self) -> list[str]:
        return [e["detail"] for e in settled(self.authority.audit_log(1000)) if e["event"] == "node.enroll.refused"]

    def test_each_refusal_names_the_source_and_why(self):
        revoked, secret = settled(self.authority.create_key(reusable=True))
        settled(self.authority.revoke_key(revoked.key_id))
        self.enroll("not-a-key")
        self.enroll(secret, "db1")
        self.assertEqual(
            self.refusals(),
            ["from 203.0.113.9 as 'db1': this join key was revoked", "from 203.0.113.9 as 'web1': unknown join key"],
        )

    def test_a_guessing_flood_is_audited_a_few_a_minute_and_counted(self):
        for _ in range(100):
            self.enroll("guess")
        self.assertEqual(len(self.refusals()), 10)
        self.clock.advance(6)
        self.enroll("guess")
        self.assertEqual(len(self.refusals()), 11)
        self.assertIn("(and 90 more refused since the last one recorded)", self.refusals()[0])
