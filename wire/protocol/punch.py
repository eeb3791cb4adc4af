"""``POST /punch``: the request (two VPN addresses) and the answer (attempts, use_relay, the relay grant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire.protocol.fields import parse_ip_address, required
from wire.protocol.relay import RelayGrant


@dataclass(frozen=True)
class PunchRequest:
    from_vpn_ip: str
    to_vpn_ip: str

    def to_json(self) -> dict[str, Any]:
        return {"from_vpn_ip": self.from_vpn_ip, "to_vpn_ip": self.to_vpn_ip}


def parse_punch(body: dict[str, Any]) -> PunchRequest:
    from_value = required(body, "from_vpn_ip")
    to_value = required(body, "to_vpn_ip")
    return PunchRequest(
        from_vpn_ip=parse_ip_address(from_value, "from_vpn_ip"),
        to_vpn_ip=parse_ip_address(to_value, "to_vpn_ip"),
    )


@dataclass(frozen=True)
class PunchAnswer:
    attempts: int
    use_relay: bool
    relay: RelayGrant | None = None  # the caller's side of the session, with use_relay

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"ok": True, "use_relay": self.use_relay, "attempts": self.attempts}
        if self.relay is not None:
            answer["relay"] = self.relay.to_json()
        return answer
