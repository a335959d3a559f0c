// Loads the keyward proto that ships with the package and builds the gRPC
// stub for the service socket. The proto is a copy of the repo's
// proto/keyward/v1/keys.proto (scripts/gen.mjs), so an installed package
// needs nothing from the repo. The admin protocol is not shipped: this
// client never talks to the admin socket. watchKeysMethod gives the
// WatchKeys path and (de)serializers to the handles' own HTTP/2 stream
// (watchstream.ts).
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { ProtoGrpcType } from "./generated/keys";
import type { KeysClient, KeysDefinition } from "./generated/keyward/v1/Keys";
import { clientNameInterceptor } from "./clientname";

/**
 * How the loader decodes messages. The generated types in src/generated
 * describe exactly this shape: keep in sync with the flags in
 * scripts/gen.mjs.
 */
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

const PROTO_DIR = path.join(__dirname, "..", "proto");

let loaded: { definition: protoLoader.PackageDefinition; grpc: ProtoGrpcType } | undefined;

function keysPackage(): { definition: protoLoader.PackageDefinition; grpc: ProtoGrpcType } {
  if (!loaded) {
    const definition = protoLoader.loadSync("keyward/v1/keys.proto", {
      ...LOADER_OPTIONS,
      includeDirs: [PROTO_DIR],
    });
    loaded = { definition, grpc: grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType };
  }
  return loaded;
}

/**
 * The WatchKeys method: its path, and the request serializer and response
 * deserializer, which decode to the same shape (LOADER_OPTIONS) as the stub.
 */
export function watchKeysMethod(): KeysDefinition["WatchKeys"] {
  return (keysPackage().definition["keyward.v1.Keys"] as unknown as KeysDefinition).WatchKeys;
}

/** A stub for the Keys service on the Unix socket at `socketPath` (absolute). */
export function keysStub(socketPath: string): KeysClient {
  const Keys = keysPackage().grpc.keyward.v1.Keys;
  return new Keys(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
    // grpc-js would send the socket path as the HTTP/2 :authority; the
    // agent's server (hyper) refuses that, so name a plain host.
    "grpc.default_authority": "localhost",
    // Reconnect quickly after an agent restart: the same range as
    // KeyHandle's own backoff, instead of grpc's default 1 s → 120 s.
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 5000,
    // Every call names this library to the agent (x-keyward-client).
    interceptors: [clientNameInterceptor],
  });
}
