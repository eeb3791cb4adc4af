"""The node's state as the daemon keeps it and status views read it: its
phase in life (:class:`Phase`, with the interface and why it was refused or
removed) and what it knows of its coordination server."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Phase(Enum):
    STARTING = "starting"
    PROBING = "probing"
    ENROLLING = "enrolling"
    REGISTERING = "registering"
    REGISTERED = "registered"
    REFUSED = "refused"
    REMOVED = "removed"
    STOPPING = "stopping"


@dataclass
class NodeState:
    """Where the node is in its life; ``reason`` says why it was refused or removed."""

    phase: Phase = Phase.STARTING
    interface_up: bool = False
    reason: str = ""


@dataclass
class ServerContact:
    """What the daemon knows of its coordination server, for status views."""

    reachable: bool = False
    last_error: str = ""
    last_status: int = 0  # the HTTP status of the last refusal (401, 409...)
    last_contact: float = 0.0
    registered: bool = False  # the server took a registration in this run
    public_ip: str = ""
