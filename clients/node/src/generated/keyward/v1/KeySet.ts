// Original file: proto/keyward/v1/keys.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';
import type { KeyVersion as _keyward_v1_KeyVersion, KeyVersion__Output as _keyward_v1_KeyVersion__Output } from '../../keyward/v1/KeyVersion';
import type { RotationState as _keyward_v1_RotationState, RotationState__Output as _keyward_v1_RotationState__Output } from '../../keyward/v1/RotationState';
import type { Long } from '@grpc/proto-loader';

/**
 * The state of a key: bumped generation on every change.
 */
export interface KeySet {
  'key'?: (_keyward_v1_KeyRef | null);
  'generation'?: (number | string | Long);
  'primary'?: (_keyward_v1_KeyVersion | null);
  /**
   * Unset when there is no fallback.
   */
  'fallback'?: (_keyward_v1_KeyVersion | null);
  'state'?: (_keyward_v1_RotationState);
}

/**
 * The state of a key: bumped generation on every change.
 */
export interface KeySet__Output {
  'key': (_keyward_v1_KeyRef__Output | null);
  'generation': (number);
  'primary': (_keyward_v1_KeyVersion__Output | null);
  /**
   * Unset when there is no fallback.
   */
  'fallback': (_keyward_v1_KeyVersion__Output | null);
  'state': (_keyward_v1_RotationState__Output);
}
