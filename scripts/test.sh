#!/usr/bin/env bash
# The project's test command (README, .ci/run): set the machine up, then lint and run every test
# as root on real processes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

start=$(date +%s)
FERRY_SETUP_SKIP_BUILD=1 scripts/setup.sh
echo "[test] setup took $(( $(date +%s) - start )) s"

step() { echo "[test] $*"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets --quiet -- -D warnings
step "cargo build (every binary: the tests run ferry and ferry-init)"
cargo build --locked --workspace --bins --quiet
step "cargo test"
log=$(mktemp)
rc=0
cargo test --locked --workspace --no-fail-fast 2>&1 | tee "$log" || rc=$?
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '^test result: .* ([0-9]+) failed' "$log" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
step "coop/test.sh (cooperative helpers in Rust, Python and C, no agent)"
coop_rc=0
coop/test.sh 2>&1 | tee "$log" || coop_rc=$?
[ "$coop_rc" -eq 0 ] || rc=$coop_rc
coop_line=$(grep -E '^coop: [0-9]+ passed, [0-9]+ failed' "$log" | tail -n1)
if [ -n "$coop_line" ]; then
  passed=$(( passed + $(echo "$coop_line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+') ))
  failed=$(( failed + $(echo "$coop_line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+') ))
else
  failed=$(( failed + 1 )); rc=1
fi
step "web: lint, type-check, component tests (Vitest)"
web_rc=0
(cd web && npm run --silent lint && npm run --silent typecheck) || web_rc=$?
if [ "$web_rc" -eq 0 ]; then passed=$(( passed + 1 )); else failed=$(( failed + 1 )); rc=1; fi
(cd web && NO_COLOR=1 npx vitest run 2>&1) | tee "$log" || rc=1
vt=$(grep -E '^\s*Tests\s+' "$log" | tail -n1)
vp=$(echo "$vt" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
vf=$(echo "$vt" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
[ -n "$vt" ] || { vf=1; rc=1; }
passed=$(( passed + vp )); failed=$(( failed + vf ))
step "web: the dashboard end to end in Chromium against a real two-node cluster"
if FERRY_BIN=$here/target/debug/ferry web/e2e/run.sh; then passed=$(( passed + 1 )); else failed=$(( failed + 1 )); rc=1; fi
step "vagrant validate (the lab's Vagrantfile, libvirt provider)"
if (cd vagrant && vagrant validate); then passed=$(( passed + 1 )); else failed=$(( failed + 1 )); rc=1; fi
step "scripts/fuzz-api.sh (schemathesis against /api/openapi.json: no 5xx, no crash)"
if scripts/fuzz-api.sh; then passed=$(( passed + 1 )); else failed=$(( failed + 1 )); rc=1; fi
rm -f "$log"
echo "[test] total $(( $(date +%s) - start )) s"
echo "tests: $passed passed, $failed failed"
exit "$rc"
