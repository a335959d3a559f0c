// Original file: proto/keyward/v1/admin.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';
import type { RotationState as _keyward_v1_RotationState, RotationState__Output as _keyward_v1_RotationState__Output } from '../../keyward/v1/RotationState';
import type { Long } from '@grpc/proto-loader';

export interface FleetKey {
  'key'?: (_keyward_v1_KeyRef | null);
  'generation'?: (number | string | Long);
  'backendVersion'?: (number | string | Long);
  'state'?: (_keyward_v1_RotationState);
}

export interface FleetKey__Output {
  'key': (_keyward_v1_KeyRef__Output | null);
  'generation': (number);
  'backendVersion': (number);
  'state': (_keyward_v1_RotationState__Output);
}
