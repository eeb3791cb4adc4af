"""twistd dropins for wire: ``twistd wire-server`` and ``twistd wire-node``.

The service modules are imported lazily by ServiceMaker, so listing plugins
(``twistd --help``) stays cheap.
"""

from twisted.application.service import ServiceMaker

wire_server = ServiceMaker(
    "wire coordination server",
    "wire.server.tap",
    "wire coordination server: peer registry (HTTP), STUN (UDP), relay",
    "wire-server",
)

wire_node = ServiceMaker(
    "wire node daemon",
    "wire.node.tap",
    "wire node daemon: keeps this machine's WireGuard interface in step with the mesh",
    "wire-node",
)
