// KeyHandle: the latest KeySet of one key, kept current by a background
// WatchKeys stream. The stream is reopened with exponential backoff
// (100 ms → 5 s) whenever it ends or fails, so a handle outlives agent
// restarts; between the two it keeps serving the last KeySet it had.
// reportUse tells the agent which version worked, through the client's
// key-use counts (keyuse.ts), never waiting for it. Every pushed KeySet
// clears the sticky fallback's marks of the key (sticky.ts).
//
// Keeping the process alive: until the first KeySet arrives the stream
// and its retry timer are ref'd (so `await client.handle()` is not cut
// short); after that they are unref'd, unless `persistent: true`: a handle
// follows the key for as long as the program runs, and does not make it
// run. The stream is watchstream.ts's (grpc-js cannot unref a call).
import { EventEmitter } from "node:events";
import {
  KeywardError,
  InvalidKeyError,
  KeyNotFoundError,
  PermissionDeniedError,
  UntrustedSocketError,
  mapCallError,
} from "./errors";
import { fromEvent, parseKey, type DeletedKey, type KeySet } from "./keyset";
import type { Client } from "./client";
import { defaultService } from "./fallback";
import { noteUse } from "./keyuse";
import { internalsOf } from "./internal";
import { refusalsOf } from "./sticky";
import { WatchStream } from "./watchstream";

export interface HandleOptions {
  /** How long handle() waits for the first KeySet, in ms (default 10000). */
  timeoutMs?: number;
  /**
   * Whether the handle keeps the process alive (default false, as an
   * unref'd timer: once the first KeySet has arrived, a program whose only
   * remaining work is this handle exits). The name and meaning are those
   * of `fs.watch`'s `persistent` option.
   */
  persistent?: boolean;
}

/** The events of a KeyHandle and their listeners' arguments. */
export interface KeyHandleEvents {
  /** A new generation of the key arrived: `next` is now `handle.current`. */
  change: [next: KeySet, previous: KeySet];
  /** The key was deleted; `current` keeps the last KeySet until it comes back. */
  deleted: [event: DeletedKey];
  /** The stream ended (`err` undefined) or failed; the handle reconnects by itself. */
  disconnect: [err: KeywardError | undefined];
  /** close() was called (or the client closed). */
  close: [];
}

type Listener<E extends keyof KeyHandleEvents> = (...args: KeyHandleEvents[E]) => void;

// Typed overloads of the EventEmitter methods (merged into the class
// below): `handle.on("change", (next, prev) => …)` gets KeySets, and an
// unknown event name or a listener of the wrong type does not compile.
export interface KeyHandle {
  on<E extends keyof KeyHandleEvents>(event: E, listener: Listener<E>): this;
  once<E extends keyof KeyHandleEvents>(event: E, listener: Listener<E>): this;
  addListener<E extends keyof KeyHandleEvents>(event: E, listener: Listener<E>): this;
  prependListener<E extends keyof KeyHandleEvents>(event: E, listener: Listener<E>): this;
  prependOnceListener<E extends keyof KeyHandleEvents>(event: E, listener: Listener<E>): this;
  off<E extends keyof KeyHandleEvents>(event: E, listener: Listener<E>): this;
  removeListener<E extends keyof KeyHandleEvents>(event: E, listener: Listener<E>): this;
  removeAllListeners(event?: keyof KeyHandleEvents): this;
  emit<E extends keyof KeyHandleEvents>(event: E, ...args: KeyHandleEvents[E]): boolean;
  listenerCount(event: keyof KeyHandleEvents): number;
  listeners<E extends keyof KeyHandleEvents>(event: E): Listener<E>[];
  rawListeners<E extends keyof KeyHandleEvents>(event: E): Listener<E>[];
}

const MIN_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 5000;

/**
 * Events (KeyHandleEvents, typed):
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
  readonly #persistent: boolean;
  #stream: WatchStream | undefined;
  #wake: (() => void) | undefined;
  #settle!: (err?: Error) => void;

  constructor(client: Client, key: string, opts: HandleOptions = {}) {
    super();
    this.client = client;
    this.key = key;
    this.#persistent = opts.persistent ?? false;
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

  /** Whether this handle keeps the process alive (the `persistent` option). */
  get persistent(): boolean {
    return this.#persistent;
  }

  /**
   * Whether the stream and its retry timer hold the process open: until
   * the first KeySet (handle() is being awaited), then if persistent.
   */
  #holdsProcess(): boolean {
    return this.#persistent || !this.#current;
  }

  /** Stops watching. `current` keeps its last value. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stream?.cancel();
    this.#wake?.();
    this.#settle(new KeywardError(`handle on ${this.key} was closed`, { key: this.key }));
    this.emit("close");
  }

  async #run(noteError: (e: Error) => void): Promise<void> {
    let delay = MIN_BACKOFF_MS;
    const refs = [parseKey(this.key)];
    while (!this.#closed) {
      let error: KeywardError | undefined;
      try {
        const socket = await internalsOf(this.client).checkedSocket();
        if (this.#closed) break;
        const stream = new WatchStream(
          socket,
          refs,
          (ev) => {
            delay = MIN_BACKOFF_MS;
            this.#apply(fromEvent(ev, this.key));
          },
          this.#holdsProcess(),
        );
        this.#stream = stream;
        await stream.done;
      } catch (e) {
        error = mapCallError(e, this.client.socket, this.key);
      }
      this.#stream = undefined;
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
      refusalsOf(this.client).forget(this.key);
      this.emit("deleted", ev);
      return;
    }
    const prev = this.#current;
    this.#current = ev;
    if (!prev) {
      this.#settle();
      if (!this.#holdsProcess()) this.#stream?.unref();
    } else if (prev.generation !== ev.generation || prev.primary.fingerprint !== ev.primary.fingerprint) {
      // A pushed KeySet: the versions the provider refused may be back in
      // favour (rolled back, re-promoted…), so the sticky fallback starts
      // over for this key.
      refusalsOf(this.client).forget(this.key);
      this.emit("change", ev, prev);
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      if (!this.#holdsProcess()) t.unref();
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
