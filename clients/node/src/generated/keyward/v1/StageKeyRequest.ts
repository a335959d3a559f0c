// Original file: proto/keyward/v1/admin.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';
import type { Timestamp as _google_protobuf_Timestamp, Timestamp__Output as _google_protobuf_Timestamp__Output } from '../../google/protobuf/Timestamp';
import type { Long } from '@grpc/proto-loader';

export interface StageKeyRequest {
  'key'?: (_keyward_v1_KeyRef | null);
  /**
   * The new secret; leave empty with `generate` to run the key's
   * configured generator hook instead.
   */
  'secret'?: (Buffer | Uint8Array | string);
  'generate'?: (boolean);
  /**
   * Replace a key that is already staged.
   */
  'replace'?: (boolean);
  'expectedGeneration'?: (number | string | Long);
  'expiresAt'?: (_google_protobuf_Timestamp | null);
  '_expectedGeneration'?: "expectedGeneration";
}

export interface StageKeyRequest__Output {
  'key': (_keyward_v1_KeyRef__Output | null);
  /**
   * The new secret; leave empty with `generate` to run the key's
   * configured generator hook instead.
   */
  'secret': (Buffer);
  'generate': (boolean);
  /**
   * Replace a key that is already staged.
   */
  'replace': (boolean);
  'expectedGeneration'?: (number);
  'expiresAt': (_google_protobuf_Timestamp__Output | null);
  '_expectedGeneration'?: "expectedGeneration";
}
