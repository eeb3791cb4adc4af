"""What ``wire`` prints: each formatter takes an operation's result and returns text."""

from __future__ import annotations

from typing import Callable


class Style:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text


def span(seconds: float) -> str:
    """A length of time in its largest whole unit: ``45s``, ``12m``, ``3h``, ``6d``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{span(seconds)} ago"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def format_status(result: dict, style: Style) -> str:
    """The seed's layout, then this node's path to each peer."""
    nodes = result["nodes"]
    # The seed's column widths, wider when a value needs it.
    name_w = max([14] + [len(n.get("node_name", "")) for n in nodes])
    vpn_w = max([16] + [len(n.get("vpn_ip", "")) for n in nodes])
    public_w = max([21] + [len(n.get("public_ip", "")) for n in nodes])
    stale = result.get("stale", False)
    lines = [
        "",
        f"{style('1', 'wire status')}  {result['server']}{_via_proxy(result)}",
    ]
    if result.get("warning"):
        # A stale mesh (the daemon's netmap) or a node the server refuses: before anything else.
        lines.append("  " + style("33", f"! {result['warning']}"))
    # The daemon's failing loops and refused server answers: only when there are any.
    lines += ["  " + style("33", f"! {problem}") for problem in result.get("daemon_problems", [])]
    lines += [
        f"  {result['online']} online / {result['offline']} offline / {result['total']} total" + (" (last known)" if stale else ""),
    ]
    routing = result.get("routing") or {}
    if routing.get("exit_node"):
        lines.append(f"  exit node: {routing['exit_node']} carries this node's internet traffic")
    elif routing.get("exit_node_wanted"):
        lines.append("  " + style("33", f"! exit node {routing['exit_node_wanted']} not in use: {routing.get('problem') or 'not offered'}"))
    lines += ["  " + style("33", f"! {reason}") for reason in routing.get("skipped") or []]
    dns = result.get("dns") or {}
    if dns.get("enabled"):
        where = f" on {dns['listening']}" if dns.get("listening") else " (not listening)"
        os_mode = (dns.get("os") or {}).get("mode") or "none"
        told = "the OS resolver is left alone" if os_mode == "none" else f"the OS resolver sends it here ({os_mode})"
        lines.append(f"  names: *.{dns['domain']}{where}; {told}")
    lines.append("")
    for node in nodes:
        online = node.get("status") == "online"
        colour = "32" if online else "90"
        dot = style(colour, "●" if online else "○")
        name = style(colour, f"{node.get('node_name', ''):<{name_w}}")
        # The daemon's netmap has no last-seen times.
        seen = _ago(node["last_seen_ago"]) if "last_seen_ago" in node else "-"
        line = f"  {dot} {name} {node.get('vpn_ip', ''):<{vpn_w}} {node.get('public_ip', ''):<{public_w}} {seen:<7}"
        if node.get("this_node"):
            line += "  " + style("1", "(this node)")
        elif "path" in node:
            line += "  " + _path_column(node)
        if node.get("tags"):  # after the seed's columns, so its layout stays
            line += "  " + style("36", " ".join(node["tags"]))
        if node.get("dns_name"):
            line += "  " + style("90", node["dns_name"])
        if node.get("routes"):
            line += "  " + style("35", "routes " + ",".join(node["routes"]))
        if node.get("exit_node"):
            line += "  " + style("35", "exit node" + (" (in use)" if node.get("exit_in_use") else " (offered)"))
        lines.append(line.rstrip())
    if not result.get("daemon_running") and result.get("my_node_id"):
        lines += ["", "  (the node daemon is not running here: paths unknown; sudo wire up)"]
    return "\n".join(lines) + "\n"


def _path_column(node: dict) -> str:
    """This node's path to a peer: direct, relay, or why neither yet."""
    path, reason = node["path"], node["path_reason"]
    if path in ("direct", "lan"):
        return f"{path} {node['endpoint']}, handshake {_ago(node['handshake_age'])}"
    if path in ("relay", "relay-tcp"):
        return f"{path} ({node['path_why']}), handshake {_ago(node['handshake_age'])}"
    return f"{path}: {reason}"


def format_peers(result: dict, style: Style) -> str:
    if result.get("stale"):
        lines = [style("33", f"! {result['warning']}"), f"{result['count']} peer(s) online when last heard, from this node's daemon"]
        for peer in result["peers"]:
            lines.append(f"  {peer['node_name']:<16} {peer['vpn_ip']:<16} {peer['endpoint'] or '-'} ({peer['path']})")
        return "\n".join(lines)
    lines = [f"{result['count']} online peer(s) at {result['server']}"]
    for peer in result["peers"]:
        lines.append(f"  {peer.get('node_name', ''):<16} {peer.get('vpn_ip', ''):<16} {peer.get('public_ip', '')}:{peer.get('nat_port', '')}")
    return "\n".join(lines)


def format_up(result: dict, style: Style) -> str:
    verb = "renamed and up" if result.get("renamed") else "already up" if result["already_running"] else "up"
    address = result["vpn_ip"] + (f" and {result['vpn_ip6']}" if result.get("vpn_ip6") else "")
    text = f"{result['node_name']} is {verb}: {style('1', address)} on {result['interface']} ({result['backend']}), server {result['server']}, NAT {result['nat_type']}, {result['peers']} peer(s)"
    if result.get("note"):
        text += f"\nnote: {result['note']}"
    return text


