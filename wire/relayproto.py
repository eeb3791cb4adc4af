"""Relay frames: how WireGuard packets travel through the coordination server.

A frame is ``MAGIC | token | direction | counter | payload | mac``:

- ``MAGIC`` (4 bytes, first byte >= 0x40) tells relay frames from STUN
  (whose first two bits are zero) and from the seed's JSON probes;
- ``token`` (8 bytes) names one side of one relay session;
- ``direction`` is 0 from a node to the server, 1 from the server to a node,
  so a frame cannot be reflected back as if its receiver had sent it;
- ``counter`` (8 bytes) rises with every frame a sender sends in that
  direction; receivers keep a replay window, so a captured frame sent again
  (from anywhere) is dropped;
- ``mac`` (16 bytes) is keyed BLAKE2b over everything before it, under the
  side's 32-byte key (BLAKE2 in keyed mode is a MAC, as WireGuard's own
  mac1 uses it). Trailing, so one call covers one contiguous buffer, and
  the keyed state is prepared once per key: the relay is a per-packet hot
  path, and this costs about a third of a fresh HMAC-SHA256.

The server hands each of the two nodes of a session its own token and key
over the API. It forwards only frames that verify under one side's key, to
the other side's last authenticated address, re-sealed under that side's
key, so it is never an open reflector, and no node can speak for the other
side; the payload itself is a WireGuard packet, end-to-end encrypted. An
empty payload is a keepalive: it only tells the server where a side is.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import struct
from typing import Any

MAGIC = b"WRL2"
TOKEN_BYTES = 8
KEY_BYTES = 32
MAC_BYTES = 16
TO_SERVER = 0
TO_NODE = 1
_HEADER = struct.Struct("!4s8sBQ")
HEADER_BYTES = _HEADER.size  # 21
OVERHEAD = HEADER_BYTES + MAC_BYTES  # 37
# Room for a full-size WireGuard packet on a 1500-byte path, and no more.
MAX_PAYLOAD = 1600
MAX_FRAME = OVERHEAD + MAX_PAYLOAD
# A keepalive answer's payload telling a fast-path shim (one told the peer
# side's token) that the peer's side changed: ask for it again. No
# WireGuard message is one byte, and older shims are never sent it.
REFRESH_PEER = b"\x01"
# A flag in that one byte, sent only to shims whose side has a port of its
# own (they asked with ``direct``): the kernel forwards this side's
# WireGuard packets from that port (wire.server.fastpath), so its
# WireGuard may send there. Absent: send to the shim again.
KERNEL_PATH = 0x02


class FrameError(ValueError):
    pass


def is_relay_frame(data: bytes) -> bool:
    return data[:4] == MAGIC


class FrameKey:
    """One side's key, ready to seal and check frames many times a second."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise FrameError(f"a relay key is {KEY_BYTES} bytes, not {len(key)}")
        self._keyed = hashlib.blake2b(key=key, digest_size=MAC_BYTES)

    def _mac(self, body) -> bytes:
        h = self._keyed.copy()
        h.update(body)
        return h.digest()

    def seal(self, token: bytes, direction: int, counter: int, payload) -> bytes:
        """A frame carrying ``payload`` (bytes or a memoryview)."""
        if len(payload) > MAX_PAYLOAD:
            raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        body = _HEADER.pack(MAGIC, token, direction, counter) + payload
        return body + self._mac(body)

    def authentic(self, frame: bytes) -> bool:
        """The MAC verifies (call :func:`read_header` first: it checks the size)."""
        view = memoryview(frame)
        return hmac.compare_digest(view[-MAC_BYTES:], self._mac(view[:-MAC_BYTES]))


def read_header(frame: bytes) -> tuple[bytes, int, int]:
    """``(token, direction, counter)`` of a well-formed frame; raises FrameError.
    The MAC is checked by :meth:`FrameKey.authentic`, once the token names a key."""
    if len(frame) < OVERHEAD:
        raise FrameError("frame shorter than its header and MAC")
    if len(frame) > MAX_FRAME:
        raise FrameError("frame larger than the limit")
    magic, token, direction, counter = _HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise FrameError("not a relay frame")
    if direction not in (TO_SERVER, TO_NODE):
        raise FrameError("unknown direction")
    return token, direction, counter


def payload_view(frame: bytes) -> memoryview:
    """The payload of a frame, without copying it (empty for a keepalive)."""
    return memoryview(frame)[HEADER_BYTES:-MAC_BYTES]


class ReplayWindow:
    """Accepts each counter once, tolerating reordering within a window (RFC 6479 style)."""

    SIZE = 256
    _MASK = (1 << SIZE) - 1

    def __init__(self) -> None:
        self.highest = -1
        self._seen = 0  # bit i set: counter (highest - i) was seen

    def check_and_mark(self, counter: int) -> bool:
        if counter > self.highest:
            shift = counter - self.highest
            self._seen = ((self._seen << shift) | 1) & self._MASK if shift < self.SIZE else 1
            self.highest = counter
            return True
        offset = self.highest - counter
        if offset >= self.SIZE or self._seen >> offset & 1:
            return False
        self._seen |= 1 << offset
        return True


# Relayed traffic arrives in bursts (a TCP window at a time); the default
# socket buffers (~200 KiB) overflow and every drop halves TCP's rate.
RELAY_SOCKET_BUFFER = 4 * 1024 * 1024


