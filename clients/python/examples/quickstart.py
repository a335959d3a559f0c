"""The README's example: read a key, and call an API with it, falling back
to the other key of a rotation on 401/403.

    KEYWARD_SOCKET=DIR/keys.sock API_URL=https://api.example.com/v1/me python quickstart.py [ENV/NAME]

Checked by ``mypy --strict`` and run against a real agent by the tests
(tests/test_typing.py).
"""

from __future__ import annotations

import os
import sys
import urllib.request

import keyward


def call_api(secret: bytes) -> str:
    """GET $API_URL with the key as a bearer token (HTTPError on 4xx/5xx)."""
    request = urllib.request.Request(os.environ["API_URL"], headers={"Authorization": f"Bearer {secret.decode()}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
        return body.decode()


def main(key: str) -> None:
    with keyward.Client() as client:  # socket: $KEYWARD_SOCKET, else /run/keyward/keys.sock
        ks = client.get(key)
        print(ks)  # versions and fingerprints, never the secret
        token: str = ks.primary.text  # the secret as text (.secret: bytes)
        assert token
        with client.handle(key) as handle:  # kept current in the background
            print(client.call_with_fallback(handle, call_api))  # primary, then fallback on 401/403


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "prod/billing-api")
