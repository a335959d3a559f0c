"""The README's example on asyncio (``keyward.aio``): read a key, watch it,
and call an API with it from a coroutine, falling back on 401/403.

    KEYWARD_SOCKET=DIR/keys.sock API_URL=https://api.example.com/v1/me python quickstart_async.py [ENV/NAME]

Checked by ``mypy --strict`` and run against a real agent by the tests
(tests/test_typing.py). The HTTP call runs in a thread (urllib blocks);
with aiohttp or httpx it would be awaited directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import urllib.request

import keyward
import keyward.aio


def fetch(secret: bytes) -> str:
    request = urllib.request.Request(os.environ["API_URL"], headers={"Authorization": f"Bearer {secret.decode()}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
        return body.decode()


async def call_api(secret: bytes) -> str:
    """GET $API_URL with the key as a bearer token (HTTPError on 4xx/5xx)."""
    return await asyncio.to_thread(fetch, secret)


async def main(key: str) -> None:
    async with keyward.aio.Client() as client:
        ks: keyward.KeySet = await client.get(key)
        print(ks, ks.primary.text == ks.primary.secret.decode())
        async with client.handle(key) as handle:  # a task keeps it current
            print(await client.call_with_fallback(handle, call_api))
        async with contextlib.aclosing(client.watch([key])) as changes:
            async for current in changes:  # the current KeySet, then one per change
                print("generation", current.generation)
                break


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "prod/billing-api"))
