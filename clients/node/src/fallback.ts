// callWithFallback: try the primary secret, and on an auth rejection
// (401/403) tell the agent and try the fallback. A success tells the agent
// which version worked (keyuse.ts). Reports are fire and forget: they must
// never slow down or fail the caller's request, so they are neither
// awaited nor allowed to throw.
//
// Sticky fallback (sticky.ts): a refused version is remembered on the
// Client for the cool-down; while the KeySet keeps the same versions, calls
// skip a refused primary and go straight to an unrefused fallback, so a
// provider that revoked the primary early sees it at most once per
// cool-down from this client. Refusals of one version are reported at
// most once per cool-down, with the count of the ones held back.
import * as path from "node:path";
import { debuglog } from "node:util";
import type { Client } from "./client";
import type { KeyHandle } from "./handle";
import type { KeySet, KeyVersion } from "./keyset";
import { noteUse } from "./keyuse";
import { KeywardError } from "./errors";
import { MIN_REPORT_INTERVAL_MS, refusalsOf } from "./sticky";

const debug = debuglog("keyward");

export interface FallbackOptions {
  /**
   * Whether a thrown error or a returned value is an auth rejection.
   * Default: `status`, `statusCode` or `response.status` is 401 or 403
   * (fetch Response, most HTTP client errors).
   */
  isAuthError?: (errOrResult: unknown) => boolean;
  /** Named in auth-failure and key-use reports (default: the script's file name). */
  service?: string;
  /**
   * This call's cool-down, in ms (default: the client's
   * `fallbackCooldownMs`, 10000). 0: try the primary first.
   */
  fallbackCooldownMs?: number;
}

/** `value` as a cool-down in ms (`dflt` when undefined); throws when it is not one. */
export function cooldownFrom(value: number | undefined, dflt: number): number {
  if (value === undefined) return dflt;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new KeywardError(`fallbackCooldownMs ${String(value)} is not a duration: pass milliseconds, 0 or more`);
  }
  return value;
}

/** The HTTP status carried by an error or a response-like value, if any. */
export function statusOf(x: unknown): number | undefined {
  if (typeof x !== "object" || x === null) return undefined;
  const o = x as { status?: unknown; statusCode?: unknown; response?: { status?: unknown } };
  for (const v of [o.status, o.statusCode, o.response?.status]) {
    if (typeof v === "number") return v;
  }
  return undefined;
}

/** The default auth-rejection test: status 401 or 403. */
export function isAuthRejection(x: unknown): boolean {
  const s = statusOf(x);
  return s === 401 || s === 403;
}

/**
 * Whether a success is worth reporting as key use: no HTTP status, or one
 * below 400. A 5xx does not show that the key works, and a false report
 * could let a rotation retire the only key that does.
 */
function worked(value: unknown): boolean {
  const s = statusOf(value);
  return s === undefined || s < 400;
}

export function defaultService(): string {
  return process.argv[1] ? path.basename(process.argv[1]) : "node";
}

/**
 * The type of an outcome, for a report's detail: never its text (an
 * error's message may quote a request, headers included) nor its value.
 */
function typeName(x: unknown): string {
  if (x === null) return "null";
  if (typeof x !== "object" && typeof x !== "function") return typeof x;
  const name = (x as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === "string" && name !== "" ? name : "Object";
}

type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

export async function callWithFallback<T>(
  client: Client,
  key: string | KeyHandle,
  fn: (secret: Buffer) => Promise<T>,
  opts: FallbackOptions,
): Promise<T> {
  const isAuth = opts.isAuthError ?? isAuthRejection;
  const service = opts.service ?? defaultService();
  const set: KeySet = typeof key === "string" ? await client.get(key) : key.current;
  const reporter = typeof key === "string" ? client : key.client;
  const cooldown = cooldownFrom(opts.fallbackCooldownMs, reporter.fallbackCooldownMs);
  const interval = cooldown > 0 ? cooldown : MIN_REPORT_INTERVAL_MS;
  const refusals = refusalsOf(reporter);
  refusals.forKeySet(set);

  const report = (version: number, status: number, detail: string) => {
    const held = refusals.toReport(set.key, version, performance.now(), interval);
    if (held === undefined) return;
    const more = held > 0 ? ` (and ${held} more refusals since the last report)` : "";
    reporter.reportAuthFailure(set.key, version, status, service, `${detail}${more}`).catch((e: unknown) => {
      debug("could not report the refusal of %s v%d: %s", set.key, version, e instanceof Error ? e.message : String(e));
    });
  };

  // Within the cool-down of a refusal of the primary, and with a fallback
  // not refused itself: the fallback first, and the primary only if the
  // fallback is refused too (as the Rust and Python clients do). Otherwise
  // the primary, then the fallback.
  const now = performance.now();
  const fallback = set.fallback;
  const skipped =
    cooldown > 0 && fallback && !refusals.marked(set, fallback.version, now, cooldown)
      ? refusals.marked(set, set.primary.version, now, cooldown)
      : undefined;
  const versions: KeyVersion[] =
    skipped && fallback ? [fallback, set.primary] : [set.primary, ...(fallback ? [fallback] : [])];

  let last: Outcome<T> | undefined;
  let triedPrimary = false;
  for (const [i, v] of versions.entries()) {
    if (v === set.primary) triedPrimary = true;
    try {
      last = { ok: true, value: await fn(v.secret) };
    } catch (error) {
      last = { ok: false, error };
    }
    const subject = last.ok ? last.value : last.error;
    if (!isAuth(subject)) {
      if (last.ok && worked(last.value)) {
        refusals.unmark(set.key, v.version);
        noteUse(reporter, set.key, v.version, service);
      }
      break;
    }
    const status = statusOf(subject) ?? 0;
    const what = typeName(subject);
    if (cooldown > 0) refusals.mark(set, v.version, performance.now(), status, what);
    const next = versions[i + 1];
    const then = next
      ? `retrying with ${next === set.primary ? "primary" : "fallback"} v${next.version}`
      : "no fallback left";
    report(v.version, status, `${what}; ${then}`);
  }
  if (skipped && !triedPrimary) {
    // Not sent, but still a version the provider refuses: counted as a
    // refusal (as `keyward proxy` does), so the agent hears of it with
    // the next report and its alerts stay open.
    report(set.primary.version, skipped.status, `${skipped.what}; skipped within the cool-down, fallback v${fallback!.version} used`);
  }
  // The first success, or the last attempt as it was: a value (e.g. the
  // fallback's 401 Response) is returned, an error thrown.
  if (!last!.ok) throw last!.error;
  return last!.value;
}
