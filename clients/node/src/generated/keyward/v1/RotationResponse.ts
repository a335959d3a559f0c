// Original file: proto/keyward/v1/admin.proto

import type { KeyInfo as _keyward_v1_KeyInfo, KeyInfo__Output as _keyward_v1_KeyInfo__Output } from '../../keyward/v1/KeyInfo';
import type { Long } from '@grpc/proto-loader';

export interface RotationResponse {
  'key'?: (_keyward_v1_KeyInfo | null);
  'generationBefore'?: (number | string | Long);
  /**
   * Notes from hooks (e.g. the revoker's result), never secrets.
   */
  'notes'?: (string)[];
}

export interface RotationResponse__Output {
  'key': (_keyward_v1_KeyInfo__Output | null);
  'generationBefore': (number);
  /**
   * Notes from hooks (e.g. the revoker's result), never secrets.
   */
  'notes': (string)[];
}
