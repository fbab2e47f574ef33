#!/usr/bin/env bash
# Copies the binaries the lab VMs run into vagrant/bin/: ferry and ferry-init (release build of
# this checkout) and the CRIU >= 4.2 that scripts/setup.sh installed. The VMs run Debian 12 like
# the host, so the binaries work there unchanged.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/setup.sh"
mkdir -p "$here/vagrant/bin"
cp "$here/target/release/ferry" "$here/target/release/ferry-init" "$here/vagrant/bin/"
cp "$(command -v criu || echo /usr/local/sbin/criu)" "$here/vagrant/bin/criu"
ls -la "$here/vagrant/bin"
