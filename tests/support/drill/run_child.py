#!/usr/bin/env python3
"""A program that knows nothing of keyward, for the rotation drill's
`keyward run` children (tests/it/drill_rotation/).

    keyward run --key prod/drill=DRILL_KEY -- python3 run_child.py 127.0.0.1:PORT OUT_FILE DRILL_KEY

It calls the provider's GET /api in a loop with $DRILL_KEY_PRIMARY and, when
that is refused (401/403), with $DRILL_KEY_FALLBACK: the fallback pattern an
unchanged app gets from `keyward run`'s variables. It appends to OUT_FILE
(O_APPEND, one line each, so the restarted copies share the file):

- when it starts, before its first request: `start` (keyward run starts
  one copy, then one per restart);
- at once, for every request that failed with both keys:
  `fail primary=STATUS fallback=STATUS` (a status is "error" when the
  request itself failed);
- when SIGTERM ends it (keyward run restarts it when the primary changes,
  at each promote):
  `done ok=N fell_back=N fail=N`.

It never prints a key.
"""

import http.client
import os
import signal
import sys
import time

stopping = False


def on_term(_signum, _frame):
    # Finish the request in flight, then write the summary and exit.
    global stopping
    stopping = True


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    out_path, var = sys.argv[2], sys.argv[3]
    primary = os.environ[var + "_PRIMARY"]
    fallback = os.environ[var + "_FALLBACK"]
    signal.signal(signal.SIGTERM, on_term)
    out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(out, b"start\n")
    conn = None

    def call(key):
        nonlocal conn
        for _ in range(2):
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=10)
                conn.request("GET", "/api", headers={"Authorization": "Bearer " + key})
                response = conn.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                # A dropped keep-alive connection: reconnect once.
                if conn is not None:
                    conn.close()
                conn = None
        return "error"

    parent = os.getppid()
    ok = fell_back = failed = 0
    while not stopping:
        if os.getppid() != parent:
            break  # keyward run is gone (a test that failed): do not linger
        status = call(primary)
        if status == 200:
            ok += 1
            continue
        second = None
        if status in (401, 403):
            second = call(fallback)
            if second == 200:
                ok += 1
                fell_back += 1
                continue
        failed += 1
        os.write(out, f"fail primary={status} fallback={second}\n".encode())
        time.sleep(0.01)  # no busy loop while the provider refuses or is away
    os.write(out, f"done ok={ok} fell_back={fell_back} fail={failed}\n".encode())
    os.close(out)


if __name__ == "__main__":
    sys.exit(main())
