"""Shared test helpers: registration bodies and an in-memory coordinator."""

from __future__ import annotations

import base64
import hashlib
import os

from twisted.internet.task import Clock

from wire.addressing import AddressPool, Ipv6Pool, parse_subnet, parse_subnet6
from wire.protocol import parse_registration
from wire.runner import CommandNotFound, find_program
from wire.server.coordinator import Coordinator
from wire.server.registry import Registry
from wire.server.store import open_store


def key_for(name: str) -> str:
    """A stable, valid WireGuard public key for a test node."""
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def body_for(name: str, **fields) -> dict:
    body = {
        "node_id": hashlib.sha256(name.encode()).hexdigest()[:32],
        "node_name": name,
        "wg_public_key": key_for(name),
        "port": 51820,
        "nat_port": 51820,
    }
    body.update(fields)
    return body


def registration_for(name: str, **fields):
    return parse_registration(body_for(name, **fields))


# The IPv6 prefix test coordinators give their nodes addresses from.
TEST_SUBNET6 = "fd7a:115c:a1e0::/48"


def make_coordinator(
    test,
    subnet: str = "10.99.0.0/16",
    clock: Clock | None = None,
    data_dir: str | None = None,
    subnet6: str | None = TEST_SUBNET6,
    **registry_options,
) -> Coordinator:
    """A coordinator (on a fake clock unless given one) with a real SQLite
    store in a temp dir; ``subnet6`` None: no IPv6 mesh addresses."""
    if clock is None:
        clock = Clock()
        clock.advance(1_700_000_000)
    data_dir = data_dir or test.mktemp()
    store = open_store(data_dir, clock)
    pool6 = Ipv6Pool(parse_subnet6(subnet6)) if subnet6 is not None else None
    registry = Registry(store, AddressPool(parse_subnet(subnet)), pool6=pool6, **registry_options)
    registry.load(store.load(), clock.seconds())
    coordinator = Coordinator(clock, store, registry)
    coordinator.data_dir = data_dir
    test.addCleanup(store.close)
    return coordinator


def namespace_skip_reason(programs: tuple[str, ...] = ("ip",), needs: str = "a network namespace of its own") -> str | None:
    """Why a test that builds a network namespace of its own cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return f"needs root ({needs})"
    try:
        for program in programs:
            find_program(program)
    except CommandNotFound as e:
        return f"needs {', '.join(programs)}: {e}"
    if not os.path.exists("/proc/self/ns/net"):
        return "needs network namespace support in the kernel"
    return None


def settled(result):
    """What a store-backed call (a coroutine or Deferred) gave: on a fake
    clock the store answers at once (wire.server.dbthread); its error raised."""
    from inspect import iscoroutine

    from twisted.internet.defer import Deferred

    from wire.server.dbthread import result_now

    return result_now(Deferred.fromCoroutine(result) if iscoroutine(result) else result)


def short_dir(test) -> str:
    """A data dir short enough for the admin socket's path (108 bytes)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="wire-ss-")
    test.addCleanup(shutil.rmtree, path, True)
    return path
