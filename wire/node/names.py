"""The mesh's names on this node: the DNS server on the VPN address, kept in
step with the netmap, and the machine's resolver pointed at it.

The server says whether the mesh has DNS (``NodeNetmap.dns``: its domain,
the admin's records and forwarded zones); the peers this node holds are the
names it answers, so a node the access policy hides from this one does not
resolve here. The OS integration (wire.node.osdns) is chosen at start, undoes
what a crashed run left, and is restored when the daemon stops or leaves.

Nothing here may stop the mesh: a port 53 that cannot be bound or a
resolv.conf that cannot be written is logged once, shown in ``wire status``
and tried again on the next netmap change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.logger import Logger

from wire.node.dns.server import DnsBindError, MeshDns
from wire.node.osdns import IOsDns, OsDnsError, OsDnsPaths, choose
from wire.protocol.dns import DnsConfig, dns_name_of
from wire.runner import IProcessRunner
from wire.textsafe import escaped

DNS_PORT = 53

# A peer's mesh addresses: one (its IPv4 one), or several (IPv4 and IPv6).
Addresses = str | Sequence[str]


class MeshNames:
    """Holds the node's mesh DNS server and the OS resolver's wiring."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        runner: IProcessRunner,
        interface: str,
        paths: OsDnsPaths,
        *,
        accept_dns: bool = True,
        port: int = DNS_PORT,
        make_server: Callable[..., MeshDns] = MeshDns,
        choose_os: Callable[..., Any] = choose,
        shared_with_host: Callable[[str], bool] | None = None,
    ):
        self._reactor = reactor
        self._runner = runner
        self.interface = interface
        self._paths = paths
        self.accept_dns = accept_dns
        self._port = port
        self._make_server = make_server
        self._choose_os = choose_os
        self._shared_with_host = shared_with_host or resolver_shared_with_host
        self.os_dns: IOsDns | None = None
        self.server: MeshDns | None = None
        self._listening_on: str | None = None
        self._reverse: tuple[str, ...] = ()  # the networks it answers reverse lookups for
        self._applied: tuple | None = None  # what the OS resolver was last given
        self.problem: str | None = None
        self._os_left_alone: str | None = None  # why the OS resolver may not be wired here
        self.config: DnsConfig | None = None

    async def prepare(self) -> None:
        """At start: choose how the OS resolver is wired, undoing what a crashed run left."""
        if self.os_dns is not None:
            return
        accept = self.accept_dns
        if accept and self._shared_with_host(self._paths.resolv_conf):
            # A node in a network namespace without a resolv.conf of its own
            # would rewrite the host's: the mesh DNS answers, the host's resolver stays.
            accept = False
            self._os_left_alone = (
                f"{self._paths.resolv_conf} is the host's (this node runs in a network namespace without one of its "
                "own: create /etc/netns/NAME/resolv.conf); the OS resolver is left alone"
            )
            self._set_problem(self._os_left_alone)
        self.os_dns = await self._choose_os(self._runner, self.interface, self._paths, accept_dns=accept)

    async def follow(self, config: DnsConfig | None, vpn_ip: str, subnet: str, own_name: str,
                     peers: Iterable[tuple[str, Addresses]], *, vpn_ip6: str = "", subnet6: str = "",
                     exit_resolver: str = "") -> None:
        """The netmap changed: answer for these peers (name, VPN address or
        addresses: A and AAAA) and this node (``vpn_ip``, and ``vpn_ip6`` when
        the mesh has IPv6); start, move or stop the server as the settings say.
        ``exit_resolver``: the mesh DNS of the exit node in use, asked for
        names beyond the mesh instead of the machine's resolvers."""
        self.config = config
        if config is None or not vpn_ip:
            await self.stop()
            return
        await self.prepare()
        problems = [self._os_left_alone] if self._os_left_alone else []
        try:
            await self._listen(vpn_ip, (subnet, subnet6) if subnet6 else (subnet,))
        except DnsBindError as e:
            problems.append(str(e))
        if self.server is not None:
            own = (vpn_ip, vpn_ip6) if vpn_ip6 else (vpn_ip,)
            self.server.set_exit_resolver(exit_resolver)
            self.server.update(self._records(config, own, own_name, peers), config, own_name=own_name)
            try:
                await self._wire_os(vpn_ip, (subnet, subnet6) if subnet6 else (subnet,), config)
            except OsDnsError as e:
                problems.append(f"the OS resolver is not pointed at the mesh: {e}")
        self._set_problem("; ".join(problems) or None)

    @staticmethod
    def _records(config: DnsConfig, own: tuple[str, ...], own_name: str, peers: Iterable[tuple[str, Addresses]]) -> list:
        # Only names that are DNS labels (a seed server stores any name).
        pairs = [
            (name, (addresses,) if isinstance(addresses, str) else tuple(addresses))
            for name, addresses in peers
            if dns_name_of(name, config.domain) is not None
        ]
        if dns_name_of(own_name, config.domain) is not None:
            pairs.append((own_name, own))
        return pairs

    def set_exit_resolver(self, address: str) -> None:
        """The exit node in use changed (or not: then nothing happens)."""
        if self.server is not None:
            self.server.set_exit_resolver(address)

    async def _listen(self, vpn_ip: str, networks: tuple[str, ...]) -> None:
        """On our IPv4 mesh address, answering reverse lookups for the mesh's networks."""
        if self.server is not None and self._listening_on == vpn_ip and self._reverse == networks:
            return
        await self._stop_server()
        upstream = self.os_dns.upstreams if self.os_dns is not None else ()
        server = self._make_server(self._reactor, vpn_ip, self._port, reverse_networks=list(networks), upstream=upstream)
        await server.start()
        self.server, self._listening_on, self._reverse = server, vpn_ip, networks
        self.log.info("mesh DNS answers on {address} port {port}", address=vpn_ip, port=server.port)

    async def _wire_os(self, vpn_ip: str, subnets: tuple[str, ...], config: DnsConfig) -> None:
        """The OS resolver sends the mesh domain and the reverse lookups of
        the mesh's prefixes (IPv4 and IPv6) here."""
        os_dns = self.os_dns
        if os_dns is None or os_dns.mode == "none":
            return
        wanted = (vpn_ip, config.domain, subnets)
        if wanted == self._applied:
            # Another program may have rewritten what we set (DHCP): put it back.
            if await os_dns.check():
                self.log.info("the OS resolver was changed by another program; pointed at the mesh again")
        else:
            await os_dns.apply(vpn_ip, config.domain, None, list(subnets))
            self._applied = wanted
            self.log.info("the OS resolver sends {domain} to {address} ({mode})", domain=config.domain, address=vpn_ip,
                          mode=os_dns.mode)
        if self.server is not None:
            # What the machine had before wire, learnt anew by each apply.
            self.server.set_machine_upstream(os_dns.upstreams)

    async def set_accept_dns(self, accept_dns: bool) -> None:
        """``wire set --accept-dns``: the OS resolver put back, and chosen again at the next netmap."""
        if accept_dns == self.accept_dns:
            return
        await self.stop()
        self.accept_dns = accept_dns
        self.os_dns = None
        self._os_left_alone = None

    async def stop(self) -> None:
        """The daemon stops or leaves (or the mesh has no DNS): the machine's resolver as it was."""
        if self.os_dns is not None and self._applied is not None:
            try:
                await self.os_dns.restore()
                self.log.info("the OS resolver is as it was before wire")
            except OsDnsError as e:
                self._set_problem(f"the OS resolver could not be restored: {e}")
            self._applied = None
        await self._stop_server()

    async def _stop_server(self) -> None:
        server, self.server, self._listening_on = self.server, None, None
        if server is not None:
            await server.stop()

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem:
            if problem:
                self.log.warn("mesh DNS: {problem}", problem=escaped(problem))
            elif self.problem:
                self.log.info("mesh DNS: working again")
            self.problem = problem

    def status(self) -> dict:
        """For ``wire status`` and ``diagnose``."""
        config = self.config
        return {
            "enabled": config is not None,
            "domain": config.domain if config is not None else None,
            "listening": f"{self._listening_on}:{self.server.port}" if self.server is not None else None,
            "accept_dns": self.accept_dns,
            "os": self.os_dns.status() if self.os_dns is not None else None,
            "records": len(config.records) if config is not None else 0,
            "forward": [zone.domain for zone in config.forward] if config is not None else [],
            "problem": self.problem,
        }



def resolver_shared_with_host(resolv_conf: str, netns_dir: str = "/run/netns", etc_netns: str = "/etc/netns") -> bool:
    """Whether this process runs in a named network namespace (``ip netns``)
    that has no resolv.conf of its own: ``ip netns exec`` bind-mounts
    /etc/netns/NAME/resolv.conf over /etc/resolv.conf only when it exists,
    so without it ``resolv_conf`` is the host's, and changing it would change
    the host's resolver."""
    if os.path.abspath(resolv_conf) != "/etc/resolv.conf":
        return False  # a file of its own was named
    try:
        mine = os.stat("/proc/self/ns/net")
        names = os.listdir(netns_dir)
    except OSError:
        return False
    for name in names:
        try:
            named = os.stat(os.path.join(netns_dir, name))
        except OSError:
            continue
        if (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
            return not os.path.exists(os.path.join(etc_netns, name, "resolv.conf"))
    return False
