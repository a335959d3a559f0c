// Original file: proto/keyward/v1/keys.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';
import type { Long } from '@grpc/proto-loader';

export interface AuthFailureReport {
  'key'?: (_keyward_v1_KeyRef | null);
  'version'?: (number | string | Long);
  'statusCode'?: (number);
  'service'?: (string);
  'detail'?: (string);
}

export interface AuthFailureReport__Output {
  'key': (_keyward_v1_KeyRef__Output | null);
  'version': (number);
  'statusCode': (number);
  'service': (string);
  'detail': (string);
}
