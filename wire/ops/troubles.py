"""What the running daemon says is wrong with it, in words: its loops failing
now, and the server's answers it refused lately.

``wire diagnose`` (its "daemon loops" and "server answers" checks) and
``wire status`` both describe these from the daemon's control status with
these functions, so the two say the same thing the same way. The text
quotes the server (errors, refused entries): the CLI and the MCP adapter
escape it, as every string of a result, before showing it.
"""

from __future__ import annotations

# A refused entry in the server's answers older than this is history, not a problem.
BAD_ANSWER_RECENT = 600.0


def duration(seconds: float) -> str:
    """``45s``, ``2m10s``, ``3h05m``: precise enough to tell a blip from an outage."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def failing_loop(failing: dict) -> str:
    """One entry of the daemon's ``failing``: which loop, how often, how long, why."""
    return f"{failing['what']}: {failing['count']} failure(s) in a row for {duration(failing['since_ago'])} ({failing['error']})"


def recent_bad_answers(local: dict) -> dict | None:
    """The daemon's ``bad_answers``, if the latest is recent enough to matter."""
    bad = local.get("bad_answers") or {}
    ago = bad.get("ago")
    if not bad.get("count") or ago is None or ago > BAD_ANSWER_RECENT:
        return None
    return bad


def refused_answers(bad: dict) -> str:
    """A :func:`recent_bad_answers`, told: how many (since the daemon started), the latest, when."""
    return f"{bad['count']} entr(y/ies) refused since the daemon started, the latest {duration(bad['ago'])} ago: {bad['latest']}"


def daemon_troubles(local: dict | None) -> list[str]:
    """Every line worth telling about the daemon's own state; none when all is well."""
    if local is None:
        return []
    lines = [failing_loop(f) for f in local.get("failing") or []]
    bad = recent_bad_answers(local)
    if bad is not None:
        lines.append(f"server answers: {refused_answers(bad)}")
    problem = (local.get("policy") or {}).get("problem")
    if problem:
        lines.append(f"access policy: {problem}; this node holds no peers until it can")
    routing = local.get("routing") or {}
    for problem in (routing.get("problem"), routing.get("router_problem"), routing.get("forwarding_problem")):
        if problem:
            lines.append(f"routes: {problem}")
    dns_problem = (local.get("dns") or {}).get("problem")
    if dns_problem:
        lines.append(f"mesh DNS: {dns_problem}")
    return lines
