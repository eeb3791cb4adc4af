"""``wire ping``: ping a peer over the VPN."""

from __future__ import annotations

import re
import sys

from wire.ops.context import Context, OpError
from wire.ops.targets import resolve_target
from wire.runner import CommandError

# iputils: "4 packets transmitted, 4 received"; BSD/macOS: "... 4 packets received".
_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
# iputils "rtt min/avg/max/mdev = a/b/c/d ms", BSD "round-trip min/avg/max/stddev = ...".
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)")


def ping_argv(address: str, count: int, platform: str = sys.platform) -> list[str]:
    # -W is seconds for iputils, milliseconds on macOS.
    wait = "2000" if platform == "darwin" else "2"
    return ["ping", "-c", str(count), "-W", wait, "-n", address]


def parse_ping(output: str, count: int) -> dict:
    """Counts and round-trip times from ping's summary (missing: nothing came back)."""
    summary = _PING_SUMMARY.search(output)
    sent, received = (int(summary.group(1)), int(summary.group(2))) if summary else (count, 0)
    rtt = _PING_RTT.search(output)
    rtt_min, rtt_avg, rtt_max = (float(v) for v in rtt.groups()) if rtt else (None, None, None)
    return {
        "transmitted": sent,
        "received": received,
        "loss_percent": round(100.0 * (sent - received) / sent, 1) if sent else 100.0,
        "rtt_min_ms": rtt_min,
        "rtt_avg_ms": rtt_avg,
        "rtt_max_ms": rtt_max,
    }


async def ping(ctx: Context, target: str, count: int = 4) -> dict:
    """Ping a peer over the VPN by name or address."""
    if not 1 <= count <= 100:
        raise OpError("count must be from 1 to 100")
    name, address = await resolve_target(ctx, target)
    try:
        result = await ctx.runner.run(ping_argv(address, count), timeout=count * 3 + 5)
    except CommandError as e:
        raise OpError(f"ping failed to run: {e}")
    # ping's own errors ("Network is unreachable") go to stderr.
    output = (result.stdout + result.stderr).decode(errors="replace").strip()
    counts = parse_ping(output, count)
    answer = {
        "ok": result.rc == 0 and counts["received"] > 0,
        "target": target,
        "node_name": name,
        "vpn_ip": address,
        **counts,
        "output": output,
    }
    local = await ctx.daemon_status()
    for peer in (local or {}).get("peers", []):
        if peer["vpn_ip"] == address:
            answer["path"] = peer["path"]
            answer["path_reason"] = peer["reason"]
    return answer
