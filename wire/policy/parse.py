"""From policy text to a :class:`~wire.policy.model.Policy`: structure, names,
ports and protocols, and every reference the policy can check by itself.

References only the node directory can settle (is ``web1`` a node? does any
node carry ``tag:ci``?) are left to wire.policy.check. Unknown keys are
errors everywhere: a typo such as ``"acl"`` or ``"dsts"`` must not silently
open or close access.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Iterable
from typing import Any

from wire.policy.errors import PolicyError
from wire.policy.hujson import parse_hujson
from wire.policy.model import (
    ANY,
    GROUP,
    NETWORK,
    NODE,
    PROTOCOLS,
    TAG,
    AutoApprovers,
    Destination,
    Network,
    Policy,
    PolicyTest,
    Principal,
    Rule,
)
from wire.protocol.filter import PortRange

TOP_KEYS = ("groups", "hosts", "tagOwners", "acls", "tests", "autoApprovers")
AUTO_APPROVER_KEYS = ("routes", "exitNode")
RULE_KEYS = ("action", "src", "proto", "dst")
TEST_KEYS = ("src", "proto", "accept", "deny")
MAX_RULES = 10_000
MAX_ENTRIES = 10_000  # per list: bounds the work a policy can ask for

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_PORT = re.compile(r"^[0-9]{1,6}$")


def parse_policy(text: str) -> Policy:
    """The policy ``text`` (HuJSON) describes; PolicyError saying where and what if it is not valid."""
    body = parse_hujson(text)
    if not isinstance(body, dict):
        raise PolicyError("policy: the top level must be an object { ... }")
    _refuse_unknown_keys(body, TOP_KEYS, "policy")
    hosts = _parse_hosts(body.get("hosts", {}))
    tag_owners = _parse_tag_owners(body.get("tagOwners", {}))
    groups = _parse_groups(body.get("groups", {}), hosts)
    names = _Names(hosts, groups)
    raw_rules = _list(body.get("acls", []), "acls", MAX_RULES)
    rules = tuple(_parse_rule(i, raw, names) for i, raw in enumerate(raw_rules))
    raw_tests = _list(body.get("tests", []), "tests", MAX_RULES)
    tests = tuple(_parse_test(i, raw, names) for i, raw in enumerate(raw_tests))
    auto_approvers = _parse_auto_approvers(body.get("autoApprovers", {}), names)
    return Policy(groups=groups, hosts=hosts, tag_owners=tag_owners, rules=rules, tests=tests, auto_approvers=auto_approvers)


def _refuse_unknown_keys(body: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in body:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else f" (known: {', '.join(known)})"
            raise PolicyError(f"{where}: unknown key {_quote(key)}{hint}")


def _quote(value: str) -> str:
    """A policy's own text, quoted for a message and cut short (it may be hostile or huge)."""
    return json.dumps(value[:80] + ("..." if len(value) > 80 else ""))


def _list(value: Any, where: str, limit: int = MAX_ENTRIES) -> list[Any]:
    if not isinstance(value, list):
        raise PolicyError(f"{where}: must be a list [ ... ]")
    if len(value) > limit:
        raise PolicyError(f"{where}: at most {limit} entries")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: must be an object {{ ... }}")
    if len(value) > MAX_ENTRIES:
        raise PolicyError(f"{where}: at most {MAX_ENTRIES} entries")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: must be a string")
    return value


def _label(text: str, where: str, what: str) -> str:
    """A DNS label, lowercased (node names are lowercased when nodes register)."""
    label = text.lower()
    if not _LABEL.fullmatch(label):
        raise PolicyError(f"{where}: {_quote(text)} is not a valid {what} (letters, digits and '-', at most 63)")
    return label


def _tag(text: str, where: str) -> str:
    return "tag:" + _label(text[4:], where, "tag name")


