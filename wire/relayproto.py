"""Relay frames: how WireGuard packets travel through the coordination server.

A frame is ``MAGIC | token | direction | counter | mac | payload``:

- ``MAGIC`` (4 bytes, first byte >= 0x40) tells relay frames from STUN
  (whose first two bits are zero) and from the seed's JSON probes;
- ``token`` (8 bytes) names one side of one relay session;
- ``direction`` is 0 from a node to the server, 1 from the server to a node,
  so a frame cannot be reflected back as if its receiver had sent it;
- ``counter`` (8 bytes) rises with every frame a sender sends in that
  direction; receivers keep a replay window, so a captured frame sent again
  (from anywhere) is dropped;
- ``mac`` is HMAC-SHA256 (truncated to 16 bytes) under the side's 32-byte
  key, over everything before it and the payload.

The server hands each of the two nodes of a session its own token and key
over the API. It forwards only frames that verify under one side's key, to
the other side's last authenticated address, so it is never an open
reflector; the payload itself is a WireGuard packet, end-to-end encrypted.
An empty payload is a keepalive: it only tells the server where a side is.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

MAGIC = b"WRL1"
TOKEN_BYTES = 8
KEY_BYTES = 32
MAC_BYTES = 16
TO_SERVER = 0
TO_NODE = 1
_HEADER = struct.Struct("!4s8sBQ")
HEADER_BYTES = _HEADER.size + MAC_BYTES  # 37
# Room for a full-size WireGuard packet on a 1500-byte path, and no more.
MAX_PAYLOAD = 1600
MAX_FRAME = HEADER_BYTES + MAX_PAYLOAD


class FrameError(ValueError):
    pass


@dataclass(frozen=True)
class Frame:
    token: bytes
    direction: int
    counter: int
    mac: bytes
    payload: bytes
    signed: bytes  # header bytes the MAC covers (before the MAC)


def is_relay_frame(data: bytes) -> bool:
    return data[:4] == MAGIC


def _mac(key: bytes, signed: bytes, payload: bytes) -> bytes:
    return hmac.new(key, signed + payload, hashlib.sha256).digest()[:MAC_BYTES]


def encode_frame(token: bytes, key: bytes, direction: int, counter: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    signed = _HEADER.pack(MAGIC, token, direction, counter)
    return signed + _mac(key, signed, payload) + payload


def parse_frame(data: bytes) -> Frame:
    """Split a frame; raises FrameError. The MAC is checked by :func:`verify`."""
    if len(data) < HEADER_BYTES:
        raise FrameError("frame shorter than its header")
    if len(data) > MAX_FRAME:
        raise FrameError("frame larger than the limit")
    magic, token, direction, counter = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError("not a relay frame")
    if direction not in (TO_SERVER, TO_NODE):
        raise FrameError("unknown direction")
    signed = data[: _HEADER.size]
    return Frame(token, direction, counter, data[_HEADER.size : HEADER_BYTES], data[HEADER_BYTES:], signed)


def verify(frame: Frame, key: bytes) -> bool:
    return hmac.compare_digest(frame.mac, _mac(key, frame.signed, frame.payload))


class ReplayWindow:
    """Accepts each counter once, tolerating reordering within a window (RFC 6479 style)."""

    SIZE = 256

    def __init__(self) -> None:
        self.highest = -1
        self._seen = 0  # bit i set: counter (highest - i) was seen

    def check_and_mark(self, counter: int) -> bool:
        if counter > self.highest:
            shift = counter - self.highest
            self._seen = ((self._seen << shift) | 1) & ((1 << self.SIZE) - 1) if shift < self.SIZE else 1
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


def enlarge_socket_buffers(port, size: int = RELAY_SOCKET_BUFFER) -> None:
    """Best effort: as root beyond net.core.rmem_max/wmem_max, else up to them."""
    import socket

    sock = getattr(port, "socket", None)
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
