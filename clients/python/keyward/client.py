"""The connection to the agent's service socket (:class:`Client`).

One gRPC channel per Client, over the Unix socket, made at the first call
once :mod:`keyward.trust` has checked who serves the socket (nothing is sent
before), with every request named by the ``x-keyward-client`` header
(:mod:`keyward.client_name`). Every call goes through here so that errors
are mapped once (:mod:`keyward.errors`), and auth-failure and key-use
reports are sent from daemon threads, never delaying or failing the caller.
What is not about threads (settings, the sticky fallback's memory, the
key-use counts, the fallback's decisions) is shared with the asyncio client
in :mod:`keyward.core`.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Callable, Generator, TypeVar, cast

import grpc

from ._proto import keys_pb2_grpc
from .client_name import ClientName
from .core import (
    CHANNEL_OPTIONS,
    DEFAULT_SOCKET,
    REPORT_DRAIN_SECONDS,
    ClientCore,
    auth_failure_request,
    get_request,
    key_use_request,
    watch_request,
)
from .errors import KeywardError, from_rpc_error
from .fallback import AuthErrorPredicate
from .handle import KeyHandle
from .keyset import KeySet
from .sticky import DEFAULT_FALLBACK_COOLDOWN
from .trust import check_socket

__all__ = ["Client", "DEFAULT_SOCKET"]

T = TypeVar("T")


class Client(ClientCore):
    """A connection to the keyward agent's service socket.

    ``socket`` is the argument, else ``$KEYWARD_SOCKET``, else
    ``/run/keyward/keys.sock``. ``timeout`` bounds each unary call (seconds).
    Connecting is lazy: a missing agent is reported by the first call, as
    :class:`~keyward.AgentUnavailable`. Use as a context manager or call
    :meth:`close`. Safe to share between threads.

    Before the first call sends anything, the client checks that the socket
    is served by root, by this process's user, or by ``agent_uid`` (else
    ``$KEYWARD_AGENT_UID``), and that no other uid can replace it (see
    :mod:`keyward.trust`); otherwise that call raises
    :class:`~keyward.UntrustedSocket`.

    ``fallback_cooldown`` (seconds, default 30): how long
    :meth:`call_with_fallback` goes straight to the fallback after the
    provider refused the primary (:mod:`keyward.sticky`); 0 turns that off.
    """

    def __init__(
        self,
        socket: str | None = None,
        *,
        timeout: float = 10.0,
        agent_uid: int | None = None,
        fallback_cooldown: float = DEFAULT_FALLBACK_COOLDOWN,
    ) -> None:
        super().__init__(socket, timeout=timeout, agent_uid=agent_uid, fallback_cooldown=fallback_cooldown)
        # Made by _keys() once the socket is checked.
        self._channel: grpc.Channel | None = None
        self._stub: keys_pb2_grpc.KeysStub | None = None
        self._connect_lock = threading.Lock()
        self._handles: "weakref.WeakSet[KeyHandle]" = weakref.WeakSet()
        self._reports: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _keys(self) -> keys_pb2_grpc.KeysStub:
        """The stub, on a channel made once the socket passed
        :func:`keyward.trust.check_socket`. Raises its errors (each call
        checks again until one passes)."""
        stub = self._stub
        if stub is not None:
            return stub
        with self._connect_lock:
            if self._closed:
                raise KeywardError(f"this keyward client ({self.socket}) is closed")
            if self._stub is None:
                target = check_socket(self.socket, self.agent_uid, self.timeout)
                raw = grpc.insecure_channel(f"unix:{target}", options=CHANNEL_OPTIONS)
                self._channel = grpc.intercept_channel(raw, ClientName())
                self._stub = keys_pb2_grpc.KeysStub(self._channel)  # type: ignore[no-untyped-call]
            return self._stub

    # -- reading keys --------------------------------------------------------

    def get(self, key: str) -> KeySet:
        """The current KeySet of ``key`` (``"ENV/NAME"``)."""
        request = get_request(key)
        stub = self._keys()
        try:
            return KeySet.from_proto(stub.GetKey(request, timeout=self.timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.socket) from None

    def watch(self, keys: list[str]) -> Generator[KeySet, None, None]:
        """Yields the KeySet of each key at once, then each key's KeySet after
        every change. Runs until the stream ends (the agent stops:
        :class:`~keyward.AgentUnavailable`) or the generator is closed, which
        cancels the stream. For a key that stays current across agent
        restarts, use :meth:`handle`."""
        request = watch_request(keys)
        call = self._keys().WatchKeys(request)
        try:
            for event in call:
                yield KeySet.from_proto(event.key_set)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc_error(e, self.socket) from None
        finally:
            call.cancel()

    def handle(self, key: str, *, timeout: float = 10.0) -> KeyHandle:
        """A :class:`~keyward.KeyHandle` that keeps ``key`` current in the
        background, reconnecting (0.1 s doubling to 5 s) when the agent
        restarts. Waits up to ``timeout`` seconds for the first KeySet."""
        handle = KeyHandle(self, key, timeout=timeout)
        self._handles.add(handle)
        return handle

    # -- reports -------------------------------------------------------------

    def report_auth_failure(
        self, key: str, version: int, status_code: int, service: str, detail: str = ""
    ) -> None:
        """Tells the agent that ``version`` of ``key`` was refused with
        ``status_code``. Waits for the agent's answer and raises
        :class:`~keyward.KeywardError` on failure (``call_with_fallback``
        sends reports in the background instead)."""
        request = auth_failure_request(key, version, status_code, service, detail)
        stub = self._keys()
        try:
            stub.ReportAuthFailure(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.socket) from None

    def report_key_use(self, key: str, version: int, service: str, successes: int = 1) -> None:
        """Tells the agent that ``successes`` calls made by ``service`` with
        ``version`` of ``key`` succeeded: the evidence a rotation needs
        before the agent retires the old key. Waits for the agent's answer
        and raises :class:`~keyward.KeywardError` on failure.
        ``call_with_fallback`` and :meth:`KeyHandle.report_use` send these by
        themselves, in the background and at most once per version every
        :data:`keyward.USE_REPORT_INTERVAL` seconds."""
        request = key_use_request(key, version, service, successes)
        stub = self._keys()
        try:
            stub.ReportKeyUse(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.socket) from None

    # -- calling an API with the key -----------------------------------------

    def call_with_fallback(
        self,
        key: "str | KeyHandle",
        fn: Callable[[bytes], T],
        is_auth_error: AuthErrorPredicate | None = None,
        service: str | None = None,
        *,
        fallback_cooldown: float | None = None,
    ) -> T:
        """Calls ``fn(primary.secret)``; on an auth rejection, reports it and
        calls ``fn(fallback.secret)``.

        ``key`` is ``"ENV/NAME"`` (fetched with :meth:`get`) or a
        :class:`~keyward.KeyHandle` (its current KeySet, no round trip).
        ``is_auth_error`` is told each raised exception or returned value and
        says whether it is an auth rejection (default: status 401/403, see
        :func:`keyward.fallback.default_is_auth_error`). Rejections are
        reported to the agent in the background, never delaying the call and
        never raising: the first of each version at once, the next ones
        within the cool-down counted into the next report. Returns the first
        result that is not a rejection; when every version was rejected,
        re-raises the last exception (or returns the last rejected value).
        Exceptions that are not auth rejections propagate at once.

        Sticky fallback: once the provider refused the primary, calls go
        straight to the fallback for ``fallback_cooldown`` seconds (default:
        the client's, 30 s; 0 turns it off), until the agent pushes a new
        KeySet (:mod:`keyward.sticky`).

        A success (a returned value that is not a rejection and carries no
        HTTP status of 400 or more) is reported as key use of the version
        that worked, in the background and at most once per version every
        :data:`keyward.USE_REPORT_INTERVAL` seconds: the evidence that lets
        a rotation retire the old key.
        """
        keyset = key.current if isinstance(key, KeyHandle) else self.get(key)
        attempt = self._attempt(keyset, is_auth_error, service, fallback_cooldown)
        for version in attempt.versions:
            try:
                value = fn(version.secret)
            except Exception as e:  # classified by the attempt, re-raised if not a rejection
                if not attempt.rejected(version, e):
                    raise
                continue
            if not attempt.rejected(version, value):
                return cast(T, attempt.succeeded(version, value))
        return cast(T, attempt.give_up())

    # -- in the background ---------------------------------------------------

    def _in_background(self, name: str, send: Callable[[], object], failed: Callable[[Exception], None]) -> None:
        """Runs ``send`` on a daemon thread that close() waits for (2 s at
        most); nothing once the client is closed. Its error goes to
        ``failed``, never to the caller."""

        def run() -> None:
            try:
                send()
            except Exception as e:  # the report must never hurt the caller
                failed(e)
            finally:
                with self._lock:
                    self._reports.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            if self._closed:
                return
            self._reports.add(thread)
        thread.start()

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Closes the handles made from this client and the channel, after
        giving reports still in flight up to 2 s to be sent (so that a short
        script's report is not lost at exit)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._reports)
        for handle in list(self._handles):
            handle.close()
        deadline = time.monotonic() + REPORT_DRAIN_SECONDS
        for thread in pending:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._connect_lock:
            if self._channel is not None:
                self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(socket={self.socket!r})"