def _network(text: str, where: str) -> Network | None:
    """The network an address or CIDR names; None if ``text`` is not address-shaped."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    elif not ("/" in text or ":" in text or re.fullmatch(r"[0-9.]+", text)):
        return None
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise PolicyError(f"{where}: {_quote(text)} is not an address or network") from None
    raise PolicyError(f"{where}: {_quote(text)} has host bits set (did you mean {loose}?)")


def _parse_hosts(value: Any) -> dict[str, Network]:
    hosts: dict[str, Network] = {}
    for name, address in _object(value, "hosts").items():
        where = f"hosts[{_quote(name)}]"
        if name.lower().startswith(("tag:", "group:")) or name == "*":
            raise PolicyError(f"{where}: a host name is a plain name, not a tag, group or *")
        label = _label(name, where, "host name")
        network = _network(_string(address, where), where)
        if network is None:
            raise PolicyError(f"{where}: {_quote(address)} is not an address or network")
        hosts[label] = network
    return hosts


def _parse_tag_owners(value: Any) -> frozenset[str]:
    tags = set()
    for name, owners in _object(value, "tagOwners").items():
        where = f"tagOwners[{_quote(name)}]"
        if not name.lower().startswith("tag:"):
            raise PolicyError(f"{where}: a tagOwners key is a tag such as \"tag:db\"")
        for i, owner in enumerate(_list(owners, where)):
            _string(owner, f"{where}[{i}]")  # owners are Tailscale's; kept for compatibility, unused here
        tags.add(_tag(name, where))
    return frozenset(tags)


def _parse_groups(value: Any, hosts: dict[str, Network]) -> dict[str, tuple[Principal, ...]]:
    groups: dict[str, tuple[Principal, ...]] = {}
    for name, members in _object(value, "groups").items():
        where = f"groups[{_quote(name)}]"
        if not name.lower().startswith("group:"):
            raise PolicyError(f"{where}: a group's name starts with \"group:\"")
        key = "group:" + _label(name[6:], where, "group name")
        parsed = []
        for i, member in enumerate(_list(members, where)):
            member_where = f"{where}[{i}]"
            text = _string(member, member_where)
            if text.lower().startswith("group:"):
                raise PolicyError(f"{member_where}: groups cannot contain groups (as in Tailscale); list {_quote(text)}'s members instead")
            if text.lower().startswith("tag:"):
                parsed.append(Principal(TAG, _tag(text, member_where), text=text, where=member_where))
            elif text == "*" or _network(text, member_where) is not None or text.lower() in hosts:
                raise PolicyError(f"{member_where}: a group holds node names and tags only, not {_quote(text)}; name hosts and addresses in the rule")
            else:
                parsed.append(Principal(NODE, _label(text, member_where, "node name"), text=text, where=member_where))
        groups[key] = tuple(parsed)
    return groups


class _Names:
    """What a principal's text can refer to within this policy."""

    def __init__(self, hosts: dict[str, Network], groups: dict[str, tuple[Principal, ...]]):
        self.hosts = hosts
        self.groups = groups

    def principal(self, text: str, where: str) -> Principal:
        if text == "*":
            return Principal(ANY, "", text=text, where=where)
        if text.lower().startswith("tag:"):
            return Principal(TAG, _tag(text, where), text=text, where=where)
        if text.lower().startswith("group:"):
            key = text.lower()
            if key not in self.groups:
                close = difflib.get_close_matches(key, list(self.groups), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise PolicyError(f"{where}: unknown group {_quote(text)}{hint}")
            return Principal(GROUP, key, text=text, where=where)
        network = _network(text, where)
        if network is not None:
            return Principal(NETWORK, "", network, text=text, where=where)
        name = _label(text, where, "node name, host, tag, group or address")
        if name in self.hosts:
            return Principal(NETWORK, "", self.hosts[name], text=text, where=where)
        return Principal(NODE, name, text=text, where=where)

    def destination(self, text: str, where: str) -> tuple[Principal, str]:
        """Split ``dst`` text at its last ':' into a principal and the ports text."""
        cut = text.rfind(":")
        target, ports = text[:cut], text[cut + 1:]
        if cut < 0 or target.lower() in ("tag", "group") or text.endswith("]"):
            raise PolicyError(f"{where}: {_quote(text)} needs ports after a ':' (such as {text}:22 or {text}:*)")
        if ":" in target and "/" not in target and not target.lower().startswith(("[", "tag:", "group:")):
            raise PolicyError(f"{where}: write an IPv6 address in brackets, such as [{target}]:{ports}")
        return self.principal(target, where), ports


def parse_ports(text: str, where: str) -> tuple[PortRange, ...]:
    """``*`` (every port: an empty tuple), or ports and ranges such as ``22,80,8000-8999``;
    sorted, overlaps merged."""
    if text == "*":
        return ()
    ranges = []
    for item in text.split(","):
        first_text, dash, last_text = item.partition("-")
        bounds = [first_text, last_text] if dash else [first_text]
        if not all(_PORT.fullmatch(b) for b in bounds):
            raise PolicyError(f"{where}: {_quote(item)} is not a port, a range such as 8000-8999, or *")
        numbers = [int(b) for b in bounds]
        for number in numbers:
            if number > 65535:
                raise PolicyError(f"{where}: port {number} is out of range (0-65535)")
        if numbers[0] > numbers[-1]:
            raise PolicyError(f"{where}: range {_quote(item)} runs backwards")
        ranges.append(PortRange(numbers[0], numbers[-1]))
    return merge_ports(ranges)


def merge_ports(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sorted, with overlapping and adjacent ranges joined."""
    merged: list[PortRange] = []
    for r in sorted(ranges):
        if merged and r.first <= merged[-1].last + 1:
            merged[-1] = PortRange(merged[-1].first, max(merged[-1].last, r.last))
        else:
            merged.append(r)
    return tuple(merged)


def _proto(body: dict[str, Any], where: str, default: str | None) -> str | None:
    if "proto" not in body:
        return default
    proto = body["proto"]
    if proto not in PROTOCOLS:
        raise PolicyError(f"{where}.proto: must be one of {', '.join(PROTOCOLS)} (or absent: any)")
    assert isinstance(proto, str)
    return proto


def _principals(value: Any, where: str, names: _Names) -> tuple[Principal, ...]:
    items = _list(value, where)
    if not items:
        raise PolicyError(f"{where}: must name at least one source")
    return tuple(names.principal(_string(item, f"{where}[{i}]"), f"{where}[{i}]") for i, item in enumerate(items))


def _parse_rule(index: int, raw: Any, names: _Names) -> Rule:
    where = f"acls[{index}]"
    body = _object(raw, where)
    _refuse_unknown_keys(body, RULE_KEYS, where)
    if body.get("action") != "accept":
        raise PolicyError(f'{where}.action: must be "accept" (what no rule accepts is denied)')
    for key in ("src", "dst"):
        if key not in body:
            raise PolicyError(f"{where}: {key} is missing")
    proto = _proto(body, where, None)
    sources = _principals(body["src"], f"{where}.src", names)
    raw_destinations = _list(body["dst"], f"{where}.dst")
    if not raw_destinations:
        raise PolicyError(f"{where}.dst: must name at least one destination")
    destinations = []
    for i, item in enumerate(raw_destinations):
        item_where = f"{where}.dst[{i}]"
        principal, ports_text = names.destination(_string(item, item_where), item_where)
        ports = parse_ports(ports_text, item_where)
        if proto == "icmp" and ports:
            raise PolicyError(f"{item_where}: icmp has no ports; write {principal.text}:*")
        destinations.append(Destination(principal, ports))
    text = json.dumps(body, separators=(", ", ": "))
    return Rule(index=index, sources=sources, destinations=tuple(destinations), proto=proto, text=text)


def _parse_test(index: int, raw: Any, names: _Names) -> PolicyTest:
    where = f"tests[{index}]"
    body = _object(raw, where)
    _refuse_unknown_keys(body, TEST_KEYS, where)
    if "src" not in body:
        raise PolicyError(f"{where}: src is missing")
    proto = _proto(body, where, "tcp")
    assert proto is not None
    source = _single(names.principal(_string(body["src"], f"{where}.src"), f"{where}.src"))
    if not ("accept" in body or "deny" in body):
        raise PolicyError(f"{where}: needs accept or deny (or both)")
    lists = {}
    for key in ("accept", "deny"):
        entries = []
        for i, item in enumerate(_list(body.get(key, []), f"{where}.{key}")):
            item_where = f"{where}.{key}[{i}]"
            principal, ports_text = names.destination(_string(item, item_where), item_where)
            ports = parse_ports(ports_text, item_where)
            if proto == "icmp":
                if ports:
                    raise PolicyError(f"{item_where}: icmp has no ports; write {principal.text}:*")
            elif len(ports) != 1 or ports[0].first != ports[0].last:
                raise PolicyError(f"{item_where}: a test names one port, such as {principal.text}:22")
            entries.append(Destination(_single(principal), ports))
        lists[key] = tuple(entries)
    return PolicyTest(index=index, source=source, proto=proto, accept=lists["accept"], deny=lists["deny"])


def _parse_auto_approvers(value: Any, names: _Names) -> AutoApprovers:
    """``{"routes": {CIDR: [approver, ...]}, "exitNode": [approver, ...]}``; an
    approver is a tag, a group or a node name (the nodes that may have such
    routes approved without the admin)."""
    body = _object(value, "autoApprovers")
    _refuse_unknown_keys(body, AUTO_APPROVER_KEYS, "autoApprovers")
    routes = []
    for prefix, approvers in _object(body.get("routes", {}), "autoApprovers.routes").items():
        where = f"autoApprovers.routes[{_quote(prefix)}]"
        network = _network(prefix, where) if "/" in prefix else None
        if network is None:
            raise PolicyError(f"{where}: {_quote(prefix)} is not a network such as 192.168.0.0/16")
        routes.append((network, _approvers(approvers, where, names)))
    exit_node = _approvers(body.get("exitNode", []), "autoApprovers.exitNode", names)
    return AutoApprovers(routes=tuple(routes), exit_node=exit_node)


def _approvers(value: Any, where: str, names: _Names) -> tuple[Principal, ...]:
    approvers = []
    for i, item in enumerate(_list(value, where)):
        item_where = f"{where}[{i}]"
        text = _string(item, item_where)
        principal = names.principal(text, item_where)
        if principal.kind not in (TAG, GROUP, NODE):
            raise PolicyError(f"{item_where}: an approver is a tag, a group or a node name, not {_quote(text)}")
        approvers.append(principal)
    return tuple(approvers)


def _single(principal: Principal) -> Principal:
    """Tests are about concrete endpoints: no ``*``, no groups, no networks wider than one address."""
    if principal.kind in (ANY, GROUP):
        raise PolicyError(f"{principal.where}: a test names a node, tag, host or address, not {_quote(principal.text)}")
    if principal.kind == NETWORK and principal.network is not None and principal.network.num_addresses != 1:
        raise PolicyError(f"{principal.where}: a test names one address, not the network {principal.network}")
    return principal
