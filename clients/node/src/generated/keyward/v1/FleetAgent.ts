// Original file: proto/keyward/v1/admin.proto

import type { Timestamp as _google_protobuf_Timestamp, Timestamp__Output as _google_protobuf_Timestamp__Output } from '../../google/protobuf/Timestamp';
import type { FleetKey as _keyward_v1_FleetKey, FleetKey__Output as _keyward_v1_FleetKey__Output } from '../../keyward/v1/FleetKey';
import type { Long } from '@grpc/proto-loader';

/**
 * One agent's published status.
 */
export interface FleetAgent {
  'agentId'?: (string);
  'hostname'?: (string);
  /**
   * Its age recipient: records must be encrypted to it.
   */
  'recipient'?: (string);
  'updatedAt'?: (_google_protobuf_Timestamp | null);
  'ttlSeconds'?: (number | string | Long);
  /**
   * Published within its TTL: counted when a fleet rotation waits.
   */
  'live'?: (boolean);
  /**
   * What it serves: one entry per key (only the asked key, if any).
   */
  'keys'?: (_keyward_v1_FleetKey)[];
  /**
   * Its staleness and problems, as it published them.
   */
  'stale'?: (boolean);
  'problems'?: (string)[];
}

/**
 * One agent's published status.
 */
export interface FleetAgent__Output {
  'agentId': (string);
  'hostname': (string);
  /**
   * Its age recipient: records must be encrypted to it.
   */
  'recipient': (string);
  'updatedAt': (_google_protobuf_Timestamp__Output | null);
  'ttlSeconds': (number);
  /**
   * Published within its TTL: counted when a fleet rotation waits.
   */
  'live': (boolean);
  /**
   * What it serves: one entry per key (only the asked key, if any).
   */
  'keys': (_keyward_v1_FleetKey__Output)[];
  /**
   * Its staleness and problems, as it published them.
   */
  'stale': (boolean);
  'problems': (string)[];
}
