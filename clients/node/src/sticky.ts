// The sticky fallback's memory: which versions the provider refused, and
// when each refusal was last reported. One per Client, shared by every
// callWithFallback through it and by the KeyHandles it made (the same
// behaviour as `keyward proxy --fallback-cooldown` and the Rust and Python
// clients).
//
// Invariants:
// - A mark is (key, version) → when it was refused (monotonic ms), and the
//   primary and fallback versions of the KeySet it was refused in. It
//   applies only while the KeySet in use still has those versions; a
//   KeySet with other versions forgets the key's marks (forKeySet), and a
//   KeyHandle forgets them on every pushed KeySet (forget).
// - A refusal of (key, version) is reported at once unless another was
//   reported less than the interval ago; then it is only counted, and the
//   next report that goes out for it carries the count.
// - Both maps keep at most KEPT entries, dropping the oldest; nothing here
//   sets a timer or waits (JavaScript runs one call's bookkeeping at a
//   time, so no lock is needed).
import type { Client } from "./client";
import type { KeySet } from "./keyset";

/** callWithFallback's cool-down when neither the client nor the call sets one. */
export const DEFAULT_FALLBACK_COOLDOWN_MS = 10_000;

/**
 * With the cool-down 0 (no memory), refusals of one version are still
 * reported at most this often, the others counted into the next report
 * (as `keyward proxy` does).
 */
export const MIN_REPORT_INTERVAL_MS = 200;

/** (key, version) pairs remembered at most, in each map. */
const KEPT = 1024;

interface Mark {
  at: number;
  primary: number;
  fallback: number | undefined;
  /** What the refusal was: its HTTP status and its outcome's type name. */
  status: number;
  what: string;
}

interface Reported {
  at: number;
  held: number;
}

const id = (key: string, version: number) => `${key}\0${version}`;

function remember<V>(map: Map<string, V>, k: string, v: V): void {
  map.delete(k); // re-inserted last: the map's order is the age order
  if (map.size >= KEPT) map.delete(map.keys().next().value as string);
  map.set(k, v);
}

export class Refusals {
  readonly #marks = new Map<string, Mark>();
  readonly #reports = new Map<string, Reported>();

  get size(): number {
    return this.#marks.size;
  }

  /** Forgets the marks of `set.key` made against a KeySet with other versions. */
  forKeySet(set: KeySet): void {
    const prefix = `${set.key}\0`;
    for (const [k, m] of this.#marks) {
      if (k.startsWith(prefix) && (m.primary !== set.primary.version || m.fallback !== set.fallback?.version)) {
        this.#marks.delete(k);
      }
    }
  }

  /** Forgets every mark of `key` (a handle received a new KeySet). */
  forget(key: string): void {
    const prefix = `${key}\0`;
    for (const k of this.#marks.keys()) if (k.startsWith(prefix)) this.#marks.delete(k);
  }

  /** The mark of `version` of `set`, if refused less than `cooldownMs` before `now`. */
  marked(set: KeySet, version: number, now: number, cooldownMs: number): Mark | undefined {
    const m = this.#marks.get(id(set.key, version));
    if (!m || now - m.at >= cooldownMs) return undefined;
    if (m.primary !== set.primary.version || m.fallback !== set.fallback?.version) return undefined;
    return m;
  }

  /** `version` of `set` was refused at `now`. */
  mark(set: KeySet, version: number, now: number, status: number, what: string): void {
    remember(this.#marks, id(set.key, version), {
      at: now,
      primary: set.primary.version,
      fallback: set.fallback?.version,
      status,
      what,
    });
  }

  /** `version` of `key` was accepted: it is not refused any more. */
  unmark(key: string, version: number): void {
    this.#marks.delete(id(key, version));
  }

  /**
   * Counts a refusal of `version` of `key` at `now`. Returns how many
   * refusals were held back since the last report, when this one is to be
   * reported now; undefined when it is held back (the last report is
   * younger than `intervalMs`).
   */
  toReport(key: string, version: number, now: number, intervalMs: number): number | undefined {
    const k = id(key, version);
    const r = this.#reports.get(k);
    if (r && now - r.at < intervalMs) {
      r.held++;
      return undefined;
    }
    const held = r?.held ?? 0;
    remember(this.#reports, k, { at: now, held: 0 });
    return held;
  }
}

const memories = new WeakMap<Client, Refusals>();

/** The refusals remembered by `client`. */
export function refusalsOf(client: Client): Refusals {
  let r = memories.get(client);
  if (!r) {
    r = new Refusals();
    memories.set(client, r);
  }
  return r;
}
