#!/usr/bin/env bash
# Runs wire's main job on this one host: a coordination server and five
# nodes (two public, two behind easy NAT routers, one behind a hard one) in
# network namespaces, with real WireGuard tunnels; prints the mesh status and
# an all-pairs ping matrix, then removes everything. Run as root on
# Debian/Ubuntu: sudo bash scripts/demo.sh (pass --keep to leave the mesh
# running; wire demo --clean PREFIX removes it).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$WIRE_VENV/bin/wire" demo "$@"
