"""The machine's resolver, wired to the mesh resolver (MagicDNS, issue 16).

The node daemon serves DNS for the mesh domain on its VPN address; this
package makes the OS send it the mesh's names, on Linux, in one of three
modes chosen by :func:`choose`:

- ``systemd-resolved`` (:mod:`.resolved`): per-link DNS and domain on the
  wire interface through resolvectl;
- ``resolv.conf`` (:mod:`.direct`): /etc/resolv.conf rewritten in place, its
  original saved first (:mod:`.savefile`) and put back (:mod:`.restore`);
- ``none`` (:mod:`.none`): `--accept-dns=false`, nothing changes.

Every mode also tells the mesh resolver its upstreams: the machine's own
nameservers, from before wire (:func:`parse_resolv_conf`).
"""

from .choose import choose, detect, recover_after_crash
from .direct import ResolvConfDns
from .errors import OsDnsError
from .interface import DEFAULT_DOMAIN, IOsDns, OsDnsPaths
from .none import NoOsDns
from .resolvconf import ResolvConf, parse_resolv_conf
from .resolved import ResolvedDns

__all__ = [
    "DEFAULT_DOMAIN",
    "IOsDns",
    "NoOsDns",
    "OsDnsError",
    "OsDnsPaths",
    "ResolvConf",
    "ResolvConfDns",
    "ResolvedDns",
    "choose",
    "detect",
    "parse_resolv_conf",
    "recover_after_crash",
]