def format_down(result: dict, style: Style) -> str:
    if result.get("join_called_off"):
        told = f"the join with {result['join_called_off']} was called off (it never enrolled, so no server knows this node)"
    elif result["server_told"]:
        told = "the server was told"
    else:
        told = "the server could not be told (it shows the node offline after its heartbeat timeout)"
    text = f"{result['node_name'] or 'this node'} is down: interface {result['interface']} removed; {told}"
    if result.get("resolver_restored"):
        text += f"\nresolver: {result['resolver_restored']} (left managed by a daemon that did not stop cleanly)"
    if result.get("routing_problem"):
        text += f"\nroutes: {result['routing_problem']}"
    if result.get("resolver_problem"):
        text += f"\nresolver: {result['resolver_problem']}"
    if result.get("note"):
        text += f"\nnote: {result['note']}"
    return text


def format_set(result: dict, style: Style) -> str:
    shown = ", ".join(f"{name.replace('_', '-')}={_setting(result['settings'][name])}" for name in result["changed"])
    where = "in force now" if result["applied"] else "saved; the daemon applies them when it starts (sudo wire up)"
    note = f"\n{result['note']}" if result.get("note") else ""
    return f"settings changed: {shown} ({where}){note}"


def _setting(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value) or "''"
    return value or "''"


def format_ping(result: dict, style: Style) -> str:
    text = result["output"]
    if "path" in result:
        text += f"\npath: {result['path']} ({result['path_reason']})"
    return text


def format_ip(result: dict, style: Style) -> str:
    """One address a line, nothing else: for scripts (ssh "$(wire ip -6 db1)")."""
    return "\n".join(result["addresses"])


def format_install(result: dict, style: Style) -> str:
    if result["ok"]:
        how = "kernel WireGuard" if result["kernel_wireguard"] else f"wireguard-go ({result['wireguard_go']})"
        text = f"WireGuard is ready: wg at {result['wg']}, {how}"
        if result.get("installed"):
            text += f"\ninstalled: {', '.join(result['installed'])}"
        return text
    text = f"missing: {', '.join(result['missing'])} (platform: {result['platform']})"
    if result["install_command"]:
        text += f"\ninstall with: {result['install_command']}   (or: wire install --yes)"
    return text


def format_checks(result: dict, style: Style) -> str:
    lines = []
    for check in result["checks"]:
        mark = style("32", "✓") if check["ok"] else style("31", "✗")
        lines.append(f"  {mark} {check['check']:<13} {check['detail']}")
        if check["suggestion"]:
            lines.append(f"      → {check['suggestion']}")
    return "\n".join(lines)


def format_watchdog(result: dict, style: Style) -> str:
    if not result["daemon_running"]:
        return result["problems"][0]
    lines = []
    for peer in result["peers"]:
        mark = style("31", "stale") if peer["stale"] else ("ok" if peer["online"] else style("90", "offline"))
        lines.append(f"  {peer['node_name']:<16} {peer['vpn_ip']:<16} handshake {_ago(peer['handshake_age']):<10} {mark}")
    lines += [f"  ! {problem}" for problem in result["problems"]]
    if result["ok"]:
        lines.append("  all peers healthy")
    return "\n".join(lines)


def _via_proxy(result: dict) -> str:
    """" via proxy http://***@proxy:3128 (HTTPS_PROXY)" when the API is reached through one."""
    proxy = result.get("proxy")
    return f" via proxy {proxy['url']} ({proxy['source']})" if proxy else ""


def format_netcheck(result: dict, style: Style) -> str:
    http, udp = result["http"], result["udp"]
    lines = [f"{style('1', 'wire netcheck')}  {result['server']}{_via_proxy(result)}"]
    http_state = f"ok, {_ms(http['rtt_ms'])} (version {http['version']})" if http["reachable"] else style("31", "no answer")
    lines.append(f"  HTTP /health      {http_state}")
    for port in udp["ports"]:
        state = f"ok, mapped {port['mapped']}" if port["answered"] else style("31", "no answer")
        lines.append(f"  UDP  STUN :{port['port']:<6} {state}")
    if udp["reachable"]:
        lines.append(f"  STUN latency      {_ms(udp['rtt_ms'])}")
        lines.append(f"  public address    {result['mapped']} (this host: {', '.join(result['local_ips']) or 'unknown'})")
    lines.append(f"  NAT               {result['nat_meaning']}")
    relay = result.get("relay") or {}
    if relay.get("transport"):
        lines.append(f"  relay             {relay['transport']} ({relay['why']})")
    lines += [f"  ! {problem}" for problem in result["problems"]]
    return "\n".join(lines)


def format_explain(result: dict, style: Style) -> str:
    path = style("32", result["path"]) if result["ok"] else style("31", result["path"])
    lines = [
        f"{style('1', result['peer'])} ({result['vpn_ip']}): path {path}, endpoint {result['endpoint'] or 'none'}, handshake {_ago(result['handshake_age'])}",
        f"  NAT: this node {result['nat']['this_node']}, {result['peer']} {result['nat']['peer']}",
    ]
    lines += [f"  - {reason}" for reason in result["reasons"]]
    lines += [f"  → {suggestion}" for suggestion in result["suggestions"]]
    return "\n".join(lines)


def format_demo(result: dict, style: Style) -> str:
    if "cleaned" in result:
        return f"removed the demo mesh {result['cleaned']}"
    return "demo passed" if result["ok"] else "demo FAILED"



Formatter = Callable[[dict, Style], str]
