// Original file: proto/keyward/v1/admin.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';
import type { Long } from '@grpc/proto-loader';

export interface RotationRequest {
  'key'?: (_keyward_v1_KeyRef | null);
  'expectedGeneration'?: (number | string | Long);
  '_expectedGeneration'?: "expectedGeneration";
}

export interface RotationRequest__Output {
  'key': (_keyward_v1_KeyRef__Output | null);
  'expectedGeneration'?: (number);
  '_expectedGeneration'?: "expectedGeneration";
}
