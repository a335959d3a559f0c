"""A key kept up to date in the background (:class:`KeyHandle`).

A handle owns one thread that holds a ``WatchKeys`` stream open and stores
each KeySet the agent pushes. When the stream breaks (the agent restarts,
the socket goes away) it reconnects with doubling backoff, capped, and
meanwhile keeps serving the last KeySet it had: a restart of the agent
never leaves a running service without a key. :meth:`KeyHandle.report_use`
tells the agent which version worked, through the client's key-use counts
(:mod:`keyward.key_use`), never waiting for it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import grpc

from ._proto import keys_pb2
from .errors import InvalidKey, KeyNotFound, KeywardError, PermissionDenied, UntrustedSocket, from_rpc_error
from .keyset import KeySet, KeyVersion, parse_key

if TYPE_CHECKING:
    from .client import Client

__all__ = ["KeyHandle"]

log = logging.getLogger("keyward")

# Errors that another attempt will not cure: raised at creation instead of
# retried until the timeout.
_FATAL_AT_START = (KeyNotFound, PermissionDenied, InvalidKey, UntrustedSocket)


class KeyHandle:
    """The current KeySet of one key, updated as the agent pushes changes.

    Made by :meth:`keyward.Client.handle`; blocks until the first KeySet
    arrives. ``current``, ``primary`` and ``fallback`` are always the latest
    values received. Close it (or use it as a context manager) to stop the
    background thread.
    """

    def __init__(
        self,
        client: "Client",
        key: str,
        *,
        timeout: float = 10.0,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self.key = key
        self._ref = parse_key(key)
        self._client = client
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._cond = threading.Condition()
        self._current: KeySet | None = None
        self._fatal: KeywardError | None = None
        self._last_error: KeywardError | None = None
        self._call: grpc.RpcContext | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"keyward-watch {key}", daemon=True)
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._current is not None or self._fatal is not None, timeout)
            current, fatal, last = self._current, self._fatal, self._last_error
        if current is None:
            self.close()
            if fatal is not None:
                raise fatal
            why = f": {last}" if last is not None else ""
            kind = type(last) if last is not None else KeywardError
            raise kind(f"no KeySet for {key} from the keyward agent within {timeout:g}s{why}")

    # -- what callers read -------------------------------------------------

    @property
    def current(self) -> KeySet:
        """The latest KeySet received."""
        with self._cond:
            assert self._current is not None
            return self._current

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
        with self._cond:
            return self._last_error

    def report_use(self, version: int, service: str | None = None) -> None:
        """Tells the agent, in the background, that a call made with
        ``version`` of this key succeeded: the evidence that lets a rotation
        retire the old key (without it, the rotation waits at PROMOTED and
        alerts ``no_evidence``). Call it after each successful call you make
        with a secret of this handle, naming the version of the secret you
        used (``ks.primary.version`` of the KeySet you took it from), not
        the current primary after the fact: a rotation may have moved it
        meanwhile. :meth:`keyward.Client.call_with_fallback` does this by
        itself.

        Cheap, and never raises nor waits: the client sends at most one
        report per version every :data:`keyward.USE_REPORT_INTERVAL`
        seconds, carrying the count of successes since the last one, from a
        daemon thread; a failure to report is logged at debug level.
        ``service`` names the caller in the report (default: the program's
        name)."""
        self._client._note_use(self.key, version, service)

    def wait_for_generation(self, generation: int, timeout: float) -> KeySet:
        """Blocks until a KeySet of at least ``generation`` has arrived;
        raises ``TimeoutError`` after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._current is not None and self._current.generation >= generation, timeout
            ):
                have = self._current.generation if self._current else None
                raise TimeoutError(f"{self.key}: generation {generation} not seen within {timeout:g}s (have {have})")
            assert self._current is not None
            return self._current

    def close(self) -> None:
        """Stops the background thread and ends the stream. Idempotent."""
        self._stop.set()
        with self._cond:
            call = self._call
            self._cond.notify_all()
        if call is not None:
            call.cancel()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> "KeyHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._cond:
            return f"KeyHandle({self.key!r}, current={self._current!r})"

    # -- the background thread ----------------------------------------------

    def _run(self) -> None:
        backoff = self._initial_backoff
        request = keys_pb2.WatchKeysRequest(keys=[self._ref])
        while not self._stop.is_set():
            try:
                call = self._client._keys().WatchKeys(request)
                with self._cond:
                    self._call = call
                if self._stop.is_set():
                    call.cancel()
                    return
                for event in call:
                    keyset = KeySet.from_proto(event.key_set)
                    with self._cond:
                        self._current = keyset
                        self._last_error = None
                        self._cond.notify_all()
                    backoff = self._initial_backoff
                error: KeywardError = KeywardError(f"the agent ended the watch stream of {self.key}")
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                error = from_rpc_error(e, self._client.socket)
            except KeywardError as e:  # the socket's check (Client._keys)
                error = e
            except Exception as e:  # never let the thread die silently
                error = KeywardError(f"watch of {self.key} failed: {type(e).__name__}: {e}")
            with self._cond:
                self._call = None
                self._last_error = error
                if self._current is None and isinstance(error, _FATAL_AT_START):
                    self._fatal = error
                    self._cond.notify_all()
                    return
                self._cond.notify_all()
            if self._stop.is_set():
                return
            # Warn once per outage, not on every retry.
            level = logging.WARNING if backoff == self._initial_backoff else logging.DEBUG
            log.log(level, "keyward: watch of %s interrupted (%s); retrying in %.1fs", self.key, error, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)
