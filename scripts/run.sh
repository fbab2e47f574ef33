#!/usr/bin/env bash
# Set the machine up and run ferry: a local cluster (coordinator, REST gateway on
# 127.0.0.1:5000, three agents, each its own network-namespace host with root). Flags after the
# command go to `ferry up`, e.g. --nodes 5 or --http 0.0.0.0:5000. Ctrl-C stops it all.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/setup.sh"
# setup.sh installs ferry into /usr/local/bin (FERRY_BIN_DIR); without the build step, the
# checkout's own release build.
ferry=${FERRY_BIN_DIR:-/usr/local/bin}/ferry
[ "${FERRY_SETUP_SKIP_BUILD:-0}" != 1 ] || ferry=$here/target/release/ferry
exec "$ferry" up "$@"
