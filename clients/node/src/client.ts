// Client: one gRPC channel to the agent's service socket, made at the first
// call once trust.ts has checked who owns the socket (nothing is sent
// before). Every call maps its failure through errors.ts, so callers see
// KeywardError subclasses only, and carries the x-keyward-client header
// (clientname.ts, via proto.ts); handles and callWithFallback are built on
// get/watch/report here.
import * as path from "node:path";
import type { ClientReadableStream } from "@grpc/grpc-js";
import { KeywardError, mapCallError } from "./errors";
import { agentUidFrom, checkSocket } from "./trust";
import { keysStub } from "./proto";
import { fromEvent, fromProto, parseKey, type DeletedKey, type KeySet } from "./keyset";
import type { KeysClient } from "./generated/keyward/v1/Keys";
import type { KeyRef } from "./generated/keyward/v1/KeyRef";
import type { KeyEvent__Output } from "./generated/keyward/v1/KeyEvent";
import { KeyHandle, type HandleOptions } from "./handle";
import { callWithFallback, cooldownFrom, type FallbackOptions } from "./fallback";
import { registerInternals } from "./internal";
import { DEFAULT_FALLBACK_COOLDOWN_MS } from "./sticky";

/** The socket used when neither the option nor KEYWARD_SOCKET is set. */
export const DEFAULT_SOCKET = "/run/keyward/keys.sock";

export interface ClientOptions {
  /** Service socket path (default: env KEYWARD_SOCKET, else /run/keyward/keys.sock). */
  socket?: string;
  /** Deadline of each unary call, in ms (default 5000). */
  timeoutMs?: number;
  /**
   * The uid keywardd runs as, trusted besides root and this process's user
   * (default: env KEYWARD_AGENT_UID). See README "Who serves the socket".
   */
  agentUid?: number;
  /**
   * How long callWithFallback goes straight to the fallback after the
   * provider refused the primary, in ms (default 30000; 0: try the primary
   * first on every call). See README "Sticky fallback".
   */
  fallbackCooldownMs?: number;
}

export class Client {
  /** The absolute socket path this client dials. */
  readonly socket: string;
  /** The uid keywardd runs as, trusted besides root and this user. */
  readonly agentUid: number | undefined;
  /** callWithFallback's default cool-down after a refusal, in ms. */
  readonly fallbackCooldownMs: number;
  #stub: KeysClient | undefined;
  #real: string | undefined;
  #checking: Promise<string> | undefined;
  #closed = false;
  /** Unary calls started and not yet settled: close() lets them finish. */
  #inflight = 0;
  readonly #timeoutMs: number;
  readonly #handles = new Set<KeyHandle>();

  constructor(opts: ClientOptions = {}) {
    this.socket = path.resolve(opts.socket || process.env.KEYWARD_SOCKET || DEFAULT_SOCKET);
    this.#timeoutMs = opts.timeoutMs ?? 5000;
    this.agentUid = agentUidFrom(opts.agentUid);
    this.fallbackCooldownMs = cooldownFrom(opts.fallbackCooldownMs, DEFAULT_FALLBACK_COOLDOWN_MS);
    registerInternals(this, { checkedSocket: () => this.#checkedSocket() });
  }

  #closedError(): KeywardError {
    return new KeywardError(`this keyward client (${this.socket}) is closed`);
  }

  /**
   * The socket's real path, once it passed checkSocket. A failed check
   * rejects this call; the next one checks again.
   */
  #checkedSocket(): Promise<string> {
    if (this.#closed) return Promise.reject(this.#closedError());
    if (this.#real) return Promise.resolve(this.#real);
    this.#checking ??= checkSocket(this.socket, this.agentUid).then(
      (real) => {
        this.#real = real;
        return real;
      },
      (e) => {
        this.#checking = undefined;
        throw e;
      },
    );
    return this.#checking;
  }

  /**
   * The stub, on a channel made on the checked socket's real path. A call
   * that asked before close() gets it (close() waits for such calls).
   */
  #keys(): Promise<KeysClient> {
    if (this.#closed) return Promise.reject(this.#closedError());
    if (this.#stub) return Promise.resolve(this.#stub);
    return this.#checkedSocket().then((real) => {
      this.#stub ??= keysStub(real);
      return this.#stub;
    });
  }

  /**
   * Counts `call` in flight until it settles; the last one to settle after
   * close() closes the channel.
   */
  #tracked<T>(call: Promise<T>): Promise<T> {
    this.#inflight++;
    const settled = () => {
      if (--this.#inflight === 0 && this.#closed) this.#stub?.close();
    };
    call.then(settled, settled);
    return call;
  }

  #deadline(): Date {
    return new Date(Date.now() + this.#timeoutMs);
  }

  /** The current primary and fallback of `key` (ENV/NAME). */
  async get(key: string): Promise<KeySet> {
    const ref = parseKey(key);
    return this.#tracked(this.#getKey(ref, key));
  }

