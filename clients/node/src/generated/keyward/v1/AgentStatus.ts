// Original file: proto/keyward/v1/admin.proto

import type { Timestamp as _google_protobuf_Timestamp, Timestamp__Output as _google_protobuf_Timestamp__Output } from '../../google/protobuf/Timestamp';
import type { OpenAlert as _keyward_v1_OpenAlert, OpenAlert__Output as _keyward_v1_OpenAlert__Output } from '../../keyward/v1/OpenAlert';
import type { SinkStatus as _keyward_v1_SinkStatus, SinkStatus__Output as _keyward_v1_SinkStatus__Output } from '../../keyward/v1/SinkStatus';
import type { BackendStatus as _keyward_v1_BackendStatus, BackendStatus__Output as _keyward_v1_BackendStatus__Output } from '../../keyward/v1/BackendStatus';
import type { Long } from '@grpc/proto-loader';

export interface AgentStatus {
  'version'?: (string);
  'pid'?: (number);
  'startedAt'?: (_google_protobuf_Timestamp | null);
  'serviceSocket'?: (string);
  'adminSocket'?: (string);
  'storeDir'?: (string);
  'auditFile'?: (string);
  'environments'?: (string)[];
  'keys'?: (number | string | Long);
  'connections'?: (number | string | Long);
  /**
   * Sequence number and hash of the last audit record written.
   */
  'auditSequence'?: (number | string | Long);
  'auditHead'?: (string);
  /**
   * Empty when the audit log is healthy.
   */
  'auditError'?: (string);
  'memoryLocked'?: (boolean);
  'agentRecipient'?: (string);
  /**
   * The alerts open now, and each alert sink's delivery counters.
   */
  'openAlerts'?: (_keyward_v1_OpenAlert)[];
  'sinks'?: (_keyward_v1_SinkStatus)[];
  /**
   * Where the keys come from: "local" (the store directory) or "openbao".
   */
  'backend'?: (_keyward_v1_BackendStatus | null);
}

export interface AgentStatus__Output {
  'version': (string);
  'pid': (number);
  'startedAt': (_google_protobuf_Timestamp__Output | null);
  'serviceSocket': (string);
  'adminSocket': (string);
  'storeDir': (string);
  'auditFile': (string);
  'environments': (string)[];
  'keys': (number);
  'connections': (number);
  /**
   * Sequence number and hash of the last audit record written.
   */
  'auditSequence': (number);
  'auditHead': (string);
  /**
   * Empty when the audit log is healthy.
   */
  'auditError': (string);
  'memoryLocked': (boolean);
  'agentRecipient': (string);
  /**
   * The alerts open now, and each alert sink's delivery counters.
   */
  'openAlerts': (_keyward_v1_OpenAlert__Output)[];
  'sinks': (_keyward_v1_SinkStatus__Output)[];
  /**
   * Where the keys come from: "local" (the store directory) or "openbao".
   */
  'backend': (_keyward_v1_BackendStatus__Output | null);
}
