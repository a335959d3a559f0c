#!/usr/bin/env python3
"""The rotation hooks of the rotation drill (tests/it/drill_rotation/).

    provider_hook.py generate|validate|revoke http://127.0.0.1:PORT

They talk to the drill's fake API provider (testkit/src/provider.rs) the way
an operator's hooks talk to a real one, and follow keyward's hook contract:

- generate: asks the provider for a new key (POST /admin/issue) and prints
  it on stdout.
- validate: reads the candidate key on stdin, asks the provider whether it
  accepts it (POST /admin/check); exit 0 if it does.
- revoke: reads the retired key on stdin and revokes it (POST
  /admin/revoke); idempotent, as keyward requires.

Secrets travel only on stdin, stdout and in request bodies: never in argv,
the environment, a URL or stderr. Standard library only (http.client, which
ignores proxy variables, so loopback is always reached directly).
"""

import http.client
import sys
import urllib.parse


def post(base, path, body):
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def fail(message):
    # stderr is shown in keyward's error messages: never put the key here.
    print(message, file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("generate", "validate", "revoke"):
        fail("usage: provider_hook.py generate|validate|revoke PROVIDER_URL")
    mode, base = sys.argv[1], sys.argv[2]
    if mode == "generate":
        status, body = post(base, "/admin/issue", b"")
        if status != 200:
            fail(f"the provider did not issue a key: HTTP {status}")
        sys.stdout.buffer.write(body)
        return
    key = sys.stdin.buffer.read()
    if not key:
        fail(f"{mode}: no key on stdin")
    if mode == "validate":
        status, _ = post(base, "/admin/check", key)
        if status != 200:
            fail(f"the provider refuses the new key: HTTP {status}")
    else:
        status, _ = post(base, "/admin/revoke", key)
        if status != 200:
            fail(f"the provider did not revoke the key: HTTP {status}")
        print("revoked at the provider")


if __name__ == "__main__":
    main()
