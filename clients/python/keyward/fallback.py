"""Deciding whether a call was refused for its credentials (401/403).

:meth:`keyward.Client.call_with_fallback` tries the primary, then the
fallback; this module only answers "was that an auth rejection, and with
which status?" so that any HTTP library works without keyward knowing it.
"""

from __future__ import annotations

import urllib.error
from typing import Callable

__all__ = ["AuthErrorPredicate", "default_is_auth_error", "status_of"]

#: Told an exception raised by the call, or the value it returned; says
#: whether it is an auth rejection.
AuthErrorPredicate = Callable[[object], bool]

AUTH_STATUSES = frozenset({401, 403})


def _int_attr(obj: object, name: str) -> int | None:
    value = getattr(obj, name, None)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return None


def status_of(outcome: object) -> int | None:
    """The HTTP status carried by an exception or a response, if any.

    Exceptions: ``urllib.error.HTTPError``, or anything with an integer
    ``status``/``status_code``/``code`` attribute, or a ``response`` with a
    ``status_code``/``status`` (``requests.HTTPError``). Returned values:
    an integer ``status``/``status_code`` (``code`` is too generic a name on
    a result to trust).
    """
    if isinstance(outcome, urllib.error.HTTPError):
        return outcome.code
    names = ("status", "status_code", "code") if isinstance(outcome, BaseException) else ("status", "status_code")
    for name in names:
        status = _int_attr(outcome, name)
        if status is not None:
            return status
    if isinstance(outcome, BaseException):
        response = getattr(outcome, "response", None)
        if response is not None:
            for name in ("status_code", "status"):
                status = _int_attr(response, name)
                if status is not None:
                    return status
    return None


def default_is_auth_error(outcome: object) -> bool:
    """True when ``outcome`` (a raised exception or a returned response)
    carries status 401 or 403."""
    return status_of(outcome) in AUTH_STATUSES
