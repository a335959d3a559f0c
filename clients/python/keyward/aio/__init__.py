"""The asyncio client of keyward, on ``grpc.aio``.

The same surface as the sync client, awaited::

    import keyward.aio

    async with keyward.aio.Client() as client:
        ks = await client.get("prod/billing-api")
        async with client.handle("prod/billing-api") as key:   # kept current by a task
            body = await client.call_with_fallback(key, call_api)  # call_api: async (bytes) -> T
        async for ks in client.watch(["prod/billing-api"]):
            ...

Layout:

- :mod:`keyward.aio.client`: :class:`Client`: ``get``, ``watch`` (an async
  iterator), ``handle``, ``call_with_fallback`` (for coroutines),
  ``report_auth_failure``, ``report_key_use``; reports are sent by tasks.
- :mod:`keyward.aio.handle`: :class:`KeyHandle`: an async context manager
  (or ``await client.handle(...)``) whose value a task keeps current.

What is not about waiting is the sync client's own code
(:mod:`keyward.core`, :mod:`keyward.handle_core`, :mod:`keyward.attempt`,
:mod:`keyward.sticky`, :mod:`keyward.trust`, :mod:`keyward.errors`): the
same settings, socket check, errors, sticky fallback and reports. The
values (:class:`keyward.KeySet`, :class:`keyward.KeyVersion`) and errors
(:class:`keyward.KeywardError` and its subclasses) are the sync package's.

A client belongs to the event loop of its first call (a ``grpc.aio``
channel cannot move between loops).
"""

from .client import Client
from .handle import KeyHandle

__all__ = ["Client", "KeyHandle"]
