#!/usr/bin/env python3
"""Sample cooperative program: a counter whose value survives migration.

Counts up every 100 ms, printing ``count N``. On checkpoint it writes ``state.json``; on a
migration target it loads it back and prints ``restored count=N``. See coop/test.sh.
"""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import ferry_coop  # noqa: E402

STATE_FILE = "state.json"

lock = threading.Lock()
state = {"count": 0}


def save(d: str) -> None:
    # Under the lock so the file holds exactly the last count printed; write a temporary file
    # and rename it so state.json is never seen half-written.
    with lock:
        tmp = os.path.join(d, STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, os.path.join(d, STATE_FILE))


def main() -> None:
    d = ferry_coop.restore_dir()
    if d is not None:
        # No fallback to 0: a failed restore must not silently lose the migrated state.
        with open(os.path.join(d, STATE_FILE)) as f:
            state["count"] = int(json.load(f)["count"])
        print(f"restored count={state['count']}", flush=True)

    # Only after the state is loaded: serve() says hello, telling the agent we are ready.
    ferry_coop.serve(save)

    while True:
        time.sleep(0.1)
        with lock:
            state["count"] += 1
            print(f"count {state['count']}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
