#!/usr/bin/env python3
"""After the whole Rust suite: looks for every secret the tests put or
staged through the CLI in every agent's output and audit log the tests kept
(testkit/src/lib.rs, KEYWARD_LEAK_DIR), and lists files the suite left in
its temp directory.

    leak_scan.py LEAK_DIR SUITE_TMPDIR

Secrets shorter than 8 bytes are not searched for (they would match
ordinary text); how many were skipped is printed. Prints one line
"leak scan: ..." and exits 1 on any hit or leftover file.
"""

import os
import sys

MIN_LEN = 8


def read_all(d):
    out = []
    if os.path.isdir(d):
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                out.append((name, f.read()))
    return out


def main():
    leak_dir, suite_tmp = sys.argv[1], sys.argv[2]
    # secret -> the file it was kept in (named after the test process), so
    # that a hit can be reported without printing the secret.
    secrets, short = {}, 0
    for name, s in read_all(os.path.join(leak_dir, "secrets")):
        if s.endswith(b"\n"):
            s = s[:-1]
        if len(s) < MIN_LEN:
            short += 1
        else:
            secrets.setdefault(s, name)
    places = [("agent output " + n, b) for n, b in read_all(os.path.join(leak_dir, "agent-output"))]
    places += [("audit log " + n, b) for n, b in read_all(os.path.join(leak_dir, "audit"))]
    hits = []
    for what, data in places:
        for s, source in secrets.items():
            if s in data:
                hits.append("secret kept as %s found in %s" % (source, what))
    leftovers = []
    leak_abs = os.path.abspath(leak_dir)
    for root, dirs, files in os.walk(suite_tmp):
        if os.path.abspath(root).startswith(leak_abs):
            continue
        leftovers += [os.path.join(root, f) for f in files]
    print(
        "leak scan: secrets=%d (skipped %d shorter than %d bytes) agent_outputs=%d audit_logs=%d bytes=%d hits=%d temp_files_left=%d"
        % (
            len(secrets),
            short,
            MIN_LEN,
            sum(1 for w, _ in places if w.startswith("agent")),
            sum(1 for w, _ in places if w.startswith("audit")),
            sum(len(b) for _, b in places),
            len(hits),
            len(leftovers),
        )
    )
    for h in hits[:50]:
        print("  leak: " + h)
    for f in leftovers[:50]:
        print("  left behind: " + f)
    return 1 if hits or leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
