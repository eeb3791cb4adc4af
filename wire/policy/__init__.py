"""The access policy: a HuJSON document in Tailscale's ACL shape, and what it
means for the mesh.

- :func:`parse_policy` reads the text (syntax, structure, self-consistency);
- :func:`check_against` checks it against the known nodes and runs its tests;
- :class:`PolicyIndex` answers the server's per-node questions fast
  (peers, packet filters) and ``explain`` answers an admin's.

Pure: no I/O, no Twisted. Every refusal is a :class:`PolicyError`.

The language (Tailscale's ACL shape; HuJSON: ``//`` and ``/* */`` comments
and trailing commas allowed; every key below is known, any other is an error)::

    {
      "groups":    {"group:ops": ["alice-laptop", "tag:ci"]},   // node names and tags; no nesting
      "hosts":     {"nas": "10.99.0.50", "lab": "10.99.8.0/24"}, // names for addresses and networks
      "tagOwners": {"tag:db": []},                               // declares tags (owners unused)
      "acls": [
        {"action": "accept", "src": ["group:ops"], "proto": "tcp",
         "dst": ["tag:db:5432", "nas:80,443", "10.99.0.0/16:8000-8999", "[fd7a::1]:22", "*:*"]},
      ],
      "tests": [{"src": "web1", "accept": ["db1:5432"], "deny": ["db1:22"]}],  // proto: tcp unless given
      "autoApprovers": {                                          // routes approved without the admin
        "routes": {"192.168.0.0/16": ["tag:router", "group:ops", "nas1"]},   // any route inside it
        "exitNode": ["tag:exit"],                                 // 0.0.0.0/0 and ::/0
      },
    }

- A principal is ``*``, a node name, ``tag:x``, ``group:x``, a host name, an
  address or a CIDR (host bits must be clear). Names and tags are DNS labels,
  matched in lower case. A host name shadows a node of the same name.
- A ``dst`` is split at its *last* ':' into principal and ports; a bare IPv6
  address takes brackets (``[fd7a::1]:22``), an IPv6 CIDR does not
  (``fd7a::/48:22``).
- Ports: ``*``, ``22``, ``80,443``, ``8000-8999`` or a mix. ``proto`` is
  ``tcp``, ``udp``, ``icmp`` or absent: then ports mean tcp and udp, and
  ``*`` means every protocol. With ``icmp`` the ports must be ``*``.
- Only ``accept`` exists: once a policy is set, what no rule accepts is
  denied. No policy (``PolicyIndex(None, ...)``) lets everything reach everything.
- A tag must be declared in tagOwners, carried by a node, or passed to
  :func:`check_against` as ``known_tags`` (the tags join keys hand out).
"""

from wire.policy.approvers import auto_approved
from wire.policy.check import check_against
from wire.policy.directory import DirectoryNode, Endpoint
from wire.policy.errors import PolicyError
from wire.policy.evaluate import Decision
from wire.policy.index import PolicyIndex
from wire.policy.model import Destination, Policy, PolicyTest, Principal, Rule
from wire.policy.parse import parse_policy, parse_ports

__all__ = [
    "auto_approved",
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
