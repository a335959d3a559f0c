"""Sticky fallback: the versions a provider refused, remembered per Client.

While a provider has revoked a key's primary early (before the rotation
promoted the new one), every ``call_with_fallback`` would try the revoked
primary first: twice the provider traffic, which can trip its lockouts, and
one refusal report per call. So the client remembers a refused version for
a cool-down and goes straight to the fallback meanwhile. The Rust and Node
clients, and ``keyward proxy`` for unchanged programs, behave the same way.

Invariants (:class:`RefusedVersions`):

- A mark is (key ``"ENV/NAME"``, version) → when it was refused (monotonic
  seconds) and the (primary, fallback) versions of the KeySet it was refused
  in. It applies only while it is younger than the cool-down and the KeySet
  in use has those same versions; a call with a KeySet of other versions
  forgets the key's marks, and a handle that receives a new KeySet forgets
  them at once (:meth:`RefusedVersions.forget`).
- A marked primary is skipped only when the fallback is not marked too:
  with both refused, or no fallback, calls go primary first, as without
  the memory. A skipped primary is still tried after the fallback if the
  fallback is refused as well. So, calls made one after another through
  one Client reach a revoked primary at most once per cool-down.
- Reports: the first refusal of a (key, version) is reported at once; the
  next ones within the report interval (the cool-down) are counted, not
  sent, and the next report that goes out carries the count.
- Bounded (:data:`MAX_REMEMBERED` marks and as many report records, the
  oldest dropped first) and safe to share between threads and asyncio
  tasks: plain bookkeeping under a lock, never waiting on anything.
- A cool-down of 0 disables the memory: primary first on every call; the
  refusals of one version are then reported at most every
  :data:`MIN_REPORT_INTERVAL` seconds (``keyward proxy``'s, and the Rust and
  Node clients'), the held-back ones counted into the next report.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TypeVar

from .keyset import KeySet, KeyVersion

__all__ = ["DEFAULT_FALLBACK_COOLDOWN", "MAX_REMEMBERED", "MIN_REPORT_INTERVAL", "RefusedVersions"]

#: Seconds a refused version is skipped for, unless the Client or the call
#: says otherwise (``fallback_cooldown=``).
DEFAULT_FALLBACK_COOLDOWN = 10.0

#: With a cool-down of 0, the shortest time between two auth-failure reports
#: of one version, in seconds.
MIN_REPORT_INTERVAL = 0.2

#: Marks (and report records) kept at most per Client; the oldest go first.
MAX_REMEMBERED = 1024

_V = TypeVar("_V")


@dataclass
class _Mark:
    refused_at: float
    # The KeySet's (primary, fallback) versions when the mark was made.
    versions: tuple[int, int | None]


def versions_of(keyset: KeySet) -> tuple[int, int | None]:
    return keyset.primary.version, keyset.fallback.version if keyset.fallback is not None else None


class RefusedVersions:
    """Which versions were refused, when, and which reports were held back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (key, version) -> mark; insertion order is age (a re-mark moves to the end).
        self._marks: dict[tuple[str, int], _Mark] = {}
        # (key, version) -> [last report sent at, refusals held back since].
        self._reports: dict[tuple[str, int], list[float]] = {}

    def order(self, keyset: KeySet, cooldown: float, now: float) -> list[tuple[str, KeyVersion]]:
        """The versions to try, in order, each with its role
        (``"primary"``/``"fallback"``): the fallback first while the primary
        is marked (and the fallback is not), else the primary first. Forgets
        the key's marks made against a KeySet of other versions."""
        primary, fallback = keyset.primary, keyset.fallback
        if fallback is None:
            return [("primary", primary)]
        normal = [("primary", primary), ("fallback", fallback)]
        if cooldown <= 0:
            return normal
        with self._lock:
            self._forget_other_keysets(keyset)
            if self._live(keyset.key, primary.version, cooldown, now) and not self._live(
                keyset.key, fallback.version, cooldown, now
            ):
                return [("fallback", fallback), ("primary", primary)]
        return normal

    def refused(self, keyset: KeySet, version: int, cooldown: float, now: float) -> int | None:
        """Notes that the provider refused ``version`` of the KeySet's key at
        ``now``. Returns None when no report is due (the refusal is counted
        for the next one), else how many refusals were held back since the
        last report (0 for the first)."""
        ident = (keyset.key, version)
        with self._lock:
            if cooldown > 0:
                self._marks.pop(ident, None)
                self._marks[ident] = _Mark(now, versions_of(keyset))
                _trim(self._marks)
            report = self._reports.get(ident)
            interval = cooldown if cooldown > 0 else MIN_REPORT_INTERVAL
            if report is not None and now - report[0] < interval:
                report[1] += 1
                return None
            held = int(report[1]) if report is not None else 0
            self._reports.pop(ident, None)
            self._reports[ident] = [now, 0]
            _trim(self._reports)
            return held

    def forget(self, key: str) -> None:
        """Forgets the marks of ``key`` (a handle received a new KeySet).
        Held-back report counts stay: they go out with the next report."""
        with self._lock:
            for ident in [i for i in self._marks if i[0] == key]:
                del self._marks[ident]

    def marked(self, key: str) -> list[int]:
        """The versions of ``key`` that carry a mark, live or not (for tests
        and debugging)."""
        with self._lock:
            return sorted(v for k, v in self._marks if k == key)

    def _live(self, key: str, version: int, cooldown: float, now: float) -> bool:
        mark = self._marks.get((key, version))
        return mark is not None and now - mark.refused_at < cooldown

    def _forget_other_keysets(self, keyset: KeySet) -> None:
        current = versions_of(keyset)
        stale = [i for i, m in self._marks.items() if i[0] == keyset.key and m.versions != current]
        for ident in stale:
            del self._marks[ident]


def _trim(entries: dict[tuple[str, int], _V]) -> None:
    """Drops the oldest entries past :data:`MAX_REMEMBERED`."""
    while len(entries) > MAX_REMEMBERED:
        del entries[next(iter(entries))]
