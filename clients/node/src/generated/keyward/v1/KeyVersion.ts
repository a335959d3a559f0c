// Original file: proto/keyward/v1/keys.proto

import type { Timestamp as _google_protobuf_Timestamp, Timestamp__Output as _google_protobuf_Timestamp__Output } from '../../google/protobuf/Timestamp';
import type { Long } from '@grpc/proto-loader';

/**
 * One numbered value of a key.
 */
export interface KeyVersion {
  'version'?: (number | string | Long);
  /**
   * The secret material. Never logged by the agent.
   */
  'secret'?: (Buffer | Uint8Array | string);
  /**
   * HMAC-SHA256 of the secret under a per-install salt, truncated: safe to
   * log and compare, useless for guessing the secret.
   */
  'fingerprint'?: (string);
  'createdAt'?: (_google_protobuf_Timestamp | null);
  'expiresAt'?: (_google_protobuf_Timestamp | null);
}

/**
 * One numbered value of a key.
 */
export interface KeyVersion__Output {
  'version': (number);
  /**
   * The secret material. Never logged by the agent.
   */
  'secret': (Buffer);
  /**
   * HMAC-SHA256 of the secret under a per-install salt, truncated: safe to
   * log and compare, useless for guessing the secret.
   */
  'fingerprint': (string);
  'createdAt': (_google_protobuf_Timestamp__Output | null);
  'expiresAt': (_google_protobuf_Timestamp__Output | null);
}
