"""Targets (issue 7) checked against the results, and the Markdown report."""

from __future__ import annotations

import json
import os

TARGETS = [
    # id, what, limit text
    ("steady_cpu_10k", "10,000 nodes, 30 s heartbeats: server CPU", "< 25 % of one core"),
    ("steady_rss_10k", "10,000 nodes, 30 s heartbeats: server RSS (max)", "< 300 MB"),
    ("propagation_1k", "propagation to 1,000 long-polling nodes, p99", "< 1 s"),
    ("propagation_10k", "propagation to 10,000 long-polling nodes, p99", "< 3 s"),
    ("bytes_independent", "bytes per node per minute independent of N (wire, steady)", "within 10 % across N"),
    ("stun", "STUN Binding responses per second", ">= 20,000/s"),
]


def _wire(results: dict, nodes: int) -> dict | None:
    """The wire run at ``nodes``; the product's default (tls) one when there are several."""
    runs = [
        s for s in results.get("coordination", [])
        if s["mode"] == "wire" and s["nodes"] == nodes and "failed" not in s
    ]
    runs.sort(key=lambda s: s.get("security") != "tls")
    return runs[0] if runs else None


def evaluate(results: dict) -> list[dict]:
    rows = []
    # The targets are the mesh without a policy: a policy run (each node sees
    # part of the mesh) has its own table.
    results = {**results, "coordination": [s for s in results.get("coordination", []) if not s.get("policy")]}

    def row(target_id, measured, passed, note=""):
        what, limit = next((w, lim) for i, w, lim in TARGETS if i == target_id)
        rows.append(
            {
                "id": target_id,
                "what": what,
                "target": limit,
                "measured": measured,
                "verdict": "not measured" if passed is None else ("PASS" if passed else "MISS"),
                "note": note,
            }
        )

    # "10,000 nodes": every wire run from 9,900 up (a server limited to
    # 20,000 open files holds two connections each for 9,900 nodes at most).
    big_runs = [
        s for s in results.get("coordination", [])
        if s["mode"] == "wire" and 9_900 <= s["nodes"] <= 10_000 and "failed" not in s and s.get("steady")
    ]
    for big in big_runs or [None]:
        label = f"{_run(big)} N={big['nodes']}, {big.get('heartbeat_mode', 'periodic')}" if big else ""
        cpu = big and big["steady"].get("server_cpu_percent")
        row("steady_cpu_10k", f"{cpu} % ({label})" if cpu is not None else None, None if cpu is None else cpu < 25,
            f"heartbeat connection {big['heartbeat_connection']}; others on the server core {_background(big['steady'])}" if big else "")
    for big in big_runs or [None]:
        label = f"{_run(big)} N={big['nodes']}, {big.get('heartbeat_mode', 'periodic')}" if big else ""
        rss = big and big["steady"].get("server_rss_mb")
        row("steady_rss_10k", f"{rss['max']} MB ({label})" if rss else None, None if not rss else rss["max"] < 300,
            f"{big['steady']['server'].get('open_fds')} open fds" if big else "")

    targets = [("propagation_1k", [s for s in results.get("coordination", []) if s["mode"] == "wire" and s["nodes"] == 1000], 1.0),
               ("propagation_10k", big_runs, 3.0)]
    for target_id, runs, limit in targets:
        runs = [s for s in runs if "failed" not in s and s.get("propagation")]
        if not runs:
            row(target_id, None, None)
        for scenario in runs:
            p = scenario["propagation"]
            p99 = p["time_to_all_seconds"]["p99"]
            per_node = p["per_node_seconds"].get("p99")
            passed = isinstance(p99, (int, float)) and p99 < limit
            row(
                target_id,
                f"{p99} s ({_run(scenario)} N={scenario['nodes']}; time until all N have it, {p['probes']} probes)",
                passed,
                f"per-node p99 {per_node} s; all-N p50 {p['time_to_all_seconds']['p50']} s; "
                f"others on the server core {_background(p)}",
            )

    # Bytes depend on what a node sends (periodic heartbeats or not), not on
    # N: compare runs of the same heartbeat mode.
    groups: dict = {}
    for s in results.get("coordination", []):
        if s["mode"] == "wire" and "failed" not in s and s.get("steady"):
            groups.setdefault(s.get("heartbeat_mode", "periodic"), []).append(
                (s["nodes"], _run(s), s["steady"]["server_bytes_sent_per_node_per_minute"])
            )
    compared = False
    for mode, sizes in sorted(groups.items()):
        sizes.sort()
        if len({n for n, _, _ in sizes}) < 2:
            continue
        compared = True
        values = [v for _, _, v in sizes]
        spread = max(values) / min(values) - 1
        row(
            "bytes_independent",
            f"{mode} heartbeats: " + ", ".join(f"{r} N={n}: {v:.0f} B" for n, r, v in sizes),
            spread <= 0.10,
            f"spread {100 * spread:.1f} % (server to node, HTTP bytes)",
        )
    if not compared:
        row("bytes_independent", None, None, "needs wire runs at two sizes with the same heartbeat mode")

    stun = results.get("stun") or {}
    rate = stun.get("responses_per_second")
    best = stun.get("at_step") or {}
    row("stun", f"{rate:,.0f}/s" if rate else None, None if rate is None else rate >= 20_000,
        f"best step with < 1 % lost: offered {best.get('offered_per_second')}/s, server CPU {best.get('server_cpu_percent')} %, "
        f"load CPU {best.get('load_cpu_percent')} %" if rate else "")
    return rows