def socket_of(port) -> Any:
    """The port's socket (IListeningPort's ``getHandle()``), or None for a
    transport that has none (tests' in-memory fakes)."""
    get_handle = getattr(port, "getHandle", None)
    return get_handle() if get_handle is not None else None


def enlarge_socket_buffers(port, size: int = RELAY_SOCKET_BUFFER) -> None:
    """Best effort: as root beyond net.core.rmem_max/wmem_max, else up to them."""
    import socket

    sock = socket_of(port)
    if sock is None:
        return
    pairs = (
        (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
        (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF),
    )
    for force, plain in pairs:
        for option in (force, plain):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
                break
            except OSError:
                continue


# Linux UDP GSO (since 4.18): one sendmsg carries a run of equal-size
# datagrams to one destination, and the kernel takes them through the
# stack (routing, netfilter, NAT, veth) as one packet, cutting them apart
# only where it must. The relay's cost is mostly that per-packet trip.
_SOL_UDP = 17
_UDP_SEGMENT = 103
_GSO_MAX_SEGMENTS = 64
_GSO_MAX_BYTES = 65000
# A segment must fit the first link unfragmented: the kernel refuses the
# whole run (EMSGSIZE) otherwise. 1500 - IPv6 40 - UDP 8; the tunnel MTU
# keeps every relayed packet within it (wire.node.wireguard.MTU). Larger
# ones go alone; a smaller link lowers the bound on the first refusal.
GSO_MAX_SEGMENT = 1452


def udp_gso_supported(sock) -> bool:
    """Whether this socket's kernel knows UDP_SEGMENT. A kernel that does not
    would ignore the option and send the whole run as one giant datagram."""
    try:
        sock.getsockopt(_SOL_UDP, _UDP_SEGMENT)
        return hasattr(sock, "sendmsg")
    except (OSError, AttributeError):
        return False


class DatagramBatcher:
    """Sends the relay's datagrams, batched per reactor turn.

    Datagrams handed to :meth:`send` during one turn of the reactor (one
    batch of readable sockets) leave right after it, and a run of
    consecutive equal-size datagrams to one destination leaves as one UDP
    GSO send. A TCP stream through the relay arrives a window at a time, so
    runs are common: relayed TCP in the lab went from ~135 to ~200-250
    Mbit/s. Without GSO (another OS, an old kernel) each datagram goes alone.
    The price is a timer per reactor turn: at low, paced rates the server
    spends ~26 us per frame instead of ~16 (bench/relay_cost.py).

    Twisted's ``Port.write`` re-checks the destination address on every
    call; relay destinations were checked when they were learned, so this
    uses the socket directly. A full buffer or an ICMP error drops the
    datagram, as UDP may (the tunnel inside recovers).
    """

    def __init__(self, reactor, port, gso: bool = True):
        self._reactor = reactor
        self._port = port
        sock = socket_of(port)
        self._sock = sock
        self.gso = gso and sock is not None and udp_gso_supported(sock)
        self.max_segment = GSO_MAX_SEGMENT
        self._queue: list[tuple[Any, Any]] = []
        self._flush_call = None
        self.sends = 0  # system calls (or writes), for tests and benchmarks
        self.sent = 0  # datagrams
        self.dropped = 0

    def send(self, data, address) -> None:
        if self._sock is None:  # not a real socket (tests' fakes): the checked path, at once
            self._port.write(bytes(data), address)
            self.sends += 1
            self.sent += 1
            return
        self._queue.append((data, address))
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self._flush_call = None
        queue, self._queue = self._queue, []
        start = 0
        while start < len(queue):
            end = self._run_end(queue, start)
            self._send_run(queue[start:end])
            start = end

    def cancel(self) -> None:
        """Drop what is queued (the socket is closing)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._queue = []

    def _run_end(self, queue, start: int) -> int:
        """End of the run from ``start`` that one send can carry: one
        destination, equal sizes (the last may be shorter), within limits."""
        first, address = queue[start]
        size = len(first)
        if not self.gso or size > self.max_segment or size == 0:
            return start + 1
        total = size
        end = start + 1
        while end < len(queue) and end - start < _GSO_MAX_SEGMENTS:
            data, destination = queue[end]
            if destination != address or len(data) > size or len(data) == 0 or total + len(data) > _GSO_MAX_BYTES:
                break
            total += len(data)
            end += 1
            if len(data) < size:
                break  # only the last segment may be shorter
        return end

    def _send_run(self, run) -> None:
        self.sends += 1
        address = run[0][1]
        try:
            if len(run) == 1:
                self._sock.sendto(run[0][0], address)
            else:
                segment = struct.pack("=H", len(run[0][0]))
                self._sock.sendmsg([data for data, _ in run], [(_SOL_UDP, _UDP_SEGMENT, segment)], 0, address)
            self.sent += len(run)
        except OSError as e:
            if len(run) > 1 and e.errno == errno.EMSGSIZE:
                # Segments larger than the route's MTU (a host link under
                # 1500 bytes): this size and above go alone from now on, and
                # the kernel fragments them as it would any datagram.
                self.max_segment = len(run[0][0]) - 1
                self.sends -= 1
                for one in run:
                    self._send_run([one])
                return
            if len(run) > 1 and e.errno in (errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EIO):
                # GSO refused here (a device without checksum offload, say):
                # one at a time from now on.
                self.gso = False
                self.sends -= 1
                for one in run:
                    self._send_run([one])
                return
            self.dropped += len(run)
