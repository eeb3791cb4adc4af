"""A UDP port spoken through a raw socket, while another socket holds it.

Once WireGuard has its UDP port, a STUN probe from a socket of its own
would learn another mapping than WireGuard's, and only WireGuard's is worth
publishing. Linux lets a raw IPPROTO_UDP socket send a datagram with any
source port, and hands it a copy of every UDP datagram that arrives: so the
daemon can ask the STUN server from WireGuard's port, and read the answer
(WireGuard, which gets it too, drops it as no message of its own). A BPF
filter keeps every other datagram (WireGuard's traffic) out of the raw
socket, so Python reads only the few answers it waits for.

IPv4 and Linux only (an IPv6 raw socket gets no IP header); needs
CAP_NET_RAW, which the root daemon has. :func:`raw_udp_supported` says
whether it can work here. :class:`RawUdpSender` sends single datagrams
from such a port (the relay's bind frames).
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
import sys
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol

SO_ATTACH_FILTER = 26
_PSEUDO = struct.Struct("!4s4sBBH")
_UDP = struct.Struct("!HHHH")
_MAX_DATAGRAM = 65535
_READS_PER_WAKE = 64


def raw_udp_supported() -> bool:
    return sys.platform.startswith("linux")


def _bpf(server_ip: str, server_ports: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """A classic BPF program: accept UDP from ``server_ip`` and one of ``server_ports``."""
    ip = int(ipaddress.IPv4Address(server_ip))
    n = len(server_ports)
    program = [
        (0x30, 0, 0, 9),  # ldb [9]: the protocol
        (0x15, 0, 4 + n, socket.IPPROTO_UDP),  # not UDP: drop
        (0x20, 0, 0, 12),  # ld [12]: the source address
        (0x15, 0, 2 + n, ip),  # not the server: drop
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): the IP header's length
        (0x48, 0, 0, 0),  # ldh [x+0]: the UDP source port
    ]
    for i, port in enumerate(server_ports):
        program.append((0x15, n - i, 0, port))  # one of ours: accept
    program += [(0x06, 0, 0, 0), (0x06, 0, 0, _MAX_DATAGRAM)]  # drop; accept
    return program


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_packet(source_port: int, destination_port: int, payload: bytes, ips: tuple[str, str] | None = None) -> bytes:
    """A UDP header and ``payload``; with ``ips`` (source, destination), the
    checksum over the IPv4 pseudo-header, else none (0, allowed over IPv4)."""
    length = _UDP.size + len(payload)
    header = _UDP.pack(source_port, destination_port, length, 0)
    if ips is None:
        return header + payload
    pseudo = _PSEUDO.pack(socket.inet_aton(ips[0]), socket.inet_aton(ips[1]), 0, socket.IPPROTO_UDP, length)
    # A sum of 0 is sent as 0xFFFF: 0 would mean "no checksum".
    return _UDP.pack(source_port, destination_port, length, checksum(pseudo + header + payload) or 0xFFFF) + payload


class RawUdpSender:
    """Sends single hand-built UDP datagrams (root only: ``available`` says
    whether). The relay's kernel path (wire.server.fastpath) needs the
    address WireGuard's own flow to the server has behind NAT: the node's
    bind frame goes from WireGuard's port, which netfilter and every NAT on
    the way take for a packet of WireGuard's flow (wire.node.relay).

    The socket is opened per send and closed at once: a raw UDP socket left
    open would get a copy of every UDP packet the host receives."""

    def __init__(self) -> None:
        self.error = ""
        if not raw_udp_supported():
            self.error = "no raw UDP sockets on this system"
            return
        try:
            self._open().close()
        except OSError as e:
            self.error = f"no raw socket for the relay's kernel path: {e.strerror or e}"

    @property
    def available(self) -> bool:
        return not self.error

    @staticmethod
    def _open() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)

    @staticmethod
    def source_for(destination_ip: str) -> str:
        """The address the kernel sends from towards ``destination_ip`` (a
        connected UDP socket's own address; nothing is sent)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((destination_ip, 9))
            return probe.getsockname()[0]

    def send(self, source_port: int, destination: tuple[str, int], payload: bytes) -> bool:
        """Best effort, like any UDP send; False if it could not be sent."""
        try:
            ips = (self.source_for(destination[0]), destination[0])
            packet = udp_packet(source_port, destination[1], payload, ips)
            with self._open() as raw:
                raw.sendto(packet, (destination[0], 0))
            return True
        except OSError:
            return False


class RawUDPPort:
    """Speaks as UDP ``local_port`` towards one server: the transport of a
    DatagramProtocol (``write`` and ``datagramReceived`` as usual)."""

    def __init__(self, reactor: Any, local_port: int, protocol: DatagramProtocol, server_ip: str, server_ports: tuple[int, ...]):
        self.reactor = reactor
        self.local_port = local_port
        self.protocol = protocol
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        try:
            self.socket.setblocking(False)
            program = _bpf(server_ip, server_ports)
            code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *insn) for insn in program))
            self._filter = code  # the kernel copies it; kept alive until then anyway
            fprog = struct.pack("HL", len(program), ctypes.addressof(code))
            self.socket.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except BaseException:
            self.socket.close()
            raise
        self._drain()  # what arrived before the filter
        protocol.makeConnection(self)  # type: ignore[arg-type]
        reactor.addReader(self)

    # -- the transport a DatagramProtocol is given ----------------------------

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.socket.sendto(udp_packet(self.local_port, addr[1], data), (addr[0], 0))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "0.0.0.0", self.local_port)

    def stopListening(self) -> None:
        if self.socket.fileno() >= 0:
            self.reactor.removeReader(self)
            self.socket.close()
            self.protocol.doStop()

    # -- IReadDescriptor ---------------------------------------------------------

    def fileno(self) -> int:
        return self.socket.fileno()

    def doRead(self) -> None:
        for _ in range(_READS_PER_WAKE):
            try:
                packet = self.socket.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            datagram = self._parse(packet)
            if datagram is not None:
                self.protocol.datagramReceived(*datagram)

    def _parse(self, packet: bytes) -> tuple[bytes, tuple[str, int]] | None:
        if len(packet) < 28 or packet[0] >> 4 != 4:
            return None
        header = (packet[0] & 0x0F) * 4
        if len(packet) < header + 8:
            return None
        source_port, destination_port, length = struct.unpack("!HHH", packet[header : header + 6])
        if destination_port != self.local_port or length < 8:
            return None
        source = socket.inet_ntoa(packet[12:16])
        return packet[header + 8 : header + length], (source, source_port)

    def _drain(self) -> None:
        while True:
            try:
                self.socket.recv(_MAX_DATAGRAM)
            except OSError:
                return

    def connectionLost(self, reason: Any) -> None:
        self.stopListening()

    def logPrefix(self) -> str:
        return "RawUDPPort"
