#!/usr/bin/env bash
# Migrates a workload between two agent VMs through the REST API and verifies its state: a
# counter that keeps a journal in its working directory continues where it was on the target,
# and (when the VMs are reachable with `vagrant ssh`) its journal on the target's disk holds
# exactly 1..n. Then it migrates it back, and once more by post-copy (the memory follows through
# the agents' page tunnel). Prints each migration's figures. With the lab's certificates
# (vagrant/bin/tls) it first checks that the agents registered over TLS and that an
# agent and the coordinator refuse plain TCP and TLS without a client certificate. Last, a
# workload with its own address (an echo server, tests/workloads/echoserver.py) keeps one TCP
# connection from this host through a stop-and-copy move and a post-copy move back: needs the
# host on the lab network (it is, at $FERRY_LAB_NET.1) and root (or sudo -n) for tcpdump.
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
# Every line of a process's output, paged through the REST API (as `ferry logs -n +1 ID` prints it).
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

# A workload's own address (docs/network.md): an echo server with an address from the
# coordinator's workload range on agent1, and ONE TCP connection to it from this host (on-link to
# the lab network) that sends a numbered line every 20 ms and checks each echo, while the server
# moves agent1 -> agent2 (stop-and-copy) and back (post-copy). The connection must go on with no
# error, no gap and no reconnect, and no RST to or from the address may cross the lab's bridge.
tmp=$(mktemp -d)
client="" dumps=() sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
cleanup_net() {
  if [ -n "$client" ]; then kill "$client" 2>/dev/null || true; fi
  for p in "${dumps[@]}"; do $sudo kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup_net EXIT
port=7000
eid=$("$ferry" run --node agent1 --name echo --network own --json -- \
  python3 /opt/ferry/workloads/echoserver.py "$port" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
addr=""
for _ in $(seq 60); do
  addr=$("$ferry" ps --json | python3 -c '
import json, sys
p = next(p for p in json.load(sys.stdin) if p["id"] == sys.argv[1])
print(p.get("address") or "" if p["status"] == "running" else "")' "$eid")
  [ -n "$addr" ] && alllogs "$eid" | grep -q "^listening $port" && break
  sleep 1
done
[ -n "$addr" ] || { echo "[lab] $eid has no address of its own" >&2; "$ferry" ps; exit 1; }
step "started $eid on agent1 with its own address $addr"
# The lab's link on this host (a libvirt network's bridge) holds $net.1; the address must be
# on-link there, so this host ARPs for it and the node that runs it answers.
lan=$(ip -o -4 addr show | awk -v a="$net.1/" 'index($4, a) == 1 {print $2; exit}')
[ -n "$lan" ] || { echo "[lab] no link of this host holds $net.1" >&2; exit 1; }
route=$(ip route get "$addr")
case "$route" in *" dev $lan "*) ;; *) echo "[lab] $addr is not routed on the lab's link $lan: $route" >&2; exit 1 ;; esac
echo "[lab] ip route get $addr: $(echo "$route" | head -n1 | tr -s ' ')"
# tcpdump on the bridge and on each of its ports (frames between two VMs do not pass the
# bridge's own device): every TCP segment to or from the address, kept to count the RSTs.
links=("$lan")
[ -d "/sys/class/net/$lan/brif" ] && for l in /sys/class/net/"$lan"/brif/*; do links+=("$(basename "$l")"); done
for l in "${links[@]}"; do
  $sudo tcpdump -i "$l" -n -s 128 -U -w "$tmp/$l.pcap" "tcp and host $addr" 2>"$tmp/$l.err" &
  dumps+=($!)
done
sleep 2
for l in "${links[@]}"; do grep -q 'listening on' "$tmp/$l.err" || { cat "$tmp/$l.err" >&2; exit 1; }; done
echo "[lab] tcpdump on ${links[*]}"
# The client: one connection; on SIGUSR1 it reports the longest wait for an echo since the last
# report ("window K max_wait_ms=W sent=N"), on SIGTERM it closes and reports "done".
python3 - "$addr" "$port" >"$tmp/client.log" 2>&1 <<'PY' &
import signal, socket, sys, time
addr, port = sys.argv[1], int(sys.argv[2])
flags = {"report": False, "stop": False}
signal.signal(signal.SIGUSR1, lambda *_: flags.__setitem__("report", True))
signal.signal(signal.SIGTERM, lambda *_: flags.__setitem__("stop", True))
s = socket.create_connection((addr, port), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(60)
f = s.makefile("rb")
local = "%s:%d" % s.getsockname()
print(f"connected {addr}:{port} from {local}", flush=True)
n = window = 0
wmax = tmax = 0.0
while not flags["stop"]:
    n += 1
    t0 = time.monotonic()
    try:
        s.sendall(b"%d\n" % n)
        line = f.readline()
    except OSError as e:
        print(f"error at line {n}: {e!r}", flush=True)
        sys.exit(1)
    wait = time.monotonic() - t0
    if line != b"%d\n" % n:
        print(f"error: sent {n}, got {line!r}", flush=True)
        sys.exit(1)
    wmax, tmax = max(wmax, wait), max(tmax, wait)
    if flags["report"]:
        flags["report"] = False
        window += 1
        print(f"window {window} max_wait_ms={wmax * 1000:.0f} sent={n}", flush=True)
        wmax = 0.0
    time.sleep(max(0.0, 0.02 - wait))
s.close()
print(f"done sent={n} max_wait_ms={tmax * 1000:.0f} from {local}", flush=True)
PY
client=$!
for _ in $(seq 30); do grep -q '^connected' "$tmp/client.log" && break; sleep 0.2; done
grep -q '^connected' "$tmp/client.log" || { cat "$tmp/client.log" >&2; exit 1; }
echo "[lab] client $(head -n1 "$tmp/client.log")"
# report: the client's longest wait since the last report (it must still be running).
report() {
  local k=$1
  kill -0 "$client" 2>/dev/null || { echo "[lab] the client stopped:" >&2; cat "$tmp/client.log" >&2; exit 1; }
  kill -USR1 "$client"
  for _ in $(seq 50); do grep -q "^window $k " "$tmp/client.log" && break; sleep 0.2; done
  grep "^window $k " "$tmp/client.log" | sed -n 's/.*max_wait_ms=\([0-9]*\).*/\1/p'
}
sleep 3
before=$(report 1)
step "the client's longest wait before any move: $before ms"
# netmove TARGET MODE K: migrates the echo server with the client going, prints its downtime
# next to the longest wait the client saw.
netmove() {
  local to=$1 mode=$2 k=$3 downtime wait
  step "migrating $eid ($addr) to $to ($mode) with the client going"
  "$ferry" migrate "$eid" --to "$to" --mode "$mode" | tee "$tmp/migrate$k"
  downtime=$(sed -n 's/.*downtime \([0-9]*\) ms.*/\1/p' "$tmp/migrate$k" | tail -n1)
  sleep 3
  wait=$(report "$k")
  [ -n "$wait" ] || { echo "[lab] no report from the client" >&2; cat "$tmp/client.log" >&2; exit 1; }
  echo "[lab] $to ($mode): downtime ${downtime:-?} ms, the client's longest wait $wait ms"
}
netmove agent2 stop-and-copy 2
netmove agent1 post-copy 3
"$ferry" ps
kill -TERM "$client"
wait "$client" || { echo "[lab] the client failed:" >&2; cat "$tmp/client.log" >&2; exit 1; }
client=""
sed 's/^/[lab] client: /' "$tmp/client.log"
done_line=$(grep '^done ' "$tmp/client.log")
sent=$(echo "$done_line" | sed -n 's/.*sent=\([0-9]*\).*/\1/p')
local_end=${done_line##* from }
# The server accepted one connection, this client's, and echoed every line on it.
for _ in $(seq 20); do alllogs "$eid" | grep -q '^closed ' && break; sleep 0.5; done
alllogs "$eid" | sed 's/^/[lab] server: /'
accepts=$(alllogs "$eid" | grep -c '^accepted ' || true)
[ "$accepts" -eq 1 ] || { echo "[lab] the server accepted $accepts connections" >&2; exit 1; }
alllogs "$eid" | grep -qx "accepted 1 from $local_end" ||
  { echo "[lab] the server's one connection is not the client's ($local_end)" >&2; exit 1; }
alllogs "$eid" | grep -qx "closed $local_end after $sent lines" ||
  { echo "[lab] the server did not echo exactly the client's $sent lines on its connection" >&2; exit 1; }
sleep 1
for p in "${dumps[@]}"; do $sudo kill "$p" 2>/dev/null || true; done
for p in "${dumps[@]}"; do wait "$p" 2>/dev/null || true; done
dumps=()
rsts=0
for l in "${links[@]}"; do
  seen=$(tcpdump -r "$tmp/$l.pcap" -n 2>/dev/null | wc -l)
  rst=$(tcpdump -r "$tmp/$l.pcap" -n 'tcp[tcpflags] & tcp-rst != 0' 2>/dev/null | tee -a "$tmp/rst" | wc -l)
  echo "[lab] tcpdump $l: $seen segments to or from $addr, $rst with RST"
  rsts=$((rsts + rst))
done
[ "$rsts" -eq 0 ] || { echo "[lab] RSTs crossed the lab network:" >&2; cat "$tmp/rst" >&2; exit 1; }
"$ferry" stop "$eid"
step "own address verified: one connection, $sent lines echoed in order, no RST, through two moves"
