"""Call an HTTP API with a keyward key, falling back during a rotation.

    KEYWARD_SOCKET=/run/keyward/keys.sock \\
        python examples/python/fallback_http.py https://api.example.com/v1/me prod/billing-api

Arguments (or environment): the URL (``API_URL``) and the key ``ENV/NAME``
(``API_KEY_NAME``, default ``prod/billing-api``). Needs the ``keyward``
package (``pip install clients/python``) and a running ``keywardd`` that
lets this user read the key.

What it shows:

- a :class:`keyward.KeyHandle` keeps the key current in the background, so
  each request uses whatever the agent serves now, with no round trip;
- :meth:`keyward.Client.call_with_fallback` sends ``Authorization: Bearer
  <primary>``; if the API answers 401 or 403 (``urllib.error.HTTPError``) it
  reports the rejection to the agent (the operator sees it in the audit log
  and alerts) and retries with the fallback. During a rotation both keys are
  valid, so the service keeps working whichever one the provider accepts.

The secret is only ever put in the request header: never printed, logged
or passed on a command line.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

import keyward


def fetch(url: str, secret: bytes) -> str:
    """One GET with the key as a bearer token; raises HTTPError on 4xx/5xx."""
    request = urllib.request.Request(url, headers={"Authorization": "Bearer " + secret.decode()})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode(errors="replace")


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("API_URL")
    key = argv[2] if len(argv) > 2 else os.environ.get("API_KEY_NAME", "prod/billing-api")
    if not url:
        print(f"usage: {argv[0]} URL [ENV/NAME]   (or set API_URL, API_KEY_NAME)", file=sys.stderr)
        return 2
    try:
        with keyward.Client() as client, client.handle(key) as handle:
            body = client.call_with_fallback(handle, lambda secret: fetch(url, secret))
    except keyward.KeywardError as e:
        print(f"keyward: {e}", file=sys.stderr)
        return 1
    except urllib.error.HTTPError as e:
        print(f"{url}: HTTP {e.code} with every key keyward serves for {key}", file=sys.stderr)
        return 1
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
