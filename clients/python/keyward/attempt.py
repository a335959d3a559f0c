"""One ``call_with_fallback``, whether the caller's function is plain or a
coroutine.

The sync and async clients run the same few lines, one calling
``fn(secret)``, the other awaiting it::

    attempt = client._attempt(keyset, is_auth_error, service, fallback_cooldown)
    for version in attempt.versions:
        try:
            value = fn(version.secret)            # or: await fn(version.secret)
        except Exception as e:
            if not attempt.rejected(version, e):
                raise
            continue
        if not attempt.rejected(version, value):
            return attempt.succeeded(version, value)
    return attempt.give_up()

Everything else is decided here, once: the order of the versions (the
sticky fallback of :mod:`keyward.sticky`), what counts as a rejection
(:mod:`keyward.fallback`), which rejections are reported and with what
detail, and which successes count as key use (:mod:`keyward.key_use`).
Reports are handed to the client, which sends them in the background.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

from .errors import KeywardError
from .fallback import AuthErrorPredicate, status_of
from .keyset import KeySet, KeyVersion

if TYPE_CHECKING:
    from .core import ClientCore

__all__ = ["FallbackAttempt", "program_name"]


class FallbackAttempt:
    """The state of one ``call_with_fallback``: the versions to try and
    the last rejection."""

    def __init__(
        self, client: "ClientCore", keyset: KeySet, check: AuthErrorPredicate, service: str, cooldown: float
    ) -> None:
        self._client = client
        self._keyset = keyset
        self._check = check
        self._service = service
        self._cooldown = cooldown
        self._order = client._refused.order(keyset, cooldown, time.monotonic())
        #: The versions to try, in order.
        self.versions: list[KeyVersion] = [v for _, v in self._order]
        self._error: Exception | None = None
        self._last: object = None

    def rejected(self, version: KeyVersion, outcome: object) -> bool:
        """Whether ``outcome`` (what ``fn`` raised or returned with
        ``version``) is an auth rejection. If it is: remembers it, marks the
        version refused and hands the client a report, if one is due."""
        if not _safe_check(self._check, outcome):
            return False
        if isinstance(outcome, Exception):
            self._error = outcome
        else:
            self._error, self._last = None, outcome
        held = self._client._refused.refused(self._keyset, version.version, self._cooldown, time.monotonic())
        if held is not None:
            # The detail names the outcome's type, never its text: an
            # exception message may quote a request, headers included.
            detail = f"{type(outcome).__name__}; {self._then(version)}"
            if held:
                detail += f" (and {held} more refusal{'s' if held != 1 else ''} since the last report)"
            status = status_of(outcome) or 0
            self._client._send_auth_failure_later(self._keyset.key, version.version, status, self._service, detail)
        return True

    def succeeded(self, version: KeyVersion, value: Any) -> Any:
        """Counts ``value`` as use of ``version`` when it shows that the key
        works; returns it."""
        if _worked(value):
            self._client._note_use(self._keyset.key, version.version, self._service)
        return value

    def give_up(self) -> Any:
        """Every version was rejected: raises the last exception, or returns
        the last rejected value."""
        if self._error is not None:
            raise self._error
        return self._last

    def _then(self, version: KeyVersion) -> str:
        i = next(i for i, (_, v) in enumerate(self._order) if v is version)
        if i + 1 == len(self._order):
            return "no fallback left"
        role, other = self._order[i + 1]
        return f"retrying with {role} v{other.version}"


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


def program_name() -> str:
    """The default ``service`` of reports: the program's file name."""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
