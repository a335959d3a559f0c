"""What the agent serves: a key's state (:class:`KeySet`) and its versions.

These are plain frozen values converted from the protobuf messages once, so
callers never handle generated types. A :class:`KeyVersion`'s ``repr`` shows
its fingerprint, never its secret: printing or logging a KeySet is safe.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from ._proto import keys_pb2
from .errors import InvalidKey, SecretNotText

__all__ = ["RotationState", "KeyVersion", "KeySet", "parse_key", "format_key"]


class RotationState(str, enum.Enum):
    """Where a key is in its rotation (see README "Rotation")."""

    UNSPECIFIED = "unspecified"
    #: Only a primary.
    STEADY = "steady"
    #: A new key was staged: primary is current, fallback is the new key.
    STAGED = "staged"
    #: The new key was promoted: primary is new, fallback is the old key.
    PROMOTED = "promoted"

    @classmethod
    def from_proto(cls, value: int) -> "RotationState":
        by_number: dict[int, RotationState] = {
            int(keys_pb2.STEADY): cls.STEADY,
            int(keys_pb2.STAGED): cls.STAGED,
            int(keys_pb2.PROMOTED): cls.PROMOTED,
        }
        return by_number.get(int(value), cls.UNSPECIFIED)


@dataclass(frozen=True, eq=True)
class KeyVersion:
    """One numbered value of a key.

    ``secret`` is the raw secret material; ``text`` is the same decoded as
    UTF-8 (most API keys are text). Both are left out of ``repr`` and
    ``str``: use the ``fingerprint`` to log or compare versions.
    """

    version: int
    secret: bytes = field(repr=False)
    fingerprint: str
    created_at: datetime | None
    expires_at: datetime | None

    def __repr__(self) -> str:
        expires = f", expires_at={self.expires_at.isoformat()}" if self.expires_at else ""
        return f"KeyVersion(version={self.version}, fingerprint={self.fingerprint!r}{expires})"

    __str__ = __repr__

    @property
    def text(self) -> str:
        """The secret decoded as UTF-8. Raises
        :class:`~keyward.SecretNotText` when it is not UTF-8; the error
        names the version and the offset of the first bad byte, never the
        bytes (a ``UnicodeDecodeError`` would carry the whole secret)."""
        try:
            return self.secret.decode("utf-8")
        except UnicodeDecodeError as e:
            at = e.start
        # Raised outside the except block, so the UnicodeDecodeError (and
        # the secret in its .object) is not chained to it.
        raise SecretNotText(
            f"version {self.version} (fingerprint {self.fingerprint!r}) is not UTF-8 text: invalid byte at "
            f"offset {at} of {len(self.secret)}; use .secret for the raw bytes"
        )

    @classmethod
    def from_proto(cls, m: keys_pb2.KeyVersion) -> "KeyVersion":
        return cls(
            version=m.version,
            secret=bytes(m.secret),
            fingerprint=m.fingerprint,
            created_at=_time(m.created_at) if m.HasField("created_at") else None,
            expires_at=_time(m.expires_at) if m.HasField("expires_at") else None,
        )


@dataclass(frozen=True)
class KeySet:
    """The state of a key: its primary, its optional fallback, and the
    ``generation`` the agent bumps on every change."""

    key: str
    generation: int
    state: RotationState
    primary: KeyVersion
    fallback: KeyVersion | None

    @classmethod
    def from_proto(cls, m: keys_pb2.KeySet) -> "KeySet":
        return cls(
            key=format_key(m.key),
            generation=m.generation,
            state=RotationState.from_proto(m.state),
            primary=KeyVersion.from_proto(m.primary),
            fallback=KeyVersion.from_proto(m.fallback) if m.HasField("fallback") else None,
        )


def _time(ts: Timestamp) -> datetime:
    when: datetime = ts.ToDatetime(tzinfo=timezone.utc)
    return when


def parse_key(key: str) -> keys_pb2.KeyRef:
    """``"ENV/NAME"`` to a KeyRef. Only the shape is checked here; the agent
    checks the names themselves (one rule, one place)."""
    if not isinstance(key, str):
        raise InvalidKey(f"a key is a string ENV/NAME, e.g. prod/billing-api, not {type(key).__name__}")
    env, sep, name = key.partition("/")
    if not sep or not env or not name:
        raise InvalidKey(f"key {key!r} is not ENV/NAME: write it as e.g. prod/billing-api")
    return keys_pb2.KeyRef(environment=env, name=name)


def format_key(ref: keys_pb2.KeyRef) -> str:
    return f"{ref.environment}/{ref.name}"
