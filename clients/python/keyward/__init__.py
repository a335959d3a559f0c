"""Python client of keyward, the local secrets broker.

Services ask the agent (``keywardd``) for their keys at run time over its
Unix socket; during a rotation a key has two valid versions, and
:meth:`Client.call_with_fallback` tries the primary, falls back on 401/403
and reports the rejection so the operator sees it, and reports which
version worked, the evidence a rotation needs to retire the old key.

Layout:

- :mod:`keyward.client`: :class:`Client`: the connection, ``get``,
  ``watch``, ``handle``, ``call_with_fallback``, ``report_auth_failure``,
  ``report_key_use``.
- :mod:`keyward.aio`: the same on asyncio (``grpc.aio``).
- :mod:`keyward.core`: what both clients share: settings, the channel's
  options, the requests, the memories below; :mod:`keyward.attempt`: one
  ``call_with_fallback``'s decisions; :mod:`keyward.handle_core`: what both
  handles share.
- :mod:`keyward.sticky`: versions the provider refused, skipped for a
  cool-down; one refusal report per version per interval.
- :mod:`keyward.client_name`: the ``x-keyward-client`` header
  (``python/VERSION``) every request carries.
- :mod:`keyward.handle`: :class:`KeyHandle`: a key kept current by a
  background thread's watch that survives agent restarts; ``report_use``.
- :mod:`keyward.key_use`: at most one key-use report per version every
  :data:`USE_REPORT_INTERVAL` seconds.
- :mod:`keyward.keyset`: :class:`KeySet`, :class:`KeyVersion` (``secret``
  bytes, ``text``; its repr never shows the secret), :class:`RotationState`.
- :mod:`keyward.fallback`: what counts as an auth rejection.
- :mod:`keyward.trust`: who may serve the socket (root, this user, the
  agent's uid), checked before the first call sends anything.
- :mod:`keyward.errors`: :class:`KeywardError` and its subclasses; gRPC codes
  are mapped there, once.
- :mod:`keyward._proto`: stubs generated from proto/ by ``gen.sh``.
"""

from .client import DEFAULT_SOCKET, Client
from .client_name import CLIENT_HEADER, __version__
from .errors import (
    AgentUnavailable,
    InvalidKey,
    KeyNotFound,
    KeywardError,
    PermissionDenied,
    SecretNotText,
    UntrustedSocket,
)
from .fallback import default_is_auth_error
from .handle import KeyHandle
from .key_use import USE_REPORT_INTERVAL
from .keyset import KeySet, KeyVersion, RotationState
from .sticky import DEFAULT_FALLBACK_COOLDOWN, MIN_REPORT_INTERVAL

__all__ = [
    "Client",
    "CLIENT_HEADER",
    "DEFAULT_SOCKET",
    "USE_REPORT_INTERVAL",
    "__version__",
    "KeyHandle",
    "KeySet",
    "KeyVersion",
    "RotationState",
    "KeywardError",
    "AgentUnavailable",
    "PermissionDenied",
    "KeyNotFound",
    "InvalidKey",
    "UntrustedSocket",
    "SecretNotText",
    "DEFAULT_FALLBACK_COOLDOWN",
    "MIN_REPORT_INTERVAL",
    "default_is_auth_error",
]
