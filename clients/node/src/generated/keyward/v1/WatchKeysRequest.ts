// Original file: proto/keyward/v1/keys.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';

export interface WatchKeysRequest {
  'keys'?: (_keyward_v1_KeyRef)[];
}

export interface WatchKeysRequest__Output {
  'keys': (_keyward_v1_KeyRef__Output)[];
}
