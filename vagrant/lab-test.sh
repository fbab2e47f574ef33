#!/usr/bin/env bash
# Migrates a workload between two agent VMs through the REST API and verifies its state: a
# counter that keeps a journal in its working directory continues where it was on the target,
# and (when the VMs are reachable with `vagrant ssh`) its journal on the target's disk holds
# exactly 1..n. Then it migrates it back, and once more by post-copy (the memory follows through
# the agents' page tunnel). Prints each migration's figures. With the lab's certificates
# (vagrant/bin/tls) it first checks that the agents registered over TLS and that an
# agent and the coordinator refuse plain TCP and TLS without a client certificate.
#
#   FERRY_LAB_NET  first three octets of the lab network (default 192.168.56, as the Vagrantfile)
#   FERRY_API      the REST API (default http://$FERRY_LAB_NET.10:5000, the coordinator VM)
#   FERRY_BIN      the ferry CLI (default vagrant/bin/ferry, the build the VMs run)
set -euo pipefail
net=${FERRY_LAB_NET:-192.168.56}
export FERRY_API=${FERRY_API:-http://$net.10:5000}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ferry=${FERRY_BIN:-$here/vagrant/bin/ferry}
[ -x "$ferry" ] || ferry=$here/target/release/ferry
# The operator token prepare.sh made, when the REST API needs one (the CLI reads FERRY_TOKEN).
if [ -z "${FERRY_TOKEN:-}" ] && [ -s "$here/vagrant/bin/api-tokens" ]; then
  FERRY_TOKEN=$(sed -n 's/^operator://p' "$here/vagrant/bin/api-tokens" | head -n1)
  export FERRY_TOKEN
fi
step() { printf '[lab] %s (%ss)\n' "$*" "$SECONDS"; }
# Every line of a process's output, paged through the REST API (`ferry logs` shows one page).
alllogs() {
  python3 - "$FERRY_API" "$1" <<'PY'
import json, os, sys, urllib.request
api, pid, at = sys.argv[1], sys.argv[2], 0
token = os.environ.get("FERRY_TOKEN")
headers = {"Authorization": f"Bearer {token}"} if token else {}
while True:
    req = urllib.request.Request(f"{api}/api/processes/{pid}/logs?from={at}&limit=10000", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        page = json.load(r)
    for line in page["lines"]:
        print(line["text"])
    if not page["lines"] or page["next"] == at:
        break
    at = page["next"]
PY
}
counts() { alllogs "$1" | grep -c '^count ' || true; }

step "waiting for two agents at $FERRY_API"
online=0
for _ in $(seq 120); do
  online=$("$ferry" nodes --json 2>/dev/null | grep -o '"status":"online"' | wc -l || true)
  [ "$online" -ge 2 ] && break
  sleep 1
done
[ "$online" -ge 2 ] || { echo "[lab] only $online agents online" >&2; "$ferry" nodes || true; exit 1; }
"$ferry" nodes

# Mutual TLS, when prepare.sh issued certificates: the agents registered with https addresses, and
# an agent's and the coordinator's gRPC ports refuse plain TCP and TLS without a client
# certificate, and speak HTTP/2 over TLS with one from the lab CA.
tls=$here/vagrant/bin/tls/coordinator
if [ -s "$tls/ca.pem" ]; then
  api_host=${FERRY_API#*://}; api_host=${api_host%%[:/]*}
  python3 - "$tls" "$("$ferry" nodes --json)" "$api_host" <<'PY'
import json, socket, ssl, sys
tls = sys.argv[1]
nodes = json.loads(sys.argv[2])
plain = [n["address"] for n in nodes if not n["address"].startswith("https://")]
assert not plain, f"registered without TLS: {plain}"
# An agent's gRPC port and the coordinator's (the REST API's host, port 50050).
agent = nodes[0]["address"][len("https://"):].rsplit(":", 1)
coordinator = (sys.argv[3], "50050")
preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what a gRPC client sends first
def tls_call(host, port, cert):
    ctx = ssl.create_default_context(cafile=f"{tls}/ca.pem")
    ctx.set_alpn_protocols(["h2"])
    if cert:
        ctx.load_cert_chain(f"{tls}/coordinator.pem", f"{tls}/coordinator-key.pem")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="ferry") as s:
            s.sendall(preface)
            return s.recv(64)
for name, (host, port) in ((nodes[0]["name"], agent), ("coordinator", coordinator)):
    where = f"{name} {host}:{port}"
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(preface)
        alert = s.recv(64)
    assert alert[:1] == b"\x15", f"{where} answered plain HTTP/2 with {alert!r}"
    try:
        tls_call(host, port, cert=False)
        raise AssertionError(f"{where} served TLS without a client certificate")
    except ssl.SSLError as e:
        assert "CERTIFICATE_REQUIRED" in str(e), e
        refused = e.reason
    answer = tls_call(host, port, cert=True)
    assert answer[3:4] == b"\x04", f"no HTTP/2 SETTINGS from {where}: {answer!r}"
    print(f"[lab] {where}: plain HTTP/2 -> TLS alert record {alert.hex()}; TLS without a client "
          f"certificate -> {refused}; with the lab CA's certificate -> HTTP/2 SETTINGS")
PY
fi

id=$("$ferry" run --node agent1 --name journal --json -- python3 /opt/ferry/workloads/appender.py |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
step "started $id on agent1"
for _ in $(seq 60); do [ "$(counts "$id")" -ge 20 ] && break; sleep 1; done

# migrate ID TARGET: moves the workload and checks that the count went on without a restart or a
# gap, and that the journal the process keeps open on the target's disk holds exactly 1..n.
migrate() {
  local id=$1 to=$2 mode=${3:-stop-and-copy} before
  before=$(counts "$id")
  step "$before counts so far; migrating $id to $to ($mode)"
  "$ferry" migrate "$id" --to "$to" --mode "$mode"
  "$ferry" ps
  sleep 3
  alllogs "$id" | grep '^count ' | awk '{print $2}' | python3 -c '
import sys
nums = [int(x) for x in sys.stdin.read().split()]
before, to = int(sys.argv[1]), sys.argv[2]
assert len(nums) > before, f"no new counts after the migration: {nums}"
assert nums[0] == 1 and all(b == a + 1 for a, b in zip(nums, nums[1:])), f"the count restarted or skipped: {nums}"
print(f"[lab] counts continue on {to}: {nums[0]}..{nums[-1]} ({len(nums)} lines, {before} before the move)")
' "$before" "$to"
  if command -v vagrant >/dev/null && [ -d "$here/vagrant/.vagrant" ]; then
    local pid
    pid=$("$ferry" ps --json | python3 -c '
import json, sys
print(next(p["pid"] for p in json.load(sys.stdin) if p["id"] == sys.argv[1]))' "$id")
    # SIGUSR1 makes the appender re-read its journal from disk and print "journal ok n=N".
    local seen verdict=""
    seen=$(alllogs "$id" | grep -c '^journal ' || true)
    (cd "$here/vagrant" && vagrant ssh "$to" -c "sudo kill -USR1 $pid" >/dev/null 2>&1)
    for _ in $(seq 30); do
      [ "$(alllogs "$id" | grep -c '^journal ' || true)" -gt "$seen" ] && break
      sleep 1
    done
    verdict=$(alllogs "$id" | grep '^journal ' | tail -n1)
    echo "[lab] $to: $verdict (host pid $pid)"
    case $verdict in "journal ok"*) ;; *) echo "[lab] the journal on $to is wrong" >&2; exit 1 ;; esac
  fi
}

migrate "$id" agent2
migrate "$id" agent1
# Post-copy: the memory follows through the agents' page tunnel (no page server port).
migrate "$id" agent2 post-copy
"$ferry" stop "$id"
step "lab migration verified"
