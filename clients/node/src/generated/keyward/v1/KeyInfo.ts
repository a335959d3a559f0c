// Original file: proto/keyward/v1/admin.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';
import type { RotationState as _keyward_v1_RotationState, RotationState__Output as _keyward_v1_RotationState__Output } from '../../keyward/v1/RotationState';
import type { VersionInfo as _keyward_v1_VersionInfo, VersionInfo__Output as _keyward_v1_VersionInfo__Output } from '../../keyward/v1/VersionInfo';
import type { Long } from '@grpc/proto-loader';

/**
 * Metadata of one key.
 */
export interface KeyInfo {
  'key'?: (_keyward_v1_KeyRef | null);
  'generation'?: (number | string | Long);
  'state'?: (_keyward_v1_RotationState);
  'primary'?: (_keyward_v1_VersionInfo | null);
  'fallback'?: (_keyward_v1_VersionInfo | null);
  /**
   * Retired versions, newest first (bounded).
   */
  'history'?: (_keyward_v1_VersionInfo)[];
}

/**
 * Metadata of one key.
 */
export interface KeyInfo__Output {
  'key': (_keyward_v1_KeyRef__Output | null);
  'generation': (number);
  'state': (_keyward_v1_RotationState__Output);
  'primary': (_keyward_v1_VersionInfo__Output | null);
  'fallback': (_keyward_v1_VersionInfo__Output | null);
  /**
   * Retired versions, newest first (bounded).
   */
  'history': (_keyward_v1_VersionInfo__Output)[];
}
