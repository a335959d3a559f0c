// A KeyHandle's WatchKeys stream, on Node's own HTTP/2 client instead of
// grpc-js, so that it can be unref'd: grpc-js holds the process open for
// as long as any call is active (by design: "grpc should keep the process
// open if and only if there is a pending request"), with no way to
// unref a call, and a handle's stream is active for its whole life. Here
// the stream has its own HTTP/2 session on the agent's socket, and
// `ref()`/`unref()` decide whether that session keeps the process alive.
//
// It speaks the gRPC wire protocol for this one server-streaming method:
// a POST to /keyward.v1.Keys/WatchKeys with `content-type:
// application/grpc` and `te: trailers`, one length-prefixed request
// message (flag byte 0, 4-byte big-endian length, protobuf), then
// length-prefixed KeyEvent messages, then `grpc-status` and `grpc-message`
// in the trailers (or in the headers, for an immediate error). Messages
// are (de)serialized by proto-loader, as grpc-js does, so a KeyEvent has
// the same shape as from `client.watch()`. Nothing here sends more than
// grpc-js would: the `x-keyward-client` header and the request.
//
// Failures are reported as grpc-js reports them (`code` a gRPC status,
// `details`), so that mapCallError gives the same KeywardError for both.
import * as http2 from "node:http2";
import * as net from "node:net";
import { status as Status } from "@grpc/grpc-js";
import { CLIENT_HEADER, CLIENT_NAME } from "./clientname";
import { watchKeysMethod } from "./proto";
import type { KeyRef } from "./generated/keyward/v1/KeyRef";
import type { KeyEvent__Output } from "./generated/keyward/v1/KeyEvent";

/** A failed call, shaped as grpc-js's ServiceError (what mapCallError reads). */
export class CallFailure extends Error {
  readonly code: number;
  readonly details: string;

  constructor(code: number, details: string) {
    super(`${code} ${Status[code] ?? "UNKNOWN"}: ${details}`);
    this.code = code;
    this.details = details;
  }
}

/** Largest KeyEvent accepted (grpc-js's default receive limit). */
const MAX_MESSAGE = 4 * 1024 * 1024;

/**
 * One WatchKeys call on its own HTTP/2 session. `done` resolves when the
 * agent ends the stream with OK and rejects with a CallFailure otherwise
 * (CANCELLED after cancel()). `onEvent` is called for each KeyEvent; if it
 * throws, the call is cancelled and `done` rejects with what it threw.
 */
export class WatchStream {
  readonly done: Promise<void>;
  readonly #session: http2.ClientHttp2Session;
  #stream: http2.ClientHttp2Stream | undefined;
  #finish!: (err?: Error) => void;
  #finished = false;
  #referenced: boolean;

  constructor(socketPath: string, keys: KeyRef[], onEvent: (ev: KeyEvent__Output) => void, ref: boolean) {
    this.done = new Promise<void>((resolve, reject) => {
      this.#finish = (err?: Error) => {
        if (this.#finished) return;
        this.#finished = true;
        this.#stream?.close(http2.constants.NGHTTP2_CANCEL);
        this.#session.destroy();
        err ? reject(err) : resolve();
      };
    });
    this.done.catch(() => {}); // the owner awaits it; never unhandled here.
    this.#referenced = ref;
    const method = watchKeysMethod();
    // grpc-js names a plain host as the :authority for the same reason:
    // the agent's server (hyper) refuses a socket path there.
    this.#session = http2.connect("http://localhost", {
      createConnection: () => net.connect(socketPath),
    });
    if (!ref) this.#session.unref();
    this.#session.on("error", (e: NodeJS.ErrnoException) => {
      // As grpc-js words a failed connect, which mapCallError recognizes.
      const why = e.code && e.syscall === "connect" ? `connect ${e.code} ${socketPath}` : e.message;
      this.#finish(new CallFailure(Status.UNAVAILABLE, why));
    });
    this.#session.on("goaway", () => {
      // The agent is going away: the stream ends with its status, or the
      // session closes, which "close" below reports.
    });

    const stream = this.#session.request({
      ":method": "POST",
      ":path": method.path,
      "content-type": "application/grpc",
      te: "trailers",
      [CLIENT_HEADER]: CLIENT_NAME,
    });
    this.#stream = stream;
    const request = method.requestSerialize({ keys });
    const frame = Buffer.alloc(5 + request.length);
    frame.writeUInt32BE(request.length, 1);
    request.copy(frame, 5);
    stream.end(frame);

    let status: { code: number; details: string } | undefined;
    const readStatus = (headers: http2.IncomingHttpHeaders) => {
      const code = headers["grpc-status"];
      if (code === undefined || status) return;
      const message = headers["grpc-message"];
      status = { code: Number(code), details: decodeMessage(Array.isArray(message) ? message[0] : message) };
    };
    stream.on("response", (headers) => {
      const http = headers[":status"];
      if (http !== 200) {
        this.#finish(new CallFailure(Status.UNKNOWN, `the agent answered HTTP ${String(http)} to WatchKeys`));
        return;
      }
      readStatus(headers);
    });
    stream.on("trailers", readStatus);

    let pending: Buffer = Buffer.alloc(0);
    stream.on("data", (chunk: Buffer) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      while (!this.#finished && pending.length >= 5) {
        const compressed = pending[0] !== 0;
        const length = pending.readUInt32BE(1);
        if (compressed || length > MAX_MESSAGE) {
          const why = compressed ? "a compressed message (none was asked for)" : `a ${length}-byte message`;
          this.#finish(new CallFailure(Status.INTERNAL, `the agent sent ${why} on WatchKeys`));
          return;
        }
        if (pending.length < 5 + length) break;
        const message = pending.subarray(5, 5 + length);
        pending = pending.subarray(5 + length);
        try {
          onEvent(method.responseDeserialize(message));
        } catch (e) {
          this.#finish(e instanceof Error ? e : new Error(String(e)));
          return;
        }
      }
    });
    stream.on("error", () => {
      // Followed by "close", which reports the call's end.
    });
    stream.on("close", () => {
      if (status && status.code === Status.OK) return this.#finish();
      if (status) return this.#finish(new CallFailure(status.code, status.details));
      // No status: the connection went (e.g. the agent stopped).
      this.#finish(new CallFailure(Status.UNAVAILABLE, "Connection dropped"));
    });
    // The stream must be consumed for "close" to come.
    stream.resume();
  }

  /** Whether this stream keeps the process alive. */
  get referenced(): boolean {
    return this.#referenced;
  }

  /** Keeps the process alive while the stream is open. */
  ref(): void {
    this.#referenced = true;
    if (!this.#finished) this.#session.ref();
  }

  /** Lets the process exit while the stream is open. */
  unref(): void {
    this.#referenced = false;
    if (!this.#finished) this.#session.unref();
  }

  /** Ends the call; `done` rejects with CANCELLED. */
  cancel(): void {
    this.#finish(new CallFailure(Status.CANCELLED, "Cancelled on client"));
  }
}

/** grpc-message is percent-encoded UTF-8. */
function decodeMessage(message: string | undefined): string {
  if (!message) return "";
  try {
    return decodeURIComponent(message);
  } catch {
    return message;
  }
}
