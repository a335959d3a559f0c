"""The connection to the agent's service socket (:class:`Client`).

One gRPC channel per Client, over the Unix socket, made at the first call
once :mod:`keyward.trust` has checked who serves the socket (nothing is sent
before), with every request named by the ``x-keyward-client`` header
(:mod:`keyward.client_name`). Every call goes through here so that errors
are mapped once (:mod:`keyward.errors`), and auth-failure and key-use
reports (:mod:`keyward.key_use`) are sent without ever delaying or failing
the caller.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from typing import Callable, Iterator, TypeVar, cast

import grpc

from ._proto import keys_pb2, keys_pb2_grpc
from .client_name import ClientName
from .errors import KeywardError, from_rpc_error
from .fallback import AuthErrorPredicate, default_is_auth_error, status_of
from .handle import KeyHandle
from .key_use import UseCounts
from .keyset import KeySet, parse_key
from .trust import agent_uid_from_env, check_socket

__all__ = ["Client", "DEFAULT_SOCKET"]

log = logging.getLogger("keyward")

#: Where the agent listens unless told otherwise.
DEFAULT_SOCKET = "/run/keyward/keys.sock"

T = TypeVar("T")

# How long close() waits for reports still being sent.
_REPORT_DRAIN_SECONDS = 2.0

_CHANNEL_OPTIONS = [
    # grpc-core sends the socket path as :authority for unix: targets; the
    # agent's HTTP/2 server (hyper, under tonic) rejects that as an invalid
    # authority. "localhost" is what every other keyward client sends.
    ("grpc.default_authority", "localhost"),
    # After an agent restart, reconnect within seconds rather than grpc's
    # default backoff, which grows to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


class Client:
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
    """

    def __init__(self, socket: str | None = None, *, timeout: float = 10.0, agent_uid: int | None = None) -> None:
        path = socket or os.environ.get("KEYWARD_SOCKET") or DEFAULT_SOCKET
        self.socket: str = path if os.path.isabs(path) else os.path.abspath(path)
        self.timeout = timeout
        if agent_uid is not None and (isinstance(agent_uid, bool) or not isinstance(agent_uid, int) or agent_uid < 0):
            raise KeywardError(f"agent_uid={agent_uid!r} is not a uid: pass the number keywardd runs as")
        #: The uid keywardd runs as, trusted besides root and this user.
        self.agent_uid: int | None = agent_uid if agent_uid is not None else agent_uid_from_env()
        # Made by _keys() once the socket is checked.
        self._channel: grpc.Channel | None = None
        self._stub: keys_pb2_grpc.KeysStub | None = None
        self._connect_lock = threading.Lock()
        self._handles: "weakref.WeakSet[KeyHandle]" = weakref.WeakSet()
        self._reports: set[threading.Thread] = set()
        self._uses = UseCounts()
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
                raw = grpc.insecure_channel(f"unix:{target}", options=_CHANNEL_OPTIONS)
                self._channel = grpc.intercept_channel(raw, ClientName())
                self._stub = keys_pb2_grpc.KeysStub(self._channel)  # type: ignore[no-untyped-call]
            return self._stub

    # -- reading keys --------------------------------------------------------

    def get(self, key: str) -> KeySet:
        """The current KeySet of ``key`` (``"ENV/NAME"``)."""
        request = keys_pb2.GetKeyRequest(key=parse_key(key))
        stub = self._keys()
        try:
            return KeySet.from_proto(stub.GetKey(request, timeout=self.timeout))
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.socket) from None

    def watch(self, keys: list[str]) -> Iterator[KeySet]:
        """Yields the KeySet of each key at once, then each key's KeySet after
        every change. Runs until the stream ends (the agent stops:
        :class:`~keyward.AgentUnavailable`) or the generator is closed, which
        cancels the stream. For a key that stays current across agent
        restarts, use :meth:`handle`."""
        if isinstance(keys, str):
            keys = [keys]
        request = keys_pb2.WatchKeysRequest(keys=[parse_key(k) for k in keys])
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

    # -- auth failures -------------------------------------------------------

    def report_auth_failure(
        self, key: str, version: int, status_code: int, service: str, detail: str = ""
    ) -> None:
        """Tells the agent that ``version`` of ``key`` was refused with
        ``status_code``. Waits for the agent's answer and raises
        :class:`~keyward.KeywardError` on failure (``call_with_fallback``
        sends reports in the background instead)."""
        request = keys_pb2.AuthFailureReport(
            key=parse_key(key), version=version, status_code=status_code, service=service, detail=detail
        )
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
        request = keys_pb2.KeyUseReport(key=parse_key(key), version=version, service=service, successes=successes)
        stub = self._keys()
        try:
            stub.ReportKeyUse(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.socket) from None

    def call_with_fallback(
        self,
        key: "str | KeyHandle",
        fn: Callable[[bytes], T],
        is_auth_error: AuthErrorPredicate | None = None,
        service: str | None = None,
    ) -> T:
        """Calls ``fn(primary.secret)``; on an auth rejection, reports it and
        calls ``fn(fallback.secret)``.

        ``key`` is ``"ENV/NAME"`` (fetched with :meth:`get`) or a
        :class:`~keyward.KeyHandle` (its current KeySet, no round trip).
        ``is_auth_error`` is told each raised exception or returned value and
        says whether it is an auth rejection (default: status 401/403, see
        :func:`keyward.fallback.default_is_auth_error`). Each rejection is
        reported to the agent in the background, never delaying the call and
        never raising. Returns the first result that is not a rejection;
        when every version was rejected, re-raises the last exception (or
        returns the last rejected value). Exceptions that are not auth
        rejections propagate at once.

        A success (a returned value that is not a rejection and carries no
        HTTP status of 400 or more) is reported as key use of the version
        that worked, in the background and at most once per version every
        :data:`keyward.USE_REPORT_INTERVAL` seconds: the evidence that lets
        a rotation retire the old key.
        """
        check = is_auth_error or default_is_auth_error
        who = service if service is not None else _program_name()
        keyset = key.current if isinstance(key, KeyHandle) else self.get(key)
        versions = [keyset.primary] + ([keyset.fallback] if keyset.fallback is not None else [])
        last: T | None = None
        error: Exception | None = None
        outcome: object
        for i, version in enumerate(versions):
            try:
                value = fn(version.secret)
            except Exception as e:  # noqa: BLE001 - classified here, re-raised if not a rejection
                if not _safe_check(check, e):
                    raise
                error = outcome = e
            else:
                if not _safe_check(check, value):
                    if _worked(value):
                        self._note_use(keyset.key, version.version, who)
                    return value
                error, last, outcome = None, value, value
            then = f"retrying with fallback v{versions[i + 1].version}" if i + 1 < len(versions) else "no fallback left"
            self._report_in_background(keyset.key, version.version, outcome, who, then)
        if error is not None:
            raise error
        return cast(T, last)

    def _report_in_background(self, key: str, version: int, outcome: object, service: str, then: str) -> None:
        # The detail names the outcome's type, never its text: an exception
        # message may quote a request, headers included.
        status = status_of(outcome) or 0
        detail = f"{type(outcome).__name__}; {then}"

        def send() -> None:
            try:
                self.report_auth_failure(key, version, status, service, detail)
            except Exception as e:  # the report must never hurt the caller
                log.warning("keyward: could not report the auth failure on %s v%d: %s", key, version, e)

        self._in_background(f"keyward-report {key}", send)

    def _note_use(self, key: str, version: int, service: str | None) -> None:
        """Counts a success with ``version`` of ``key``; sends the key-use
        report from a daemon thread when one is due (:mod:`keyward.key_use`).
        ``service`` defaults to the program's name."""
        successes = self._uses.record(key, version, time.monotonic())
        if successes is None:
            return
        who = service if service is not None else _program_name()

        def send() -> None:
            try:
                self.report_key_use(key, version, who, successes)
            except Exception as e:  # the report must never hurt the caller
                log.debug("keyward: could not report the use of %s v%d: %s", key, version, e)

        self._in_background(f"keyward-use {key}", send)

    def _in_background(self, name: str, send: Callable[[], None]) -> None:
        """Runs ``send`` on a daemon thread that close() waits for (2 s at
        most); nothing once the client is closed."""

        def run() -> None:
            try:
                send()
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
        deadline = time.monotonic() + _REPORT_DRAIN_SECONDS
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


def _safe_check(check: AuthErrorPredicate, outcome: object) -> bool:
    try:
        return bool(check(outcome))
    except Exception as e:  # a broken predicate must not hide the real outcome
        raise KeywardError(f"is_auth_error raised {type(e).__name__}: {e}") from e


def _worked(value: object) -> bool:
    """Whether a returned value is a success to report as key use: no HTTP
    status, or one below 400. A 5xx does not show that the key works, and a
    false report could let a rotation retire the only key that does."""
    status = status_of(value)
    return status is None or status < 400


def _program_name() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
