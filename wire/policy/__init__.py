"""The access policy: a HuJSON document in Tailscale's ACL shape, and what it
means for the mesh.

- :func:`parse_policy` reads the text (syntax, structure, self-consistency);
- :func:`check_against` checks it against the known nodes and runs its tests;
- :class:`PolicyIndex` answers the server's per-node questions fast
  (peers, packet filters) and ``explain`` answers an admin's.

Pure: no I/O, no Twisted. Every refusal is a :class:`PolicyError`.
"""

from wire.policy.check import check_against
from wire.policy.directory import DirectoryNode, Endpoint
from wire.policy.errors import PolicyError
from wire.policy.evaluate import Decision
from wire.policy.index import PolicyIndex
from wire.policy.model import Destination, Policy, PolicyTest, Principal, Rule
from wire.policy.parse import parse_policy, parse_ports

__all__ = [
    "Decision",
    "Destination",
    "DirectoryNode",
    "Endpoint",
    "Policy",
    "PolicyError",
    "PolicyIndex",
    "PolicyTest",
    "Principal",
    "Rule",
    "check_against",
    "parse_policy",
    "parse_ports",
]
