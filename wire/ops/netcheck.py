"""``wire netcheck``: what this network lets through to the server."""

from __future__ import annotations

from twisted.internet.error import CannotListenError, DNSLookupError

from wire.client import ServerError, ServerUnreachable
from wire.node.config import stun_ports
from wire.node.lan import detect_lan_ip
from wire.ops.context import Context, _server_url
from wire.stun import StunError, StunTimeout, detect_nat

NAT_MEANINGS = {
    "none": "no NAT: this host's own address is public",
    "easy": "easy NAT: one public mapping for every destination, so peers can reach this node directly",
    "hard": "hard (symmetric) NAT: a new public mapping for every destination; direct tunnels only with peers that have no NAT, the relay carries the rest",
    "unknown": "unknown: only one STUN port answered, so the NAT type cannot be told",
}


async def netcheck(ctx: Context, server: str | None = None, *, timeout: float = 1.0, attempts: int = 3) -> dict:
    """What this network lets through to the server: HTTP, and UDP to its
    STUN ports (the path WireGuard needs), with the mapped address, the NAT
    type and latencies. Probes from an ephemeral port: the WireGuard port
    belongs to the daemon."""
    config = ctx.config(required=server is None)
    server_url = _server_url(config, server)
    host, port_a, port_b = stun_ports(server_url)
    local_ips = [ip for ip in (await detect_lan_ip(ctx.reactor, server_url),) if ip]
    http = await _http_check(ctx, server_url)
    udp = await _stun_check(ctx, host, (port_a, port_b), local_ips, timeout, attempts)
    problems = []
    if not http["reachable"]:
        problems.append(f"the server's HTTP API does not answer: {http['error']}")
    if not udp["reachable"]:
        fallback = (
            "; peers are then reached through the relay over TCP on the server's HTTPS port (relay-tcp), slower than UDP"
            if http["reachable"]
            else ""
        )
        problems.append(
            f"no UDP answer from {host} ports {port_a} and {port_b}: UDP is blocked on this network or at the server's "
            f"firewall (or its STUN ports are closed), and direct paths need UDP{fallback}"
        )
    relay = _relay_transport(http["reachable"], udp["reachable"])
    return {
        "ok": not problems,
        "server": server_url,
        "proxy": ctx.proxy_in_use(server_url),
        "http": http,
        "udp": udp,
        "local_ips": local_ips,
        "mapped": udp["mapped"],
        "nat_type": udp["nat_type"],
        "nat_meaning": NAT_MEANINGS[udp["nat_type"]] if udp["reachable"] else "unknown: no STUN answer",
        "relay": relay,
        "problems": problems,
    }


def _relay_transport(http: bool, udp: bool) -> dict:
    """How the relay would carry this node's traffic from this network."""
    if udp:
        return {"transport": "udp", "why": "UDP to the server works"}
    if http:
        return {"transport": "relay-tcp", "why": "UDP to the server blocked: the relay runs over TCP on its HTTPS port"}
    return {"transport": None, "why": "the server is unreachable"}


async def _http_check(ctx: Context, server_url: str) -> dict:
    started = ctx.reactor.seconds()
    try:
        health = await ctx.coordination(server_url).health()
    except (ServerUnreachable, ServerError) as e:
        return {"reachable": False, "rtt_ms": None, "version": None, "error": str(e)}
    rtt_ms = round((ctx.reactor.seconds() - started) * 1000, 2)
    return {"reachable": True, "rtt_ms": rtt_ms, "version": health.get("version"), "error": ""}


async def _stun_check(ctx: Context, host: str, ports: tuple[int, int], local_ips: list[str], timeout: float, attempts: int) -> dict:
    try:
        report = await detect_nat(ctx.reactor, host, *ports, local_port=0, timeout=timeout, attempts=attempts, local_ips=local_ips)
    except (StunTimeout, StunError, DNSLookupError, CannotListenError) as e:
        return {
            "reachable": False,
            "ports": [{"port": p, "answered": False, "mapped": None} for p in ports],
            "mapped": None,
            "nat_type": "unknown",
            "rtt_ms": None,
            "error": str(e),
        }
    answers = [_address(report.mapped_a), _address(report.mapped_b)]
    return {
        "reachable": True,
        "ports": [{"port": p, "answered": a is not None, "mapped": a} for p, a in zip(ports, answers)],
        "mapped": _address(report.mapped),
        "nat_type": report.nat_type,
        "rtt_ms": round(report.latency_ms, 2),
        "error": "",
    }


def _address(mapped) -> str | None:
    if mapped is None:
        return None
    return f"[{mapped.ip}]:{mapped.port}" if ":" in mapped.ip else f"{mapped.ip}:{mapped.port}"
