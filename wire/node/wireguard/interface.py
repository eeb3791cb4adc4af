"""IWireGuard: the seam between the node daemon and one WireGuard interface."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from zope.interface import Attribute, Interface

from wire.node.wireguard.model import InterfaceStatus, PeerConfig


class IWireGuard(Interface):
    """One WireGuard interface, kept as the daemon wants it."""

    name = Attribute("str: the interface name the node is configured with")
    device = Attribute("str: the OS device `wg` knows (utunN on macOS, else name); '' before up()")
    backend = Attribute('str: "kernel", "wireguard-go" or "adopted"; "" before up()')
    on_lost = Attribute(
        "Callable[[str], object] | None: called with one argument, the reason, when the interface "
        "dies (wireguard-go exited, or a check failed); it may return a Deferred (failures are "
        "logged).  up() and apply() restore the interface"
    )

    async def up(
        private_key: str, listen_port: int, address: str, prefixlen: int, address6: str = "", prefixlen6: int = 0
    ) -> None:
        """
        Create the interface, or adopt one of that name that answers `wg`
        (never deleting it), and give it the key, port, address and MTU.
        ``address6``/``prefixlen6``: the IPv6 mesh address beside it ("":
        none); one the host refuses (IPv6 disabled) is logged, never fatal.
        Idempotent.  Raises WireGuardUnavailable, WireGuardError,
        InvalidWireGuardConfig.
        """

    async def apply(desired: Mapping[str, PeerConfig], reassert: Collection[str] = ()) -> int:
        """
        Make the peers exactly ``desired`` (keyed by public key) in one `wg set`;
        return how many peers were added, changed or removed (0: nothing ran).
        Only what differs from the last apply is sent, except for the peers
        in ``reassert``, which are set again in full (WireGuard has roamed
        their endpoint away from ours).
        """

    async def status() -> InterfaceStatus:
        """The interface as `wg show NAME dump` reports it."""

    async def down() -> None:
        """Remove the interface (and stop its wireguard-go); idempotent."""

    def is_alive() -> bool:
        """True while up and, as far as is known, working."""

    async def check() -> bool:
        """Ask `wg` now; a dead interface is reported to on_lost.  True if alive."""

    def detach() -> None:
        """
        Stop supervising, leaving the interface (and its wireguard-go) running:
        for a daemon that stops without `wire down`, so the next one adopts it.
        """
