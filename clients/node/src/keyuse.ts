// Key-use reports: telling the agent which versions of a key work.
//
// During a rotation the agent retires the old key only once callers have
// reported successful use of the new primary (ReportKeyUse); without that
// evidence the rotation waits at PROMOTED and alerts `no_evidence`.
// callWithFallback and KeyHandle.reportUse count successes here.
//
// Invariants:
// - At most one report per (key, version) per USE_REPORT_INTERVAL_MS from
//   one Client (its handles share the count). A report carries the
//   successes counted since the previous one; successes counted after the
//   last report of a version are sent with the next report, if another
//   success comes once the interval has passed, and never otherwise.
// - Nothing here waits on the agent and no timer is set: UseCounts is plain
//   bookkeeping, the report is an RPC whose promise nobody awaits, and its
//   failure is swallowed (logged with NODE_DEBUG=keyward). A report that
//   fails is not retried sooner than the interval.
import { debuglog } from "node:util";
import type { Client } from "./client";

/** At most one key-use report per (key, version) per this many ms, from one Client. */
export const USE_REPORT_INTERVAL_MS = 5000;

// (key, version) pairs remembered at most. Past it, pairs not reported
// within the interval are forgotten first, then the one reported longest
// ago: a process uses a handful of keys, two versions each at a time.
const VERSIONS_KEPT = 256;

const debug = debuglog("keyward");

interface Counted {
  lastReport: number;
  unreported: number;
}

/** Successes counted per (key, version), and when each was last reported. */
export class UseCounts {
  readonly #versions = new Map<string, Counted>();

  get size(): number {
    return this.#versions.size;
  }

  /**
   * Counts one success with `version` of `key` at `now` (ms, monotonic).
   * Returns how many successes to report now, or undefined while the last
   * report of this version is younger than USE_REPORT_INTERVAL_MS (the
   * success is kept for the next report).
   */
  record(key: string, version: number, now: number): number | undefined {
    const id = `${key}\0${version}`;
    const counted = this.#versions.get(id);
    if (counted) {
      counted.unreported++;
      if (now - counted.lastReport < USE_REPORT_INTERVAL_MS) return undefined;
      const due = counted.unreported;
      counted.lastReport = now;
      counted.unreported = 0;
      return due;
    }
    if (this.#versions.size >= VERSIONS_KEPT) this.#makeRoom(now);
    this.#versions.set(id, { lastReport: now, unreported: 0 });
    return 1;
  }

  #makeRoom(now: number): void {
    for (const [id, c] of this.#versions) {
      if (now - c.lastReport >= USE_REPORT_INTERVAL_MS) this.#versions.delete(id);
    }
    if (this.#versions.size < VERSIONS_KEPT) return;
    let oldest: [string, number] | undefined;
    for (const [id, c] of this.#versions) {
      if (!oldest || c.lastReport < oldest[1]) oldest = [id, c.lastReport];
    }
    if (oldest) this.#versions.delete(oldest[0]);
  }
}

const countsOf = new WeakMap<Client, UseCounts>();

/**
 * Counts a success with `version` of `key` through `client`, and sends the
 * report when one is due, without waiting for it; never throws.
 */
export function noteUse(client: Client, key: string, version: number, service: string): void {
  let counts = countsOf.get(client);
  if (!counts) {
    counts = new UseCounts();
    countsOf.set(client, counts);
  }
  const successes = counts.record(key, version, performance.now());
  if (successes === undefined) return;
  client.reportKeyUse(key, version, service, successes).catch((e: unknown) => {
    debug("could not report the use of %s v%d: %s", key, version, e instanceof Error ? e.message : String(e));
  });
}
