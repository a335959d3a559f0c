// Original file: proto/keyward/v1/admin.proto

import type { KeyInfo as _keyward_v1_KeyInfo, KeyInfo__Output as _keyward_v1_KeyInfo__Output } from '../../keyward/v1/KeyInfo';

export interface ResealFleetResponse {
  'resealed'?: (_keyward_v1_KeyInfo)[];
}

export interface ResealFleetResponse__Output {
  'resealed': (_keyward_v1_KeyInfo__Output)[];
}
