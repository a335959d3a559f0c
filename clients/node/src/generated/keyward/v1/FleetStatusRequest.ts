// Original file: proto/keyward/v1/admin.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';

export interface FleetStatusRequest {
  /**
   * Only this key's generation in each agent's row; unset: all keys.
   */
  'key'?: (_keyward_v1_KeyRef | null);
}

export interface FleetStatusRequest__Output {
  /**
   * Only this key's generation in each agent's row; unset: all keys.
   */
  'key': (_keyward_v1_KeyRef__Output | null);
}
