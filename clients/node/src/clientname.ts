// The x-keyward-client header: which program talks to the agent. Every
// call of a Client carries it (a channel interceptor, proto.ts), so that
// the agent can tell its consumers apart by kind: a client library, which
// reports which key it uses, `keyward run`, which cannot, or anything else.
// It is a label, not a credential: the agent identifies callers by the
// kernel's credentials on the socket and never trusts this header for
// access.
import { InterceptingCall, type Interceptor } from "@grpc/grpc-js";

/** This package's version (test/keyuse.test.mjs checks it against package.json). */
export const VERSION = "0.1.0";

/** The gRPC metadata header that names the client program to the agent. */
export const CLIENT_HEADER = "x-keyward-client";

/** What this library sends in it: `node/VERSION`. */
export const CLIENT_NAME = `node/${VERSION}`;

/** Adds CLIENT_HEADER to every call. */
export const clientNameInterceptor: Interceptor = (options, nextCall) =>
  new InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set(CLIENT_HEADER, CLIENT_NAME);
      next(metadata, listener);
    },
  });
