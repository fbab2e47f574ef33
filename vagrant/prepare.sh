#!/usr/bin/env bash
# Copies the binaries the lab VMs run into vagrant/bin/: ferry and ferry-init (release build of
# this checkout) and the CRIU >= 4.2 that scripts/setup.sh installed. The VMs run Debian 12 like
# the host, so the binaries work there unchanged. Needs root (scripts/setup.sh does).
#
#   FERRY_SETUP_SKIP_BUILD=1   use the release binaries already in target/release (no cargo build)
#   FERRY_PREPARE_SKIP_SETUP=1 do not run scripts/setup.sh at all (only copy)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "${FERRY_PREPARE_SKIP_SETUP:-0}" != 1 ]; then
  "$here/scripts/setup.sh"
fi
for b in ferry ferry-init; do
  [ -x "$here/target/release/$b" ] || {
    echo "target/release/$b is missing: build it (cargo build --release) or drop FERRY_SETUP_SKIP_BUILD" >&2
    exit 1
  }
done
criu=$(command -v criu || true)
criu=${criu:-/usr/local/sbin/criu}
[ -x "$criu" ] || { echo "no criu on this machine: run scripts/setup.sh" >&2; exit 1; }
mkdir -p "$here/vagrant/bin"
# Copy to a temporary name and rename, so a copy never holds half of a binary being rebuilt.
for src in "$here/target/release/ferry" "$here/target/release/ferry-init" "$criu"; do
  dst=$here/vagrant/bin/$(basename "$src")
  cp "$src" "$dst.tmp" && mv -f "$dst.tmp" "$dst"
done
# A ferry whose REST API needs bearer tokens (`coordinator --tokens`) gets a token file for the
# lab: provisioning installs it on the coordinator, lab-test.sh takes its operator token. It stays
# in vagrant/bin/ (git-ignored) and is kept across runs.
tokens=$here/vagrant/bin/api-tokens
if "$here/vagrant/bin/ferry" coordinator --help 2>/dev/null | grep -q -- '--tokens'; then
  if [ ! -s "$tokens" ]; then
    (umask 077
      printf 'operator:%s\nread-only:%s\n' "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" \
        "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" >"$tokens")
  fi
else
  rm -f "$tokens"
fi
# Mutual TLS between the VMs: the lab's CA stays on the host (vagrant/ca/, git-ignored, kept
# across runs); vagrant/bin/tls/NAME/ holds what VM NAME gets, the CA certificate and its own
# certificate and key (the Vagrantfile uploads only that VM's directory).
if "$here/vagrant/bin/ferry" --help 2>/dev/null | grep -q '^  certs'; then
  ca=$here/vagrant/ca
  net=${FERRY_LAB_NET:-192.168.56}
  names=(coordinator)
  for i in $(seq 1 "${FERRY_LAB_AGENTS:-2}"); do names+=("agent$i"); done
  # Certificates from a CA that is gone would be refused: issue them anew with the new CA.
  if [ ! -s "$ca/ca.pem" ] || [ ! -s "$ca/ca-key.pem" ]; then rm -f "$ca"/*.pem; fi
  rm -rf "$here/vagrant/bin/tls"
  for i in "${!names[@]}"; do
    n=${names[$i]}
    [ -s "$ca/$n.pem" ] || "$here/vagrant/bin/ferry" certs --dir "$ca" --name "$n" --ip "$net.$((10 + i))" >/dev/null
    (umask 077; mkdir -p "$here/vagrant/bin/tls/$n")
    cp "$ca/ca.pem" "$ca/$n.pem" "$ca/$n-key.pem" "$here/vagrant/bin/tls/$n/"
    # The cluster key that seals checkpoints (ferry certs writes it with the CA), for agents.
    [ ! -s "$ca/cluster.key" ] || cp "$ca/cluster.key" "$here/vagrant/bin/tls/$n/"
    chmod 0600 "$here/vagrant/bin/tls/$n/$n-key.pem"
  done
fi
# Run with sudo, vagrant/bin belongs to the user who runs vagrant and lab-test.sh.
if [ -n "${SUDO_UID:-}" ] && [ -n "${SUDO_GID:-}" ]; then
  chown -R "$SUDO_UID:$SUDO_GID" "$here/vagrant/bin"
fi
ls -la "$here/vagrant/bin"
"$here/vagrant/bin/ferry" --version
"$here/vagrant/bin/criu" --version | sed -n 1p  # not head: criu would die of SIGPIPE (pipefail)
