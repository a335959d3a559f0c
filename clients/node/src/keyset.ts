// The client's view of a key: KeySet and KeyVersion, converted from the
// generated proto types. A KeyVersion's secret is reachable only through
// its `secret` getter: console.log, util.inspect and JSON.stringify show
// the fingerprint instead, so a secret cannot leak into a log by accident.
import { inspect } from "node:util";
import type { KeySet__Output } from "./generated/keyward/v1/KeySet";
import type { KeyVersion__Output } from "./generated/keyward/v1/KeyVersion";
import type { Timestamp__Output } from "./generated/google/protobuf/Timestamp";
import type { KeyRef } from "./generated/keyward/v1/KeyRef";
import type { KeyEvent__Output } from "./generated/keyward/v1/KeyEvent";
import { InvalidKeyError, KeywardError } from "./errors";

/** Where a key stands in its rotation (see README "Rotation"). */
export type RotationState = "STEADY" | "STAGED" | "PROMOTED";

/** One numbered value of a key. */
export class KeyVersion {
  readonly version: number;
  /** HMAC of the secret under the install's salt: safe to log and compare. */
  readonly fingerprint: string;
  readonly createdAt: Date | undefined;
  readonly expiresAt: Date | undefined;
  readonly #secret: Buffer;

  constructor(v: { version: number; secret: Buffer; fingerprint: string; createdAt?: Date; expiresAt?: Date }) {
    this.version = v.version;
    this.fingerprint = v.fingerprint;
    this.createdAt = v.createdAt;
    this.expiresAt = v.expiresAt;
    this.#secret = v.secret;
  }

  /** The secret bytes. The only way to them: grep for `.secret`. */
  get secret(): Buffer {
    return this.#secret;
  }

  /** What JSON.stringify shows: everything but the secret. */
  toJSON(): { version: number; fingerprint: string; createdAt?: string; expiresAt?: string } {
    return {
      version: this.version,
      fingerprint: this.fingerprint,
      createdAt: this.createdAt?.toISOString(),
      expiresAt: this.expiresAt?.toISOString(),
    };
  }

  [inspect.custom](): string {
    return `KeyVersion { version: ${this.version}, fingerprint: '${this.fingerprint}' }`;
  }
}

/** The current primary and fallback of a key. */
export interface KeySet {
  /** ENV/NAME */
  readonly key: string;
  /** Bumped on every change of the key. */
  readonly generation: number;
  readonly state: RotationState;
  readonly primary: KeyVersion;
  /** The other usable version during a rotation. */
  readonly fallback?: KeyVersion;
  /** From watch(): why this KeySet was sent (initial, staged, promoted…). */
  readonly reason?: string;
  readonly deleted?: false;
}

/** From watch(): the key was deleted (it may be created again later). */
export interface DeletedKey {
  readonly key: string;
  readonly reason: "deleted";
  readonly deleted: true;
}

/** Parses "ENV/NAME"; the agent checks the parts' characters. */
export function parseKey(key: string): KeyRef {
  const parts = typeof key === "string" ? key.split("/") : [];
  if (parts.length !== 2 || !parts[0] || !parts[1]) {
    throw new InvalidKeyError(`invalid key ${JSON.stringify(key)}: a key is ENV/NAME, e.g. prod/billing-api`, {
      key: String(key),
    });
  }
  return { environment: parts[0], name: parts[1] };
}

function toDate(t: Timestamp__Output | null): Date | undefined {
  if (!t) return undefined;
  return new Date(Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6));
}

function toVersion(v: KeyVersion__Output | null): KeyVersion | undefined {
  if (!v) return undefined;
  return new KeyVersion({
    version: Number(v.version),
    // Own copy: the decoded bytes may be a view into a larger receive buffer.
    secret: Buffer.from(v.secret),
    fingerprint: v.fingerprint,
    createdAt: toDate(v.createdAt),
    expiresAt: toDate(v.expiresAt),
  });
}

/** Converts a proto KeySet; `null` when it has no primary (a deleted key). */
export function fromProto(ks: KeySet__Output, fallbackKey: string, reason?: string): KeySet | null {
  const key = ks.key ? `${ks.key.environment}/${ks.key.name}` : fallbackKey;
  const primary = toVersion(ks.primary);
  if (!primary) return null;
  const state = ks.state;
  if (state !== "STEADY" && state !== "STAGED" && state !== "PROMOTED") {
    throw new KeywardError(`agent sent ${key} in unknown rotation state ${String(state)}: upgrade @keyward/client`, {
      key,
    });
  }
  const fallback = toVersion(ks.fallback);
  return Object.freeze({
    key,
    generation: Number(ks.generation),
    state,
    primary,
    ...(fallback ? { fallback } : {}),
    ...(reason !== undefined ? { reason } : {}),
  });
}

/**
 * Converts one WatchKeys event: its KeySet, or a DeletedKey when it has
 * none (the key was deleted). `fallbackKey` names the key when the event
 * does not.
 */
export function fromEvent(ev: KeyEvent__Output, fallbackKey: string): KeySet | DeletedKey {
  const proto = ev.keySet;
  const set = proto ? fromProto(proto, fallbackKey, ev.reason) : null;
  if (set) return set;
  const key = proto?.key ? `${proto.key.environment}/${proto.key.name}` : fallbackKey;
  return Object.freeze({ key, reason: "deleted", deleted: true });
}
