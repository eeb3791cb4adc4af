"""The protocol's vocabulary, in one place: every message the server and the
node exchange, as a typed object that is validated once, at the boundary.

- ``errors``: :class:`ProtocolError`, and the one error-answer shape (``{"error": ...}``);
- ``enums``: NAT type, path mode, registration outcome, heartbeat (str-valued enums);
- ``fields``: validators for single fields (ids, names, keys, ports, addresses) and bodies;
- ``cursor``: the netmap cursor ``EPOCH:SERIAL``;
- ``registration``: ``POST /register`` and ``/enroll``, and their answer;
- ``peers``: a peer view, and the long-poll's netmap answer;
- ``relay``: ``POST /relay`` and the relay grant;
- ``punch``: ``POST /punch``;
- ``paths``: a pair's path (the rule, the server's word, ``POST /path``).

Everything is importable from ``wire.protocol`` itself.
"""

from wire.protocol.cursor import Cursor, parse_cursor, parse_cursor_text
from wire.protocol.enums import Heartbeat, NatType, PathMode, RegisterOutcome
from wire.protocol.errors import BodyTooLarge, ProtocolError, error_body, error_message
from wire.protocol.fields import (
    MAX_BODY_BYTES,
    NAT_TYPES,
    WG_KEY_BYTES,
    parse_ip_address,
    parse_json_object,
    parse_nat_type,
    parse_node_id,
    parse_node_name,
    parse_port,
    parse_wg_public_key,
)
from wire.protocol.peers import (
    NetmapAnswer,
    PeerView,
    asking_to_register,
    nat_type_of,
    netmap_answer_json,
    peer_view_json,
    with_paths,
)
from wire.protocol.paths import (
    PairPath,
    PathFailure,
    PathReport,
    PathReportAnswer,
    pair_rule,
    retry_delay,
)
from wire.protocol.punch import PunchAnswer, PunchRequest, parse_punch
from wire.protocol.registration import (
    LeaveRequest,
    RegisterAnswer,
    Registration,
    parse_enrollment,
    parse_registration,
)
from wire.protocol.relay import RelayEndpoint, RelayGrant, RelayRequest

__all__ = [
    "MAX_BODY_BYTES",
    "NAT_TYPES",
    "WG_KEY_BYTES",
    "BodyTooLarge",
    "Cursor",
    "Heartbeat",
    "LeaveRequest",
    "NatType",
    "NetmapAnswer",
    "PairPath",
    "PathFailure",
    "PathReport",
    "PathReportAnswer",
    "PathMode",
    "PeerView",
    "ProtocolError",
    "PunchAnswer",
    "PunchRequest",
    "RegisterAnswer",
    "RegisterOutcome",
    "Registration",
    "RelayEndpoint",
    "RelayGrant",
    "RelayRequest",
    "asking_to_register",
    "error_body",
    "error_message",
    "nat_type_of",
    "netmap_answer_json",
    "pair_rule",
    "retry_delay",
    "parse_cursor",
    "parse_cursor_text",
    "parse_enrollment",
    "parse_ip_address",
    "parse_json_object",
    "parse_nat_type",
    "parse_node_id",
    "parse_node_name",
    "parse_port",
    "parse_punch",
    "parse_registration",
    "parse_wg_public_key",
    "peer_view_json",
    "with_paths",
]
