// Original file: proto/keyward/v1/admin.proto

import type { Timestamp as _google_protobuf_Timestamp, Timestamp__Output as _google_protobuf_Timestamp__Output } from '../../google/protobuf/Timestamp';
import type { Long } from '@grpc/proto-loader';

/**
 * Metadata of one version: everything but the secret.
 */
export interface VersionInfo {
  'version'?: (number | string | Long);
  'fingerprint'?: (string);
  'createdAt'?: (_google_protobuf_Timestamp | null);
  'expiresAt'?: (_google_protobuf_Timestamp | null);
  'promotedAt'?: (_google_protobuf_Timestamp | null);
  'retiredAt'?: (_google_protobuf_Timestamp | null);
}

/**
 * Metadata of one version: everything but the secret.
 */
export interface VersionInfo__Output {
  'version': (number);
  'fingerprint': (string);
  'createdAt': (_google_protobuf_Timestamp__Output | null);
  'expiresAt': (_google_protobuf_Timestamp__Output | null);
  'promotedAt': (_google_protobuf_Timestamp__Output | null);
  'retiredAt': (_google_protobuf_Timestamp__Output | null);
}
