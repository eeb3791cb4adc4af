"""Reading ``wg show NAME dump``: the interface's status, its private key kept apart."""

from __future__ import annotations

from dataclasses import dataclass

from wire.node.wireguard.model import InterfaceStatus, InvalidWireGuardConfig, PeerConfig, PeerStatus, WireGuardError


@dataclass(frozen=True)
class Dump:
    """`wg show NAME dump`, with the private key kept apart from everything shown."""

    private_key: str | None
    status: InterfaceStatus

    def __repr__(self) -> str:  # never show the private key
        return f"Dump(status={self.status!r})"


def _none(field: str) -> str | None:
    return None if field == "(none)" else field


def _off(field: str) -> int:
    return 0 if field == "off" else int(field)


def parse_dump(output: bytes | str, *, backend: str = "", name: str = "") -> InterfaceStatus:
    """The status in `wg show NAME dump` output (the private key is dropped)."""
    return read_dump(output, backend=backend, name=name).status


def read_dump(output: bytes | str, *, backend: str, name: str) -> Dump:
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        raise WireGuardError(f"`wg show {name} dump` printed nothing")
    # Interface: private-key public-key listen-port fwmark.  Error messages
    # never quote this line: it holds the private key.
    head = lines[0].split("\t")
    if len(head) < 4:
        raise WireGuardError(f"`wg show {name} dump`: the interface line has {len(head)} fields, expected 4")
    try:
        listen_port = int(head[2])
    except ValueError:
        raise WireGuardError(f"`wg show {name} dump`: the listen port is not a number") from None
    peers = []
    for number, line in enumerate(lines[1:], start=2):
        # Peer: public-key preshared-key endpoint allowed-ips latest-handshake
        # transfer-rx transfer-tx persistent-keepalive (a 9th field would be
        # new; ignore it).  Only the fields shown are quoted in errors.
        fields = line.split("\t")
        if len(fields) < 8:
            raise WireGuardError(f"`wg show {name} dump` line {number}: {len(fields)} fields, expected 8")
        key, _preshared, endpoint, allowed, handshake, rx, tx, keepalive = fields[:8]
        try:
            peers.append(
                PeerStatus(
                    public_key=key,
                    endpoint=_none(endpoint),
                    allowed_ips=tuple(a for a in allowed.split(",") if a) if _none(allowed) else (),
                    latest_handshake=float(int(handshake)),
                    rx_bytes=int(rx),
                    tx_bytes=int(tx),
                    persistent_keepalive=_off(keepalive),
                )
            )
        except ValueError:
            raise WireGuardError(f"`wg show {name} dump` line {number}: a number field is not a number") from None
    status = InterfaceStatus(
        name=name,
        public_key=_none(head[1]) or "",
        listen_port=listen_port,
        peers=tuple(peers),
        backend=backend,
    )
    return Dump(private_key=_none(head[0]), status=status)


def config_from_status(peer: PeerStatus) -> PeerConfig | None:
    """What a peer found on the interface amounts to; None if it is not valid for us."""
    try:
        return PeerConfig(peer.public_key, peer.allowed_ips, peer.endpoint, peer.persistent_keepalive)
    except InvalidWireGuardConfig:
        return None  # e.g. a scoped IPv6 endpoint someone set by hand: re-send it in full
