#!/usr/bin/env bash
# Runs the dashboard's end-to-end test against a real two-node cluster: starts `ferry up` on its
# own port, network and data directory, waits for "ferry is up", runs e2e/dashboard.e2e.mjs,
# then SIGTERMs the cluster and waits for it to exit (always, through the EXIT trap). The exit
# code is the test's. Needs root (ferry up makes network namespaces) and /usr/bin/chromium.
#
# Environment: FERRY_BIN (default <repo>/target/release/ferry), FERRY_E2E_PORT (default 5100),
# FERRY_E2E_UP_TIMEOUT (seconds to wait for the cluster, default 90), and whatever
# dashboard.e2e.mjs reads (FERRY_E2E_TIMEOUT_MS, CHROMIUM_PATH, FERRY_E2E_SCREENSHOTS).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
web=$(dirname "$here")
repo=$(dirname "$web")
bin=${FERRY_BIN:-$repo/target/release/ferry}
port=${FERRY_E2E_PORT:-5100}
up_timeout=${FERRY_E2E_UP_TIMEOUT:-90}

if [[ ! -x $bin ]]; then
  echo "e2e/run.sh: no ferry binary at $bin (cargo build --release, or set FERRY_BIN)" >&2
  exit 2
fi
if [[ ! -f $web/dist/index.html ]]; then
  echo "e2e/run.sh: web/dist is not built; building it"
  (cd "$web" && npm run build)
fi
if [[ ! -d $web/node_modules/playwright-core ]]; then
  echo "e2e/run.sh: web/node_modules is missing: run npm ci in web/ first" >&2
  exit 2
fi

data=$(mktemp -d /tmp/ferry-e2e.XXXXXX)
log=$(mktemp /tmp/ferry-e2e-up.XXXXXX.log)
pid=

teardown() {
  local status=$?
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    echo "e2e/run.sh: stopping the cluster (SIGTERM to $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 120); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "e2e/run.sh: the cluster did not exit within 60 s of SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      status=1
    fi
    wait "$pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 ]]; then
    echo "e2e/run.sh: cluster output ($log):" >&2
    tail -n 30 "$log" >&2 || true
    echo "e2e/run.sh: node and coordinator logs were in $data/logs" >&2
  fi
  rm -rf "$data"
  rm -f "$log"
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The gateway serves this checkout's build (also when FERRY_BIN lives elsewhere).
export FERRY_WEB_DIR=$web/dist
"$bin" up --nodes 2 --http "127.0.0.1:$port" --data-dir "$data" --net-name fe2e --subnet 10.231.249 >"$log" 2>&1 &
pid=$!

echo "e2e/run.sh: waiting for the cluster (pid $pid, data $data)"
deadline=$((SECONDS + up_timeout))
until grep -q "ferry is up" "$log"; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "e2e/run.sh: ferry up exited before the cluster was up" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "e2e/run.sh: the cluster was not up within ${up_timeout} s" >&2
    exit 1
  fi
  sleep 0.5
done
echo "e2e/run.sh: cluster is up on http://127.0.0.1:$port"

token=
[[ -f $data/operator.token ]] && token=$(tr -d '[:space:]' <"$data/operator.token")

set +e
FERRY_E2E_URL="http://127.0.0.1:$port" FERRY_E2E_TOKEN="$token" node "$here/dashboard.e2e.mjs"
result=$?
set -e
exit "$result"
