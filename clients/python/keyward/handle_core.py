"""What the sync and async key handles share (:class:`HandleCore`).

A handle keeps the latest KeySet of one key, pushed by a ``WatchKeys``
stream that a thread (:class:`keyward.KeyHandle`) or a task
(:class:`keyward.aio.KeyHandle`) holds open and reopens with capped,
doubling backoff. This base holds the state and the rules both follow:

- the latest KeySet stays served while the stream is down;
- a new KeySet makes the client forget the key's refused versions at once
  (:mod:`keyward.sticky`);
- at creation, an error another attempt cannot cure (unknown key, denial,
  malformed name, untrusted socket) ends the handle at once; any other is
  retried until the creation's timeout.
"""

from __future__ import annotations

import logging

import grpc

from .core import ClientCore
from .errors import InvalidKey, KeyNotFound, KeywardError, PermissionDenied, UntrustedSocket, from_rpc_error
from .keyset import KeySet, KeyVersion, parse_key

__all__ = ["HandleCore"]

log = logging.getLogger("keyward")

# Errors that another attempt will not cure: raised at creation instead of
# retried until the timeout.
_FATAL_AT_START = (KeyNotFound, PermissionDenied, InvalidKey, UntrustedSocket)


class HandleCore:
    """The latest KeySet of one key, why the stream is down, and the backoff."""

    def __init__(self, client: ClientCore, key: str, *, initial_backoff: float, max_backoff: float) -> None:
        self.key = key
        self._ref = parse_key(key)
        self._core = client
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._backoff = initial_backoff
        self._current: KeySet | None = None
        self._fatal: KeywardError | None = None
        self._last_error: KeywardError | None = None

    # -- what callers read -------------------------------------------------

    @property
    def current(self) -> KeySet:
        """The latest KeySet received."""
        current = self._current
        assert current is not None, "a handle is returned only once it has a KeySet"
        return current

    @property
    def primary(self) -> KeyVersion:
        """The current primary."""
        return self.current.primary

    @property
    def fallback(self) -> KeyVersion | None:
        """The current fallback, if the key has one."""
        return self.current.fallback

    @property
    def last_error(self) -> KeywardError | None:
        """Why the stream is down, while it is; None once it is back."""
        return self._last_error

    def report_use(self, version: int, service: str | None = None) -> None:
        """Tells the agent, in the background, that a call made with
        ``version`` of this key succeeded: the evidence that lets a rotation
        retire the old key (without it, the rotation waits at PROMOTED and
        alerts ``no_evidence``). Call it after each successful call you make
        with a secret of this handle, naming the version of the secret you
        used (``ks.primary.version`` of the KeySet you took it from), not
        the current primary after the fact: a rotation may have moved it
        meanwhile. ``call_with_fallback`` does this by itself.

        Cheap, and never raises nor waits: the client sends at most one
        report per version every :data:`keyward.USE_REPORT_INTERVAL`
        seconds, carrying the count of successes since the last one, in the
        background; a failure to report is logged at debug level.
        ``service`` names the caller in the report (default: the program's
        name)."""
        self._core._note_use(self.key, version, service)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r}, current={self._current!r})"

    # -- for the thread or task that holds the stream ------------------------

    def _received(self, keyset: KeySet) -> None:
        """Stores a KeySet the agent pushed."""
        previous = self._current
        if previous is not None and previous.generation != keyset.generation:
            self._core._keyset_pushed(self.key)
        self._current = keyset
        self._last_error = None
        self._backoff = self._initial_backoff

    def _stream_error(self, e: Exception) -> KeywardError:
        """The error a broken stream (or the socket's check) is stored as."""
        if isinstance(e, grpc.RpcError):
            return from_rpc_error(e, self._core.socket)
        if isinstance(e, KeywardError):  # the socket's check, made when connecting
            return e
        # Anything else: kept (never let the thread or task die silently).
        return KeywardError(f"watch of {self.key} failed: {type(e).__name__}: {e}")

    def _failed(self, error: KeywardError) -> float | None:
        """The stream ended with ``error``. Returns how long to wait before
        the next attempt, or None when there is none to make (an error no
        retry cures, before any KeySet)."""
        self._last_error = error
        if self._current is None and isinstance(error, _FATAL_AT_START):
            self._fatal = error
            return None
        delay = self._backoff
        # Warn once per outage, not on every retry.
        level = logging.WARNING if delay == self._initial_backoff else logging.DEBUG
        log.log(level, "keyward: watch of %s interrupted (%s); retrying in %.1fs", self.key, error, delay)
        self._backoff = min(delay * 2, self._max_backoff)
        return delay

    def _no_first_keyset(self, timeout: float) -> KeywardError:
        """The error raised when no KeySet came within the creation's
        ``timeout``."""
        if self._fatal is not None:
            return self._fatal
        last = self._last_error
        why = f": {last}" if last is not None else ""
        kind = type(last) if last is not None else KeywardError
        return kind(f"no KeySet for {self.key} from the keyward agent within {timeout:g}s{why}")

    def _generation_timeout(self, generation: int, timeout: float) -> TimeoutError:
        have = self._current.generation if self._current else None
        return TimeoutError(f"{self.key}: generation {generation} not seen within {timeout:g}s (have {have})")
