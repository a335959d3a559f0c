"""Key-use reports: telling the agent which versions of a key work.

During a rotation the agent retires the old key only once callers have
reported successful use of the new primary (``ReportKeyUse``); without that
evidence the rotation waits at PROMOTED and alerts ``no_evidence``.
:meth:`keyward.Client.call_with_fallback` and
:meth:`keyward.KeyHandle.report_use` count successes here.

Invariants:

- At most one report per (key, version) per :data:`USE_REPORT_INTERVAL`
  seconds from one :class:`~keyward.Client` (its handles share the count).
  A report carries the successes counted since the previous one; successes
  counted after the last report of a version are sent with the next report,
  if another success comes once the interval has passed, and never
  otherwise.
- :class:`UseCounts` is plain bookkeeping under a lock: it never waits on
  the agent. The client sends the report from a daemon thread; a failure is
  logged at debug level and never reaches the caller, and is not retried
  sooner than the interval.
"""

from __future__ import annotations

import threading

__all__ = ["USE_REPORT_INTERVAL", "UseCounts"]

#: At most one key-use report per (key, version) per this many seconds,
#: from one Client.
USE_REPORT_INTERVAL = 5.0

# (key, version) pairs remembered at most. Past it, pairs not reported
# within the interval are forgotten first, then the one reported longest
# ago: a process uses a handful of keys, two versions each at a time.
_VERSIONS_KEPT = 256


class UseCounts:
    """Successes counted per (key, version), and when each was last
    reported. Safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (key, version) -> [last report (monotonic seconds), unreported]
        self._versions: dict[tuple[str, int], list[float]] = {}

    def record(self, key: str, version: int, now: float) -> int | None:
        """Counts one success with ``version`` of ``key`` at ``now``
        (``time.monotonic()``). Returns how many successes to report now,
        or None while the last report of this version is younger than
        :data:`USE_REPORT_INTERVAL` (the success is kept for the next)."""
        with self._lock:
            counted = self._versions.get((key, version))
            if counted is not None:
                counted[1] += 1
                if now - counted[0] < USE_REPORT_INTERVAL:
                    return None
                due = int(counted[1])
                counted[0], counted[1] = now, 0
                return due
            if len(self._versions) >= _VERSIONS_KEPT:
                self._make_room(now)
            self._versions[(key, version)] = [now, 0]
            return 1

    def _make_room(self, now: float) -> None:
        self._versions = {k: c for k, c in self._versions.items() if now - c[0] < USE_REPORT_INTERVAL}
        if len(self._versions) >= _VERSIONS_KEPT:
            oldest = min(self._versions, key=lambda k: self._versions[k][0])
            del self._versions[oldest]

    def __len__(self) -> int:
        with self._lock:
            return len(self._versions)
