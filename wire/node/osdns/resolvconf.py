"""resolv.conf as text: read it into its parts, write wire's version of it.

Pure functions, no files: :mod:`.direct` does the reading and writing.
The parser follows glibc's reading of the file (resolv.conf(5)): a keyword
starts a line, ``#`` or ``;`` starts a comment, the last ``search`` or
``domain`` line wins, unknown or broken lines are skipped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# The first line of every file wire writes: how a later run (or a person)
# tells wire's content from anyone else's.
MANAGED_MARK = "# Managed by wire (the mesh VPN)"


@dataclass(frozen=True)
class ResolvConf:
    """What a resolv.conf says, as the C library would use it."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


def parse_resolv_conf(data: bytes) -> ResolvConf:
    """The nameservers, search domains and options of a resolv.conf.

    Never fails: undecodable bytes, unknown keywords and nameservers that are
    not IP addresses are skipped. Nameservers keep their order, without
    repeats; a scoped IPv6 address (``fe80::1%eth0``) is kept as written.
    """
    nameservers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for raw in data.decode("utf-8", "replace").splitlines():
        words = raw.split()
        if not words or words[0][0] in "#;":
            continue
        keyword, arguments = words[0], _uncommented(words[1:])
        if keyword == "nameserver" and arguments:
            address = _address(arguments[0])
            if address and address not in nameservers:
                nameservers.append(address)
        elif keyword in ("search", "domain"):
            # The last of them wins, as in glibc; `domain` names one.
            search = _unique(arguments if keyword == "search" else arguments[:1])
        elif keyword == "options":
            options.extend(option for option in arguments if option not in options)
    return ResolvConf(tuple(nameservers), tuple(search), tuple(options))


def managed_resolv_conf(nameserver: str, search: tuple[str, ...], options: tuple[str, ...], saved_at: str) -> bytes:
    """The file wire puts in place: the mesh resolver alone, which forwards
    what is not the mesh's to the nameservers the file had before."""
    lines = [
        MANAGED_MARK + " while it is up; do not edit.",
        "# The mesh resolver below answers the mesh's names and forwards every other",
        "# query to the nameservers this file held before. `wire down` (or the next",
        f"# `wire up` after a crash) puts the original back; it is saved in {saved_at}.",
        f"nameserver {nameserver}",
    ]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return ("\n".join(lines) + "\n").encode()


def is_managed(data: bytes) -> bool:
    """Whether this content is wire's own (a file wire wrote and did not restore)."""
    return data.startswith(MANAGED_MARK.encode())


def _uncommented(words: list[str]) -> list[str]:
    kept = []
    for word in words:
        if word[0] in "#;":
            break
        kept.append(word)
    return kept


def _address(text: str) -> str | None:
    bare, _, _scope = text.partition("%")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return None
    return text


def _unique(words: list[str]) -> list[str]:
    seen: list[str] = []
    for word in words:
        if word not in seen:
            seen.append(word)
    return seen
