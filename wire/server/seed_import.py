"""``--import-seed-state FILE``: adopt the nodes of a seed server's state.json.

The seed stored ``{node_id: {node_name, wg_public_key, vpn_ip, public_ip,
lan_ip, port, nat_port, registered, last_seen}}``. Each entry is validated
like a registration; entries that fail are skipped and reported, never
half-imported. Nodes the registry already has are left alone, so running
the import twice changes nothing. A node keeps its seed address when that
address is valid and free here; otherwise it gets a fresh one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from wire.protocol import ProtocolError, parse_ip_address, parse_registration
from wire.server.model import NodeRecord
from wire.server.registry import Registry


class SeedStateError(Exception):
    """The file as a whole cannot be imported."""


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    readdressed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "node_id: why"


def read_seed_state(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except OSError as e:
        raise SeedStateError(f"cannot read seed state {path}: {e.strerror}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SeedStateError(f"seed state {path} is not valid JSON: {e}")
    if not isinstance(data, dict):
        raise SeedStateError(f"seed state {path} must be a JSON object of node_id -> node")
    return data


def import_seed_state(path: str, registry: Registry, now: float) -> ImportReport:
    report = ImportReport()
    for key, entry in read_seed_state(path).items():
        try:
            record = _record_from_seed(key, entry, now)
        except ProtocolError as e:
            report.skipped.append(f"{str(key)[:40]}: {e}")
            continue
        if registry.get(record.node_id) is not None:
            report.already_present.append(record.node_id)
            continue
        holder = registry.get_by_key(record.wg_public_key)
        if holder is not None:
            report.skipped.append(f"{record.node_id}: its wg_public_key already belongs to {holder.node_name}")
            continue
        address = registry.pool.allocate(record.node_id, registry.addresses_in_use(), record.vpn_ip or None)
        if address != record.vpn_ip:
            report.readdressed.append(f"{record.node_id}: {record.vpn_ip or '-'} -> {address}")
            record.vpn_ip = address
        registry.add_imported(record)
        report.imported.append(record.node_id)
    return report


def _record_from_seed(key: object, entry: object, now: float) -> NodeRecord:
    if not isinstance(entry, dict):
        raise ProtocolError(None, "entry is not a JSON object")
    body = dict(entry)
    body.setdefault("node_id", key)
    if body["node_id"] != key:
        raise ProtocolError("node_id", "differs from the key it is stored under")
    registration = parse_registration(body)
    public_ip = body.get("public_ip") or ""
    if public_ip:
        public_ip = parse_ip_address(public_ip, "public_ip")
    vpn_ip = body.get("vpn_ip") or ""
    if vpn_ip:
        vpn_ip = parse_ip_address(vpn_ip, "vpn_ip")
    return NodeRecord.from_registration(
        registration,
        vpn_ip=vpn_ip,
        public_ip=public_ip,
        registered=_time(body.get("registered"), now),
        last_seen=_time(body.get("last_seen"), now),
    )


def _time(value: object, now: float) -> float:
    """A seed timestamp; a missing or impossible one counts as "now", which
    gives the node the usual grace period to come back."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= now:
        return now
    return float(value)
