// @keyward/client: the Node.js client of keyward's service socket.
//
// Layout:
// - client.ts   Client: get, watch, reportAuthFailure, reportKeyUse, handle,
//               callWithFallback
// - clientname.ts the x-keyward-client header (node/VERSION) on every call
// - handle.ts   KeyHandle: a KeySet kept current across agent restarts;
//               reportUse; typed events; unref'd unless persistent
// - watchstream.ts a handle's WatchKeys stream on node:http2 (unref-able)
// - fallback.ts callWithFallback: primary, report on 401/403, then fallback;
//               a success is reported as key use
// - sticky.ts   the refused versions a Client remembers for the cool-down,
//               and the refusal reports it holds back and counts
// - keyuse.ts   key-use reports: at most one per version every 5 s
// - keyset.ts   KeySet and KeyVersion (whose secret never prints)
// - trust.ts    who may own the socket and its directories, checked before
//               the first call sends anything
// - errors.ts   KeywardError and its subclasses; the one gRPC → error mapping
// - proto.ts    loading the bundled protos and building the stub
// - internal.ts what a Client shares with its handles (the checked socket)
// - generated/  types generated from proto/ (npm run gen); do not edit
export { Client, DEFAULT_SOCKET, type ClientOptions } from "./client";
export { KeyHandle, type HandleOptions, type KeyHandleEvents } from "./handle";
export { isAuthRejection, statusOf, type FallbackOptions } from "./fallback";
export { USE_REPORT_INTERVAL_MS } from "./keyuse";
export { DEFAULT_FALLBACK_COOLDOWN_MS, MIN_REPORT_INTERVAL_MS } from "./sticky";
export { CLIENT_HEADER, VERSION } from "./clientname";
export { KeyVersion, type KeySet, type DeletedKey, type RotationState } from "./keyset";
export {
  KeywardError,
  AgentUnavailableError,
  PermissionDeniedError,
  KeyNotFoundError,
  InvalidKeyError,
  UntrustedSocketError,
} from "./errors";
export { AGENT_UID_ENV } from "./trust";
