#!/usr/bin/env bash
# Prepares this checkout to run wire on a fresh Debian/Ubuntu machine:
# system packages (only those missing), a virtual environment in .venv and
# wire installed into it. Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

WIRE_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WIRE_VENV="$WIRE_TOP/.venv"

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v wg >/dev/null || need_apt+=(wireguard-tools)
command -v wireguard-go >/dev/null || need_apt+=(wireguard-go)
command -v nft >/dev/null || need_apt+=(nftables)
command -v conntrack >/dev/null || need_apt+=(conntrack)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v ping >/dev/null || need_apt+=(iputils-ping)
command -v iperf3 >/dev/null || need_apt+=(iperf3)
# The throw-away PostgreSQL clusters of the store tests (tests/pgcluster.py).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# The dashboard's browser tests (tests/browser.py): scripts/test.sh asks for them.
if [ "${WIRE_SETUP_BROWSER:-}" = 1 ]; then
    command -v chromium >/dev/null || need_apt+=(chromium)
    command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing ${need_apt[*]}; run as root to install them" >&2
        exit 1
    fi
    echo "setup: installing ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$WIRE_VENV/bin/python" ]; then
    python3 -m venv "$WIRE_VENV"
fi
# A plain (non-editable) install proves the wheel carries the twistd dropin.
"$WIRE_VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
"$WIRE_VENV/bin/pip" install -q --disable-pip-version-check "$WIRE_TOP[test]"
export PATH="$WIRE_VENV/bin:$PATH"
