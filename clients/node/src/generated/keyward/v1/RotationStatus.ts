// Original file: proto/keyward/v1/admin.proto

import type { KeyInfo as _keyward_v1_KeyInfo, KeyInfo__Output as _keyward_v1_KeyInfo__Output } from '../../keyward/v1/KeyInfo';
import type { Subscriber as _keyward_v1_Subscriber, Subscriber__Output as _keyward_v1_Subscriber__Output } from '../../keyward/v1/Subscriber';
import type { EvictedSubscriber as _keyward_v1_EvictedSubscriber, EvictedSubscriber__Output as _keyward_v1_EvictedSubscriber__Output } from '../../keyward/v1/EvictedSubscriber';
import type { Long } from '@grpc/proto-loader';

export interface RotationStatus {
  'key'?: (_keyward_v1_KeyInfo | null);
  'subscribers'?: (_keyward_v1_Subscriber)[];
  /**
   * Auth failures reported against the current primary since it was
   * promoted.
   */
  'failuresSincePromotion'?: (number | string | Long);
  /**
   * Auth failures reported against the current fallback in the same time.
   */
  'fallbackFailuresSincePromotion'?: (number | string | Long);
  /**
   * Grace period configured for this key, and what is left of it.
   */
  'graceSeconds'?: (number | string | Long);
  'graceLeftSeconds'?: (number | string | Long);
  'retireAllowed'?: (boolean);
  'retireBlockedReason'?: (string);
  'hasGenerator'?: (boolean);
  'hasValidator'?: (boolean);
  'hasRevoker'?: (boolean);
  /**
   * How long `keyward rotate` waits for subscribers to receive a staged key,
   * and how many failures on the new primary make it roll back.
   */
  'propagationTimeoutSeconds'?: (number | string | Long);
  'failureThreshold'?: (number | string | Long);
  /**
   * Subscribers the agent evicted recently, newest first (at most 16): each
   * took no event for the key's propagation timeout while a change waited,
   * so rotations stopped waiting for it and its stream was ended.
   */
  'evicted'?: (_keyward_v1_EvictedSubscriber)[];
  /**
   * How many distinct reporters sent failures_since_promotion (a uid, told
   * apart by its verified unit or granted program), who they are, and how
   * many of them close the retire gate and make `keyward rotate` roll back
   * ([rotation] report_quorum, capped by the reporters served the primary).
   */
  'failureReporters'?: (number | string | Long);
  'reportQuorum'?: (number | string | Long);
  'reporters'?: (string)[];
}

export interface RotationStatus__Output {
  'key': (_keyward_v1_KeyInfo__Output | null);
  'subscribers': (_keyward_v1_Subscriber__Output)[];
  /**
   * Auth failures reported against the current primary since it was
   * promoted.
   */
  'failuresSincePromotion': (number);
  /**
   * Auth failures reported against the current fallback in the same time.
   */
  'fallbackFailuresSincePromotion': (number);
  /**
   * Grace period configured for this key, and what is left of it.
   */
  'graceSeconds': (number);
  'graceLeftSeconds': (number);
  'retireAllowed': (boolean);
  'retireBlockedReason': (string);
  'hasGenerator': (boolean);
  'hasValidator': (boolean);
  'hasRevoker': (boolean);
  /**
   * How long `keyward rotate` waits for subscribers to receive a staged key,
   * and how many failures on the new primary make it roll back.
   */
  'propagationTimeoutSeconds': (number);
  'failureThreshold': (number);
  /**
   * Subscribers the agent evicted recently, newest first (at most 16): each
   * took no event for the key's propagation timeout while a change waited,
   * so rotations stopped waiting for it and its stream was ended.
   */
  'evicted': (_keyward_v1_EvictedSubscriber__Output)[];
  /**
   * How many distinct reporters sent failures_since_promotion (a uid, told
   * apart by its verified unit or granted program), who they are, and how
   * many of them close the retire gate and make `keyward rotate` roll back
   * ([rotation] report_quorum, capped by the reporters served the primary).
   */
  'failureReporters': (number);
  'reportQuorum': (number);
  'reporters': (string)[];
}
