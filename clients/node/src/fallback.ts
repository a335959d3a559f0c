// callWithFallback: try the primary secret, and on an auth rejection
// (401/403) tell the agent and try the fallback. A success tells the agent
// which version worked (keyuse.ts). Reports are fire and forget: they must
// never slow down or fail the caller's request, so they are neither
// awaited nor allowed to throw.
import * as path from "node:path";
import type { Client } from "./client";
import type { KeyHandle } from "./handle";
import type { KeySet, KeyVersion } from "./keyset";
import { noteUse } from "./keyuse";

export interface FallbackOptions {
  /**
   * Whether a thrown error or a returned value is an auth rejection.
   * Default: `status`, `statusCode` or `response.status` is 401 or 403
   * (fetch Response, most HTTP client errors).
   */
  isAuthError?: (errOrResult: unknown) => boolean;
  /** Named in auth-failure and key-use reports (default: the script's file name). */
  service?: string;
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

  const versions: KeyVersion[] = [set.primary, ...(set.fallback ? [set.fallback] : [])];
  let last: Outcome<T> | undefined;
  for (const [i, v] of versions.entries()) {
    try {
      last = { ok: true, value: await fn(v.secret) };
    } catch (error) {
      last = { ok: false, error };
    }
    const subject = last.ok ? last.value : last.error;
    if (!isAuth(subject)) {
      if (last.ok && worked(last.value)) noteUse(reporter, set.key, v.version, service);
      break;
    }
    reporter
      .reportAuthFailure(set.key, v.version, statusOf(subject) ?? 0, service, `${i === 0 ? "primary" : "fallback"} refused`)
      .catch(() => {});
  }
  // The first success, or the last attempt as it was: a value (e.g. the
  // fallback's 401 Response) is returned, an error thrown.
  if (!last!.ok) throw last!.error;
  return last!.value;
}
