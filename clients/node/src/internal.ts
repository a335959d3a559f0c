// What a Client shares with its KeyHandles and callWithFallback without
// making it public API: the socket path once trust.ts has checked it (the
// handles open their own WatchKeys streams on it, watchstream.ts).
import type { Client } from "./client";

export interface ClientInternals {
  /** The socket's real path, after checkSocket (once per Client); rejects as the check does. */
  checkedSocket(): Promise<string>;
}

const internals = new WeakMap<Client, ClientInternals>();

export function registerInternals(client: Client, i: ClientInternals): void {
  internals.set(client, i);
}

export function internalsOf(client: Client): ClientInternals {
  const i = internals.get(client);
  if (!i) throw new Error("not a keyward Client");
  return i;
}
