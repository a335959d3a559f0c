// Original file: proto/keyward/v1/admin.proto

import type { Timestamp as _google_protobuf_Timestamp, Timestamp__Output as _google_protobuf_Timestamp__Output } from '../../google/protobuf/Timestamp';
import type { Long } from '@grpc/proto-loader';

/**
 * The store backend's health. For "local" only `kind` is set.
 */
export interface BackendStatus {
  /**
   * "local" or "openbao".
   */
  'kind'?: (string);
  /**
   * The OpenBao (or Vault) address, mount and path prefix.
   */
  'address'?: (string);
  'mount'?: (string);
  'prefix'?: (string);
  /**
   * This agent's id in the fleet (its status path's last element).
   */
  'agentId'?: (string);
  /**
   * The last time every key was compared with the backend successfully.
   * Unset if that never happened (e.g. started while OpenBao was down and
   * no sync was ever recorded).
   */
  'lastSyncAt'?: (_google_protobuf_Timestamp | null);
  /**
   * Seconds since last_sync_at (0 when fresh).
   */
  'staleSeconds'?: (number | string | Long);
  /**
   * True when stale_seconds is over the configured stale_after: the agent
   * serves its local copy, which may be behind the fleet.
   */
  'stale'?: (boolean);
  /**
   * Why the last attempt failed; empty when it succeeded.
   */
  'lastError'?: (string);
  /**
   * Records in the backend this agent could not apply (one line each: the
   * key and why, e.g. not encrypted to this agent's identity).
   */
  'problems'?: (string)[];
}

/**
 * The store backend's health. For "local" only `kind` is set.
 */
export interface BackendStatus__Output {
  /**
   * "local" or "openbao".
   */
  'kind': (string);
  /**
   * The OpenBao (or Vault) address, mount and path prefix.
   */
  'address': (string);
  'mount': (string);
  'prefix': (string);
  /**
   * This agent's id in the fleet (its status path's last element).
   */
  'agentId': (string);
  /**
   * The last time every key was compared with the backend successfully.
   * Unset if that never happened (e.g. started while OpenBao was down and
   * no sync was ever recorded).
   */
  'lastSyncAt': (_google_protobuf_Timestamp__Output | null);
  /**
   * Seconds since last_sync_at (0 when fresh).
   */
  'staleSeconds': (number);
  /**
   * True when stale_seconds is over the configured stale_after: the agent
   * serves its local copy, which may be behind the fleet.
   */
  'stale': (boolean);
  /**
   * Why the last attempt failed; empty when it succeeded.
   */
  'lastError': (string);
  /**
   * Records in the backend this agent could not apply (one line each: the
   * key and why, e.g. not encrypted to this agent's identity).
   */
  'problems': (string)[];
}