def write(results: dict, out_dir: str, name: str = "report") -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{name}.json")
    md_path = os.path.join(out_dir, f"{name}.md")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2, default=str)
        f.write("\n")
    with open(md_path, "w") as f:
        f.write(markdown(results))
    return json_path, md_path


def _v(x, unit=""):
    if x is None:
        return "–"
    return f"{x}{unit}"


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    lines = [
        "# wire benchmark report",
        "",
        f"Run {env.get('started', '?')} on {env.get('cpu_model', '?')} ({env.get('cpus', '?')} CPUs), "
        f"Linux {env.get('kernel', '?')}, Python {env.get('python', '?')}, Twisted {env.get('twisted', '?')}.",
        f"Server code: `{env.get('server_checkout', '?')}` ({env.get('server_git', '?')}). "
        f"Server pinned to CPU {env.get('server_cpus')}, load to CPU {env.get('load_cpus')}. "
        f"fd limit {env.get('fd_limit')} per process.",
        "",
        "## Targets",
        "",
        "| target | goal | measured | verdict | note |",
        "|---|---|---|---|---|",
    ]
    for r in results.get("targets", []):
        lines.append(f"| {r['what']} | {r['target']} | {_v(r['measured'])} | **{r['verdict']}** | {r['note']} |")

    coordination = results.get("coordination", [])
    if coordination:
        lines += [
            "",
            "## Registration throughput (fresh server, no long-polls open)",
            "",
            "| run | N | registered | failed | per second | latency p50 / p99 | server CPU | first → last 1,000 /s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in coordination:
            if "registration" not in s:
                lines.append(f"| {_run(s)} | {s['nodes']} | failed: {s.get('failed')} |||||")
                continue
            r = s["registration"]
            lat = r["latency_seconds"]
            seg = r.get("per_second_by_thousand") or []
            trend = f"{seg[0]['per_second']} → {seg[-1]['per_second']}" if seg else "–"
            cpu = r["server_cpu"]["percent_of_one_core"] if r.get("server_cpu") else None
            lines.append(
                f"| {_run(s)} | {s['nodes']} | {r['registered']} | {r['failed']} | {r['per_second']} | "
                f"{_ms(lat.get('p50'))} / {_ms(lat.get('p99'))} | {_v(cpu, ' %')} | {trend} |"
            )
        lines += [
            "",
            "## Steady state (heartbeat every 30 s; wire: one long-poll per node, wait 25 s)",
            "",
            "| run | N | window | server CPU (% of a core) | CPU per 5 s min–max | RSS max | server → node B/node/min | node → server B/node/min | req/s | errors | load CPU | others on server core |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in coordination:
            st = s.get("steady")
            if not st:
                continue
            per5 = st.get("server_cpu_percent_per_5s") or {}
            rss = st.get("server_rss_mb") or {}
            req = ", ".join(f"{k} {v}" for k, v in st["requests_per_second"].items())
            errors = sum(st["errors"].values())
            lines.append(
                f"| {_run(s)} | {s['nodes']} | {st['window_seconds']} s | {_v(st['server_cpu_percent'])} | "
                f"{_v(per5.get('min'))}–{_v(per5.get('max'))} | {_v(rss.get('max'), ' MB')} | "
                f"{st['server_bytes_sent_per_node_per_minute']:,.0f} | {st['server_bytes_received_per_node_per_minute']:,.0f} | "
                f"{req} | {errors} | {st['load_cpu_percent']} % | {_background(st)} |"
            )
        notes = sorted(
            {
                f"{_run(s)} N={s['nodes']}: {s.get('heartbeat_mode', 'periodic')}, connection {s.get('heartbeat_connection', '?')}"
                for s in coordination
            }
        )
        lines += ["", "Heartbeats: " + "; ".join(notes) + "."]
        lines += [
            "",
            "## Propagation (new registration → every simulated node has it)",
            "",
            "| run | N | probes | not seen by all | all-N p50 | all-N p99 | all-N max | per-node p50 | per-node p99 | register answered p50 | server CPU | load CPU | others on server core |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in coordination:
            p = s.get("propagation")
            if not p:
                continue
            t = p["time_to_all_seconds"]
            n = p["per_node_seconds"]
            lines.append(
                f"| {_run(s)} | {s['nodes']} | {p['probes']} | {p['probes_not_seen_by_all']} | {_s(t['p50'])} | "
                f"{_s(t['p99'])} | {_s(t['max'])} | {_s(n.get('p50'))} | {_s(n.get('p99'))} | "
                f"{_s(p['registration_answered_seconds'].get('p50'))} | {_v(p.get('server_cpu_percent'), ' %')} | "
                f"{_v(p.get('load_cpu_percent'), ' %')} | {_background(p)} |"
            )
        snaps = [(f"{_run(s)} {s['nodes']}", s["snapshots"]) for s in coordination if s.get("snapshots")]
        if snaps:
            lines += [
                "",
                "## Cold-join cost (under steady load)",
                "",
                "| run, N | full snapshot (since=0) | bytes | seed /peers list | bytes |",
                "|---|---|---|---|---|",
            ]
            for n, sn in snaps:
                lines.append(
                    f"| {n} | {_ms(sn['full_snapshot']['seconds'].get('p50'))} | {sn['full_snapshot']['bytes']:,} | "
                    f"{_ms(sn['seed_peers_list']['seconds'].get('p50'))} | {sn['seed_peers_list']['bytes']:,} |"
                )
        lines += _policy_tables(coordination)
        failed = [s for s in coordination if "failed" in s]
        for s in failed:
            lines += ["", f"**{_run(s)} N={s['nodes']} failed:** {s['failed']}"]

    stun = results.get("stun")
    if stun:
        lines += ["", "## STUN (open loop, stepped offered rate)", ""]
        if "failed" in stun:
            lines.append(f"failed: {stun['failed']}")
        else:
            lines += [
                f"{stun['sources']} sources (one loopback address each), ports {stun['ports']}, "
                f"{stun['step_seconds']} s per step; {stun['unexpected']} unexpected datagrams, "
                f"{stun['fully_checked']} answers fully parsed ({len(stun['check_failures'])} bad).",
                "",
                "| offered/s | sent/s | answered/s | lost | dropped by the server's sockets | by the load's | server CPU | load CPU | others on server core |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for st in stun["steps"]:
                lines.append(
                    f"| {st['offered_per_second']:,} | {st['sent_per_second']:,.0f} | {st['answered_per_second']:,.0f} | "
                    f"{st['lost_percent']} % | {_v(st.get('dropped_by_server_socket'))} | {_v(st.get('dropped_by_client_sockets'))} | "
                    f"{_v(st.get('server_cpu_percent'), ' %')} | {st['load_cpu_percent']} % | {_background(st)} |"
                )
            if stun.get("client_bound"):
                lines += ["", "Some steps had the load process near 100 % CPU: there the client, not the server, set the rate."]

    apply = results.get("apply_netmap")
    if apply:
        lines += ["", "## Node side: apply a netmap to wireguard-go", ""]
        if "first_apply" in apply:
            lines.append(
                f"{apply['peers']} peers, {apply['backend']} ({apply.get('wireguard_go', '')}): "
                f"first apply {apply['first_apply']['seconds']} s ({apply['first_apply']['wg_spawns']} `wg set` spawns), "
                f"{apply['second_apply']['changes_asked']} changes {apply['second_apply']['seconds']} s, "
                f"unchanged {apply['unchanged_apply']['seconds']} s; interface up {apply['up_seconds']} s."
            )
        else:
            lines.append(f"{apply}")

    relay = results.get("relay")
    if relay:
        lines += ["", "## Relay", ""]
        t = relay.get("throughput") or {}
        if "relay_tcp_mbit_s" in t:
            lines.append(
                f"From bench/relay_throughput.py (lab mesh, iperf3): relayed TCP {t['relay_tcp_mbit_s']} Mbit/s vs direct "
                f"{t['direct_tcp_mbit_s']} Mbit/s ({t['relay_over_direct_percent']} %); 10 Mbit/s UDP lost "
                f"{t.get('relay_udp_10M', {}).get('lost_percent')} % relayed, {t.get('direct_udp_10M', {}).get('lost_percent')} % direct; "
                f"hard1 → hard2 path: {t.get('hard1_to_hard2_path')}."
            )
        elif t:
            lines.append(f"bench/relay_throughput.py: {t.get('skipped') or t.get('failed')}")
        lines += ["", f"**TODO** — {relay.get('todo') or relay.get('reason')}. No figure for it."]
    profiles = [
        (f"{_run(s)} N={s['nodes']} {phase}", s[phase]["profile"])
        for s in coordination
        for phase in ("steady", "propagation")
        if s.get(phase, {}).get("profile")
    ]
    if profiles:
        lines += ["", "## Server profiles (py-spy, share of busy samples)"]
        for name, prof in profiles:
            if "error" in prof:
                lines += ["", f"{name}: {prof['error']}"]
                continue
            lines += ["", f"### {name} ({prof['busy_samples']} busy samples)", "", "| own | % | cumulative | % |", "|---|---|---|---|"]
            for own, cum in zip(prof["own"], prof["cumulative"]):
                lines.append(f"| `{own['function']}` | {own['percent']} | `{cum['function']}` | {cum['percent']} |")
    quiet = [s for s in coordination if s.get("quiet_before", {}).get("quiet") is False]
    if quiet or (stun and stun.get("quiet_before", {}).get("quiet") is False):
        lines += ["", "**Warning:** the machine was busy with other work before some benches "
                  "(see quiet_before in report.json); their figures include that interference."]
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _policy_tables(coordination: list[dict]) -> list[str]:
    runs = [s for s in coordination if s.get("policy") and s.get("propagation")]
    if not runs:
        return []
    lines = [
        "",
        "## Under an access policy (bench/policyload.py: 20 tags, 5 groups, 50 rules; one tag per node)",
        "",
        "Join: a new node joins; time until every node the policy lets see it has it (those that may not must never).",
        "",
        "| run | N | peers per node p50 | probes | allowed viewers p50 | not seen by all allowed | all-allowed p50 | all-allowed p99 | per-node p50 | per-node p99 | seen by nodes not allowed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in runs:
        p = s["propagation"]
        t, n = p["time_to_all_seconds"], p["per_node_seconds"]
        lines.append(
            f"| {_run(s)} | {s['nodes']} | {s.get('policy_setup', {}).get('visible_peers_per_node', {}).get('p50')} | "
            f"{p['probes']} | {p.get('allowed_viewers_per_probe', {}).get('p50')} | {p['probes_not_seen_by_all']} | "
            f"{_s(t['p50'])} | {_s(t['p99'])} | {_s(n.get('p50'))} | {_s(n.get('p99'))} | {p.get('seen_by_nodes_not_allowed')} |"
        )
    lines += [
        "",
        (
            "Policy change (one rule added): from the set call's answer until each node whose filter changes has it"
            " in a long-poll answer (filter p50/p99), each node whose view changes has been told every peer it gained"
            " and lost (view p50/p99), and both for every node either concerns (reached); the wave's bytes."
        ),
        "",
        "| run | N | set call | new filter | wrong/unexpected | filter p50 | filter p99 | changed views (gained p50) | view p50 | view p99 | reached p50 | reached p99 | reached max | full answers | body B/node | server → node B/node | server CPU | RSS before → max | load CPU | others on server core |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in runs:
        c = s.get("policy_change")
        if not c:
            continue
        t = c["new_filter_seconds"]
        v = c.get("view_change_seconds", {})
        r = c.get("reached_seconds", {})
        lines.append(
            f"| {_run(s)} | {s['nodes']} | {_s(c['set_call_seconds'])} | {c['affected_with_new_filter']} of {c['affected_nodes']} | "
            f"{c['new_filter_unexpected_or_wrong']} | {_s(t['p50'])} | {_s(t['p99'])} | "
            f"{c.get('view_changed_told')} of {c.get('view_changed_nodes')} ({c.get('peers_gained_per_changed_view_p50')}) | "
            f"{_s(v.get('p50'))} | {_s(v.get('p99'))} | {_s(r.get('p50'))} | {_s(r.get('p99'))} | {_s(r.get('max'))} | "
            f"{c['nodes_with_full_answer']} | {c['answer_body_bytes_per_node']:,.0f} | "
            f"{c['server_bytes_sent_per_node']:,.0f} | {_v(c.get('server_cpu_percent'), ' %')} | "
            f"{(c.get('server_rss_mb') or {}).get('before')} → {(c.get('server_rss_mb') or {}).get('max')} MB | "
            f"{_v(c.get('load_cpu_percent'), ' %')} | {_background(c)} |"
        )
    return lines


def _run(s: dict) -> str:
    return f"{s['mode']}/{s.get('security', '?')}{'/policy' if s.get('policy') else ''}"


def _background(section: dict) -> str:
    b = section.get("background") or {}
    other = b.get("other_on_server_core_percent")
    if other is None:
        return "–"
    flag = " ⚠" if other > 5 else ""
    return f"{other} %{flag}"


def _ms(x):
    return "–" if x is None else f"{x * 1000:.1f} ms"


def _s(x):
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:.3f} s"
