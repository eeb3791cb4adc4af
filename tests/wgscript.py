"""What the WireGuard driver's tests script: keys, the commands each
backend runs, and the outputs ``wg`` and ``ip`` give."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from tests.helpers import key_for
from wire.keys import public_key_for
from wire.node.wireguard import MTU

NAME = "wire0"
PRIVATE = key_for("this node's private key")
PUBLIC = public_key_for(PRIVATE)
OTHER_PRIVATE = key_for("an older private key")
ALICE, BOB, CAROL = key_for("alice"), key_for("bob"), key_for("carol")

NO_DEVICE = b'Device "wire0" does not exist.\n'
NO_KERNEL = b"Error: Unknown device type.\n"
NO_ANSWER = b"Unable to access interface: Protocol not supported\n"
FRESH_DUMP = b"(none)\t(none)\t0\toff\n"

IP_LINK_SHOW = ["ip", "link", "show", "dev", NAME]
IP_LINK_ADD = ["ip", "link", "add", "dev", NAME, "type", "wireguard"]
WG_DUMP = ["wg", "show", NAME, "dump"]
WG_SET_KEY_PORT = ["wg", "set", NAME, "private-key", "/dev/stdin", "listen-port", "51820"]
IP_ADDRESS = ["ip", "address", "replace", "10.99.0.1/16", "dev", NAME]
IP_ADDRESSES = ["ip", "-j", "address", "show", "dev", NAME]
IP_LINK_UP = ["ip", "link", "set", "dev", NAME, "mtu", str(MTU), "up"]
WIREGUARD_GO = ["wireguard-go", "-f", NAME]
WG_CHECK = ["wg", "show", NAME, "listen-port"]
IP_LINK_DELETE = ["ip", "link", "delete", "dev", NAME]


# Binary fractions, so that the fake clock lands exactly on the deadline:
# polls at 0, 0.25, 0.5, 0.75 and 1 s.
POLLING = {"poll_interval": 0.25, "ready_timeout": 1.0}
POLLS = 5


def dump_output(private: str | None, port: int, *peers: str) -> bytes:
    head = f"{private or '(none)'}\t{public_key_for(private) if private else '(none)'}\t{port}\toff"
    return ("\n".join([head, *peers]) + "\n").encode()


def peer_line(
    key: str,
    endpoint: str = "(none)",
    allowed: str = "(none)",
    handshake: int = 0,
    rx: int = 0,
    tx: int = 0,
    keepalive: str = "off",
) -> str:
    return f"{key}\t(none)\t{endpoint}\t{allowed}\t{handshake}\t{rx}\t{tx}\t{keepalive}"


def ip_addresses_json(*addresses: tuple[str, int]) -> bytes:
    infos = ",".join(
        f'{{"family":"{"inet6" if ":" in a else "inet"}","local":"{a}","prefixlen":{p},"scope":"global"}}'
        for a, p in addresses
    )
    return f'[{{"ifindex":7,"ifname":"{NAME}","mtu":1380,"addr_info":[{infos}]}}]'.encode()


def run(coroutine) -> Deferred:
    return Deferred.fromCoroutine(coroutine)


# Real-looking output of `wg show wire0 dump` from wireguard-go.
DUMP = (
    f"{PRIVATE}\t{PUBLIC}\t51820\toff\n"
    f"{ALICE}\t(none)\t198.18.0.7:51820\t10.99.0.7/32\t1700000123\t92\t180\t25\n"
    f"{BOB}\t(none)\t[2001:db8::8]:41641\t10.99.0.8/32,fd00::8/128\t0\t0\t148\toff\n"
    f"{CAROL}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
).encode()
