"""Network interface names: the one check, for the config and the driver.

Linux keeps a name in IFNAMSIZ (16) bytes with the NUL, and wg-quick allows
only ASCII letters, digits and ``_=+.-``; a name like ``wiré0`` fits neither
every tool nor every filesystem path built from it (the UAPI socket).
"""

from __future__ import annotations

import re
from typing import Any

from wire.protocol import ProtocolError

# wg-quick's rule; IFNAMSIZ leaves 15 characters. \Z, not $: no trailing newline.
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_=+.-]{1,15}\Z")


def parse_interface_name(value: Any, field: str = "interface") -> str:
    if not isinstance(value, str) or not _INTERFACE_NAME.match(value) or value in (".", ".."):
        shown = repr(value)
        shown = shown if len(shown) <= 50 else shown[:47] + "..."
        raise ProtocolError(field, f"{shown} is not an interface name (1-15 of A-Z a-z 0-9 _ = + . -)")
    return value
