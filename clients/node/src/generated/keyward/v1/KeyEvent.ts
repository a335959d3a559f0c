// Original file: proto/keyward/v1/keys.proto

import type { KeySet as _keyward_v1_KeySet, KeySet__Output as _keyward_v1_KeySet__Output } from '../../keyward/v1/KeySet';

export interface KeyEvent {
  'keySet'?: (_keyward_v1_KeySet | null);
  /**
   * Why this KeySet is sent: initial, staged, promoted, rolled_back,
   * aborted, retired, put, deleted, reloaded, fleet (a change another
   * agent of the fleet made, applied from OpenBao).
   */
  'reason'?: (string);
}

export interface KeyEvent__Output {
  'keySet': (_keyward_v1_KeySet__Output | null);
  /**
   * Why this KeySet is sent: initial, staged, promoted, rolled_back,
   * aborted, retired, put, deleted, reloaded, fleet (a change another
   * agent of the fleet made, applied from OpenBao).
   */
  'reason': (string);
}
