#!/usr/bin/env bash
# Runs wire's whole test suite (unit, real-process and network-namespace lab
# tests). Run as root on Debian/Ubuntu: sudo bash scripts/test.sh
set -euo pipefail
WIRE_SETUP_BROWSER=1 source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$WIRE_TOP"

# The installed wheel must expose both twistd plugins (run outside the
# checkout so the source tree's dropin cannot stand in for the wheel's).
plugins=$(cd / && "$WIRE_VENV/bin/twistd" --help)
for name in wire-server wire-node; do
    if ! grep -q "^ *$name " <<<"$plugins"; then
        echo "twistd --help does not list $name" >&2
        exit 1
    fi
done

exec "$WIRE_VENV/bin/python" scripts/run_tests.py "${@:-tests}"
