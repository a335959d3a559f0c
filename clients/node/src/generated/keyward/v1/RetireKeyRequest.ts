// Original file: proto/keyward/v1/admin.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';
import type { Long } from '@grpc/proto-loader';

export interface RetireKeyRequest {
  'key'?: (_keyward_v1_KeyRef | null);
  'expectedGeneration'?: (number | string | Long);
  /**
   * Retire although the gate is closed (audited as forced).
   */
  'force'?: (boolean);
  '_expectedGeneration'?: "expectedGeneration";
}

export interface RetireKeyRequest__Output {
  'key': (_keyward_v1_KeyRef__Output | null);
  'expectedGeneration'?: (number);
  /**
   * Retire although the gate is closed (audited as forced).
   */
  'force': (boolean);
  '_expectedGeneration'?: "expectedGeneration";
}
