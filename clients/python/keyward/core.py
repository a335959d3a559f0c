"""What the sync and the async clients share (:class:`ClientCore`).

:class:`keyward.Client` (grpcio, threads) and :class:`keyward.aio.Client`
(``grpc.aio``, tasks) differ only in how they wait: this base holds
everything else, so that both check the same settings, dial the socket the
same way, and keep the same memory of refused versions
(:mod:`keyward.sticky`) and of key use (:mod:`keyward.key_use`). No I/O
happens here; the subclasses send what it decides, in the background.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from ._proto import keys_pb2
from .attempt import FallbackAttempt, program_name
from .errors import KeywardError
from .fallback import AuthErrorPredicate, default_is_auth_error
from .key_use import UseCounts
from .keyset import KeySet, parse_key
from .sticky import DEFAULT_FALLBACK_COOLDOWN, RefusedVersions
from .trust import agent_uid_from_env

__all__ = ["ClientCore", "DEFAULT_SOCKET", "CHANNEL_OPTIONS", "REPORT_DRAIN_SECONDS"]

log = logging.getLogger("keyward")

#: Where the agent listens unless told otherwise.
DEFAULT_SOCKET = "/run/keyward/keys.sock"

#: How long close() waits for reports still being sent.
REPORT_DRAIN_SECONDS = 2.0

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
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


def check_cooldown(value: float, what: str = "fallback_cooldown") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise KeywardError(f"{what}={value!r} is not a number of seconds >= 0 (0 turns the sticky fallback off)")
    return float(value)


class ClientCore:
    """Settings and memory shared by the sync and async clients."""

    def __init__(
        self,
        socket: str | None,
        *,
        timeout: float,
        agent_uid: int | None,
        fallback_cooldown: float = DEFAULT_FALLBACK_COOLDOWN,
    ) -> None:
        path = socket or os.environ.get("KEYWARD_SOCKET") or DEFAULT_SOCKET
        self.socket: str = path if os.path.isabs(path) else os.path.abspath(path)
        self.timeout = timeout
        if agent_uid is not None and (isinstance(agent_uid, bool) or not isinstance(agent_uid, int) or agent_uid < 0):
            raise KeywardError(f"agent_uid={agent_uid!r} is not a uid: pass the number keywardd runs as")
        #: The uid keywardd runs as, trusted besides root and this user.
        self.agent_uid: int | None = agent_uid if agent_uid is not None else agent_uid_from_env()
        #: Seconds ``call_with_fallback`` skips a version the provider
        #: refused (:mod:`keyward.sticky`); 0 turns that off.
        self.fallback_cooldown: float = check_cooldown(fallback_cooldown)
        self._uses = UseCounts()
        self._refused = RefusedVersions()

    def _attempt(
        self,
        keyset: KeySet,
        is_auth_error: AuthErrorPredicate | None,
        service: str | None,
        fallback_cooldown: float | None,
    ) -> FallbackAttempt:
        cooldown = self.fallback_cooldown if fallback_cooldown is None else check_cooldown(fallback_cooldown)
        who = service if service is not None else program_name()
        return FallbackAttempt(self, keyset, is_auth_error or default_is_auth_error, who, cooldown)

    def _note_use(self, key: str, version: int, service: str | None) -> None:
        """Counts a success with ``version`` of ``key``; has the report sent
        in the background when one is due (:mod:`keyward.key_use`).
        ``service`` defaults to the program's name."""
        successes = self._uses.record(key, version, time.monotonic())
        if successes is not None:
            who = service if service is not None else program_name()
            self._send_key_use_later(key, version, who, successes)

    def _keyset_pushed(self, key: str) -> None:
        """A handle received a new KeySet of ``key``: the versions refused
        before no longer say anything (:mod:`keyward.sticky`)."""
        self._refused.forget(key)

    # Sending, in the background: never delays nor fails the caller.

    def _send_auth_failure_later(self, key: str, version: int, status: int, service: str, detail: str) -> None:
        def failed(e: Exception) -> None:
            log.warning("keyward: could not report the auth failure on %s v%d: %s", key, version, e)

        def send() -> Any:
            return self.report_auth_failure(key, version, status, service, detail)

        self._in_background(f"keyward-report {key}", send, failed)

    def _send_key_use_later(self, key: str, version: int, service: str, successes: int) -> None:
        def failed(e: Exception) -> None:
            log.debug("keyward: could not report the use of %s v%d: %s", key, version, e)

        def send() -> Any:
            return self.report_key_use(key, version, service, successes)

        self._in_background(f"keyward-use {key}", send, failed)

    # What the subclasses provide: the two reports (a call, or a coroutine),
    # and a way to run one in the background.

    def report_auth_failure(self, key: str, version: int, status_code: int, service: str, detail: str = "") -> Any:
        raise NotImplementedError

    def report_key_use(self, key: str, version: int, service: str, successes: int = 1) -> Any:
        raise NotImplementedError

    def _in_background(self, name: str, send: Callable[[], Any], failed: Callable[[Exception], None]) -> None:
        """Runs ``send()`` (awaiting what it returns, for the async client)
        where the caller does not wait; calls ``failed`` with its error,
        which must never reach the caller."""
        raise NotImplementedError


# The requests, built the same way for both clients.


def get_request(key: str) -> keys_pb2.GetKeyRequest:
    return keys_pb2.GetKeyRequest(key=parse_key(key))


def watch_request(keys: list[str] | str) -> keys_pb2.WatchKeysRequest:
    if isinstance(keys, str):
        keys = [keys]
    return keys_pb2.WatchKeysRequest(keys=[parse_key(k) for k in keys])


def auth_failure_request(
    key: str, version: int, status_code: int, service: str, detail: str
) -> keys_pb2.AuthFailureReport:
    return keys_pb2.AuthFailureReport(
        key=parse_key(key), version=version, status_code=status_code, service=service, detail=detail
    )


def key_use_request(key: str, version: int, service: str, successes: int) -> keys_pb2.KeyUseReport:
    return keys_pb2.KeyUseReport(key=parse_key(key), version=version, service=service, successes=successes)
