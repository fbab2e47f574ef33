#!/usr/bin/env bash
# Migrates a workload between two agent VMs through the REST API and verifies its state: a
# counter that keeps a journal in its working directory continues where it was on the target.
# Prints the migration's figures.
set -euo pipefail
net=${FERRY_LAB_NET:-192.168.121}
export FERRY_API=${FERRY_API:-http://$net.10:5000}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ferry=${FERRY_BIN:-$here/target/release/ferry}
step() { printf '[lab] %s\n' "$*"; }

step "waiting for two agents"
for _ in $(seq 120); do
  [ "$("$ferry" nodes --json 2>/dev/null | grep -o '"status":"online"' | wc -l)" -ge 2 ] && break
  sleep 1
done
"$ferry" nodes
id=$("$ferry" run --node agent1 --name journal --json -- python3 /opt/ferry/workloads/appender.py |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
step "started $id on agent1"
sleep 3
before=$("$ferry" logs "$id" | grep -c '^count ')
step "$before counts on agent1; migrating to agent2"
"$ferry" migrate "$id" --to agent2
"$ferry" ps
sleep 3
"$ferry" logs "$id" | grep '^count ' | awk '{print $2}' | python3 -c '
import sys
nums = [int(x) for x in sys.stdin.read().split()]
before = int(sys.argv[1])
assert len(nums) > before, f"no new counts after the migration: {nums}"
assert all(b == a + 1 for a, b in zip(nums, nums[1:])), f"the count restarted or skipped: {nums}"
print(f"[lab] counts continue on agent2: {nums[0]}..{nums[-1]} ({len(nums)} lines, {before} before the move)")
' "$before"
step "lab migration verified"
