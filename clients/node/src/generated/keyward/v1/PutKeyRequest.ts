// Original file: proto/keyward/v1/admin.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';
import type { Timestamp as _google_protobuf_Timestamp, Timestamp__Output as _google_protobuf_Timestamp__Output } from '../../google/protobuf/Timestamp';
import type { Long } from '@grpc/proto-loader';

export interface PutKeyRequest {
  'key'?: (_keyward_v1_KeyRef | null);
  /**
   * The new secret. Sent only over the admin socket; never logged.
   */
  'secret'?: (Buffer | Uint8Array | string);
  /**
   * Replace an existing key (its current versions become history).
   */
  'overwrite'?: (boolean);
  /**
   * Optional expiry of this version.
   */
  'expiresAt'?: (_google_protobuf_Timestamp | null);
  /**
   * Compare and swap: when set, the key's current generation must equal it
   * (0 means the key must not exist).
   */
  'expectedGeneration'?: (number | string | Long);
  '_expectedGeneration'?: "expectedGeneration";
}

export interface PutKeyRequest__Output {
  'key': (_keyward_v1_KeyRef__Output | null);
  /**
   * The new secret. Sent only over the admin socket; never logged.
   */
  'secret': (Buffer);
  /**
   * Replace an existing key (its current versions become history).
   */
  'overwrite': (boolean);
  /**
   * Optional expiry of this version.
   */
  'expiresAt': (_google_protobuf_Timestamp__Output | null);
  /**
   * Compare and swap: when set, the key's current generation must equal it
   * (0 means the key must not exist).
   */
  'expectedGeneration'?: (number);
  '_expectedGeneration'?: "expectedGeneration";
}
