// KeyHandle: the latest KeySet of one key, kept current by a background
// WatchKeys stream. The stream is reopened with exponential backoff
// (100 ms → 5 s) whenever it ends or fails, so a handle outlives agent
// restarts; between the two it keeps serving the last KeySet it had.
// reportUse tells the agent which version worked, through the client's
// key-use counts (keyuse.ts), never waiting for it.
import { EventEmitter } from "node:events";
import { KeywardError, InvalidKeyError, KeyNotFoundError, PermissionDeniedError, UntrustedSocketError } from "./errors";
import type { DeletedKey, KeySet } from "./keyset";
import type { Client } from "./client";
import { defaultService } from "./fallback";
import { noteUse } from "./keyuse";

export interface HandleOptions {
  /** How long handle() waits for the first KeySet, in ms (default 10000). */
  timeoutMs?: number;
}

const MIN_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 5000;

/**
 * Events:
 * - 'change' (next: KeySet, previous: KeySet): a new generation arrived;
 * - 'deleted' (ev: DeletedKey): the key was deleted; `current` keeps the
 *   last KeySet until the key comes back;
 * - 'disconnect' (err: KeywardError | undefined): the stream ended or
 *   failed; the handle reconnects by itself;
 * - 'close'.
 */
export class KeyHandle extends EventEmitter {
  /** ENV/NAME */
  readonly key: string;
  /** The Client this handle watches through. */
  readonly client: Client;
  /** Resolves on the first KeySet; rejects on timeout or a permanent error. */
  readonly ready: Promise<void>;
  #current: KeySet | undefined;
  #closed = false;
  #stream: AsyncIterator<KeySet | DeletedKey> | undefined;
  #wake: (() => void) | undefined;
  #settle!: (err?: Error) => void;

  constructor(client: Client, key: string, opts: HandleOptions = {}) {
    super();
    this.client = client;
    this.key = key;
    const timeoutMs = opts.timeoutMs ?? 10_000;
    let lastError: Error | undefined;
    this.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        // The last error says why (agent down, key missing…); without one
        // the agent accepted the call but sent nothing.
        const why = lastError ? lastError.message : `no answer from the agent at ${client.socket}`;
        this.#settle(new KeywardError(`no KeySet for ${key} within ${timeoutMs} ms: ${why}`, { key, cause: lastError }));
      }, timeoutMs);
      timer.unref();
      this.#settle = (err?: Error) => {
        clearTimeout(timer);
        this.#settle = () => {};
        err ? reject(err) : resolve();
      };
    });
    this.ready.catch(() => {}); // handle() awaits it; never unhandled here.
    void this.#run((e) => (lastError = e));
  }

  /** The latest KeySet. */
  get current(): KeySet {
    if (!this.#current) throw new KeywardError(`handle on ${this.key} has no KeySet yet: await client.handle()`);
    return this.#current;
  }

  /**
   * Tells the agent, in the background, that a call made with `version` of
   * this key succeeded: the evidence that lets a rotation retire the old
   * key (without it, the rotation waits at PROMOTED and alerts
   * `no_evidence`). Call it after each successful call you make with a
   * secret of this handle, naming the version of the secret you used
   * (`ks.primary.version` of the KeySet you took it from), not the current
   * primary after the fact: a rotation may have moved it meanwhile.
   * callWithFallback does this by itself.
   *
   * Cheap; never throws, returns nothing to await: the client sends at most
   * one report per version every USE_REPORT_INTERVAL_MS, carrying the count
   * of successes since the last one; a failure to report is swallowed.
   * `service` names the caller (default: the script's file name).
   */
  reportUse(version: number, service?: string): void {
    noteUse(this.client, this.key, version, service ?? defaultService());
  }

  /** Stops watching. `current` keeps its last value. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    void this.#stream?.return?.();
    this.#wake?.();
    this.#settle(new KeywardError(`handle on ${this.key} was closed`, { key: this.key }));
    this.emit("close");
  }

  async #run(noteError: (e: Error) => void): Promise<void> {
    let delay = MIN_BACKOFF_MS;
    while (!this.#closed) {
      let error: KeywardError | undefined;
      const stream = this.client.watch([this.key]);
      this.#stream = stream;
      try {
        for await (const ev of { [Symbol.asyncIterator]: () => stream }) {
          delay = MIN_BACKOFF_MS;
          this.#apply(ev);
        }
      } catch (e) {
        error = e instanceof KeywardError ? e : new KeywardError(String(e), { key: this.key, cause: e });
      }
      if (this.#closed) break;
      if (error) {
        noteError(error);
        // Before the first KeySet, an answer the agent will keep giving
        // (no such key, not allowed, bad name) fails handle() at once.
        if (!this.#current && isPermanent(error)) {
          this.#settle(error);
          this.close();
          break;
        }
      }
      this.emit("disconnect", error);
      await this.#sleep(delay * (0.8 + 0.4 * Math.random()));
      delay = Math.min(delay * 2, MAX_BACKOFF_MS);
    }
  }

  #apply(ev: KeySet | DeletedKey): void {
    if (ev.deleted) {
      this.emit("deleted", ev);
      return;
    }
    const prev = this.#current;
    this.#current = ev;
    if (!prev) {
      this.#settle();
    } else if (prev.generation !== ev.generation || prev.primary.fingerprint !== ev.primary.fingerprint) {
      this.emit("change", ev, prev);
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(t);
        this.#wake = undefined;
        resolve();
      };
    });
  }
}

function isPermanent(e: KeywardError): boolean {
  return (
    e instanceof KeyNotFoundError ||
    e instanceof InvalidKeyError ||
    e instanceof PermissionDeniedError ||
    e instanceof UntrustedSocketError
  );
}
