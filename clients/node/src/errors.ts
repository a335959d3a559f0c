// The errors the client throws. gRPC status errors are mapped here, once,
// into these classes; each message says what was wrong and what to do, and
// none ever holds secret bytes (the agent never puts them in a status, and
// the client adds only paths and key names).
import { status as Status, type ServiceError } from "@grpc/grpc-js";

/** Base class of every error the keyward client throws. */
export class KeywardError extends Error {
  /** The gRPC status code, when the error came from a call. */
  readonly code?: number;
  /** The key, ENV/NAME, when the error is about one. */
  readonly key?: string;

  constructor(message: string, opts: { code?: number; key?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = opts.code;
    this.key = opts.key;
  }
}

/** No agent answers on the socket: not running, wrong path, or not ready. */
export class AgentUnavailableError extends KeywardError {}

/** The socket's permissions or the agent's policy keep this caller out. */
export class PermissionDeniedError extends KeywardError {}

/** The agent has no such key. */
export class KeyNotFoundError extends KeywardError {}

/** The key name is malformed or its environment is not configured. */
export class InvalidKeyError extends KeywardError {}

/**
 * The socket is owned by, or its directory is writable by, a uid that is
 * neither root, this process's user, nor the agent's (KEYWARD_AGENT_UID or
 * the `agentUid` option). Nothing was sent. `uid` is the uid at fault (none
 * for a directory writable by everyone), `path` the file or directory.
 */
export class UntrustedSocketError extends KeywardError {
  readonly uid?: number;
  readonly path: string;

  constructor(message: string, opts: { uid?: number; path: string }) {
    super(message);
    this.uid = opts.uid;
    this.path = opts.path;
  }
}

/** No agent answers on `socket` (`why`: the errno or what failed). */
export function agentUnavailable(socket: string, why: string, opts: { code?: number; key?: string; cause?: unknown } = {}) {
  return new AgentUnavailableError(
    `keyward agent unavailable: is keywardd running? socket ${socket}; set KEYWARD_SOCKET to use another (${why})`,
    opts,
  );
}

/** The socket's mode or group keeps this user out. */
export function socketPermissionDenied(socket: string, opts: { code?: number; key?: string; cause?: unknown } = {}) {
  return new PermissionDeniedError(
    `permission denied connecting to ${socket}: add this user to the socket's group (keyward) or run as root`,
    opts,
  );
}

function isServiceError(e: unknown): e is ServiceError {
  return typeof e === "object" && e !== null && typeof (e as ServiceError).code === "number" && "details" in e;
}

/**
 * Maps a failed call to a KeywardError. `socket` is the path the client
 * dialled; `key` the key the call was about.
 */
export function mapCallError(e: unknown, socket: string, key?: string): KeywardError {
  if (e instanceof KeywardError) return e;
  if (!isServiceError(e)) {
    return new KeywardError(`keyward call failed: ${String(e)}`, { key, cause: e });
  }
  const details = e.details || e.message;
  const opts = { code: e.code, key, cause: e };
  switch (e.code) {
    case Status.UNAVAILABLE: {
      // grpc-js reports a failed connect as UNAVAILABLE with the errno in
      // the details; the agent itself answers UNAVAILABLE when its audit
      // log cannot be written, and that message is kept as is.
      if (/\bEACCES\b|\bEPERM\b/.test(details)) {
        return socketPermissionDenied(socket, opts);
      }
      const connect = /connect (E[A-Z]+)/.exec(details);
      if (connect || /No connection established|Connection dropped/i.test(details)) {
        return agentUnavailable(socket, connect ? `connect ${connect[1]}` : "no connection", opts);
      }
      return new AgentUnavailableError(`keyward agent at ${socket} is unavailable: ${details}`, opts);
    }
    case Status.DEADLINE_EXCEEDED:
      return new AgentUnavailableError(
        `keyward agent at ${socket} did not answer in time: is keywardd running and healthy?`,
        opts,
      );
    case Status.PERMISSION_DENIED:
      return new PermissionDeniedError(details, opts);
    case Status.NOT_FOUND:
      return new KeyNotFoundError(details, opts);
    case Status.INVALID_ARGUMENT:
      return new InvalidKeyError(details, opts);
    default:
      return new KeywardError(details, opts);
  }
}
