"""A key kept up to date in the background by a thread (:class:`KeyHandle`).

A handle owns one thread that holds a ``WatchKeys`` stream open and stores
each KeySet the agent pushes. When the stream breaks (the agent restarts,
the socket goes away) it reconnects with doubling backoff, capped, and
meanwhile keeps serving the last KeySet it had: a restart of the agent
never leaves a running service without a key. The state and its rules are
shared with the asyncio handle (:mod:`keyward.handle_core`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import grpc

from .core import watch_request
from .errors import KeywardError
from .handle_core import HandleCore
from .keyset import KeySet

if TYPE_CHECKING:
    from .client import Client

__all__ = ["KeyHandle"]


class KeyHandle(HandleCore):
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
        super().__init__(client, key, initial_backoff=initial_backoff, max_backoff=max_backoff)
        self._client = client
        self._cond = threading.Condition()
        self._call: grpc.RpcContext | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"keyward-watch {key}", daemon=True)
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._current is not None or self._fatal is not None, timeout)
            failed = self._current is None
        if failed:
            self.close()
            raise self._no_first_keyset(timeout)

    def wait_for_generation(self, generation: int, timeout: float) -> KeySet:
        """Blocks until a KeySet of at least ``generation`` has arrived;
        raises ``TimeoutError`` after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._current is not None and self._current.generation >= generation, timeout
            ):
                raise self._generation_timeout(generation, timeout)
            return self.current

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

    # -- the background thread ----------------------------------------------

    def _run(self) -> None:
        request = watch_request([self.key])
        while not self._stop.is_set():
            try:
                call = self._client._keys().WatchKeys(request)
                with self._cond:
                    self._call = call
                if self._stop.is_set():
                    call.cancel()
                    return
                for event in call:
                    with self._cond:
                        self._received(KeySet.from_proto(event.key_set))
                        self._cond.notify_all()
                error: KeywardError = KeywardError(f"the agent ended the watch stream of {self.key}")
            except Exception as e:
                if self._stop.is_set():  # close() cancelled the stream
                    return
                error = self._stream_error(e)
            with self._cond:
                self._call = None
                delay = self._failed(error)
                self._cond.notify_all()
            if delay is None or self._stop.is_set():
                return
            self._stop.wait(delay)