  async #getKey(ref: KeyRef, key: string): Promise<KeySet> {
    const stub = await this.#keys();
    return new Promise((resolve, reject) => {
      stub.getKey({ key: ref }, { deadline: this.#deadline() }, (err, ks) => {
        if (err || !ks) return reject(mapCallError(err, this.socket, key));
        try {
          const set = fromProto(ks, key);
          if (!set) throw mapCallError(new Error(`agent sent ${key} without a primary`), this.socket, key);
          resolve(set);
        } catch (e) {
          reject(mapCallError(e, this.socket, key));
        }
      });
    });
  }

  /**
   * Every change of `keys`: first the current KeySet of each, then one after
   * each change. Ends when the agent ends the stream (e.g. on shutdown);
   * throws a KeywardError when it fails; `return()` (or `break` in a
   * for-await loop) cancels the call.
   */
  watch(keys: string[]): AsyncIterableIterator<KeySet | DeletedKey> {
    const refs = keys.map(parseKey);
    const start = async () => {
      const stub = await this.#keys();
      if (this.#closed) {
        // Closed while the socket was checked: no stream on a closed client.
        if (this.#inflight === 0) stub.close();
        throw this.#closedError();
      }
      return stub.watchKeys({ keys: refs });
    };
    return new WatchIterator(start, this.socket, keys.join(", "));
  }

  /**
   * A handle on `key` whose `current` KeySet follows every change, across
   * agent restarts. Resolves once the first KeySet arrives.
   */
  async handle(key: string, opts: HandleOptions = {}): Promise<KeyHandle> {
    parseKey(key);
    const h = new KeyHandle(this, key, opts);
    this.#handles.add(h);
    h.once("close", () => this.#handles.delete(h));
    try {
      await h.ready;
    } catch (e) {
      h.close();
      throw e;
    }
    return h;
  }

  /** Tells the agent that `version` of `key` was refused with `statusCode`. */
  async reportAuthFailure(key: string, version: number, statusCode: number, service: string, detail = ""): Promise<void> {
    const ref = parseKey(key);
    return this.#tracked(
      (async () => {
        const stub = await this.#keys();
        return new Promise<void>((resolve, reject) => {
          stub.reportAuthFailure(
            { key: ref, version, statusCode, service, detail },
            { deadline: this.#deadline() },
            (err) => (err ? reject(mapCallError(err, this.socket, key)) : resolve()),
          );
        });
      })(),
    );
  }

  /**
   * Tells the agent that `successes` calls made by `service` with `version`
   * of `key` succeeded: the evidence a rotation needs before the agent
   * retires the old key. callWithFallback and KeyHandle.reportUse send
   * these by themselves, in the background and at most once per version
   * every USE_REPORT_INTERVAL_MS.
   */
  async reportKeyUse(key: string, version: number, service: string, successes = 1): Promise<void> {
    const ref = parseKey(key);
    return this.#tracked(
      (async () => {
        const stub = await this.#keys();
        return new Promise<void>((resolve, reject) => {
          stub.reportKeyUse(
            { key: ref, version, service, successes },
            { deadline: this.#deadline() },
            (err) => (err ? reject(mapCallError(err, this.socket, key)) : resolve()),
          );
        });
      })(),
    );
  }

  /**
   * Calls `fn` with the primary secret of `key`; when it is refused (401 or
   * 403), reports that to the agent and calls `fn` again with the fallback.
   * For `fallbackCooldownMs` after a refusal, calls go straight to the
   * fallback. A success is reported as key use of the version that
   * worked. See README "callWithFallback" and "Sticky fallback".
   */
  callWithFallback<T>(
    key: string | KeyHandle,
    fn: (secret: Buffer) => Promise<T>,
    opts: FallbackOptions = {},
  ): Promise<T> {
    return callWithFallback(this, key, fn, opts);
  }

  /**
   * Closes every handle made by this client, and the channel once the
   * calls already started have settled (each within its deadline): a
   * report callWithFallback just sent in the background still reaches the
   * agent. Any call made after close() rejects.
   */
  close(): void {
    this.#closed = true;
    for (const h of [...this.#handles]) h.close();
    if (this.#inflight === 0) this.#stub?.close();
  }
}

/**
 * The WatchKeys stream as an async iterator that cancels on return(). The
 * call starts at the first next(), once the socket is checked.
 */
class WatchIterator implements AsyncIterableIterator<KeySet | DeletedKey> {
  readonly #start: () => Promise<ClientReadableStream<KeyEvent__Output>>;
  #call: ClientReadableStream<KeyEvent__Output> | undefined;
  #events: AsyncIterator<KeyEvent__Output> | undefined;
  readonly #socket: string;
  readonly #keys: string;
  #cancelled = false;

  constructor(start: () => Promise<ClientReadableStream<KeyEvent__Output>>, socket: string, keys: string) {
    this.#start = start;
    this.#socket = socket;
    this.#keys = keys;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<KeySet | DeletedKey>> {
    if (this.#cancelled) return { done: true, value: undefined };
    let r: IteratorResult<KeyEvent__Output>;
    try {
      if (!this.#events) {
        const call = await this.#start();
        this.#call = call;
        this.#events = call[Symbol.asyncIterator]();
        if (this.#cancelled) {
          call.cancel();
          return { done: true, value: undefined };
        }
      }
      r = await this.#events.next();
    } catch (e) {
      if (this.#cancelled) return { done: true, value: undefined };
      throw mapCallError(e, this.#socket, this.#keys);
    }
    if (r.done) return { done: true, value: undefined };
    return { done: false, value: fromEvent(r.value, this.#keys) };
  }

  async return(): Promise<IteratorResult<KeySet | DeletedKey>> {
    if (!this.#cancelled) {
      this.#cancelled = true;
      this.#call?.cancel();
      // Let the stream's iterator release its listeners; the CANCELLED
      // status it may reject with is the one we asked for.
      this.#events?.return?.().catch(() => {});
    }
    return { done: true, value: undefined };
  }
}
