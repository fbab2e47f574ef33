#!/usr/bin/env bash
# Set the machine up and run ferry: a local cluster (coordinator, REST gateway on
# 127.0.0.1:5000, three agents, each its own network-namespace host with root). Flags after the
# command go to `ferry up`, e.g. --nodes 5 or --http 0.0.0.0:5000. Ctrl-C stops it all.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/setup.sh"
exec "$here/target/release/ferry" up "$@"
