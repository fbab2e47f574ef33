#!/usr/bin/env bash
# Set the machine up and run ferry. Today that is one node agent on 127.0.0.1:50051 with its data
# in /var/lib/ferry/agent; the coordinator, gateway and dashboard join here as they land.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/setup.sh"
exec "$here/target/release/ferry" agent "$@"
