// Original file: proto/keyward/v1/admin.proto

import type { Subscriber as _keyward_v1_Subscriber, Subscriber__Output as _keyward_v1_Subscriber__Output } from '../../keyward/v1/Subscriber';
import type { Timestamp as _google_protobuf_Timestamp, Timestamp__Output as _google_protobuf_Timestamp__Output } from '../../google/protobuf/Timestamp';
import type { Long } from '@grpc/proto-loader';

/**
 * A WatchKeys subscriber evicted for taking nothing.
 */
export interface EvictedSubscriber {
  /**
   * Who it was; delivered_generation is the last generation it was sent.
   */
  'subscriber'?: (_keyward_v1_Subscriber | null);
  /**
   * The generation it did not take (0: the key's deletion).
   */
  'waitingGeneration'?: (number | string | Long);
  /**
   * How long it had taken nothing, in milliseconds.
   */
  'waitedMs'?: (number | string | Long);
  'evictedAt'?: (_google_protobuf_Timestamp | null);
}

/**
 * A WatchKeys subscriber evicted for taking nothing.
 */
export interface EvictedSubscriber__Output {
  /**
   * Who it was; delivered_generation is the last generation it was sent.
   */
  'subscriber': (_keyward_v1_Subscriber__Output | null);
  /**
   * The generation it did not take (0: the key's deletion).
   */
  'waitingGeneration': (number);
  /**
   * How long it had taken nothing, in milliseconds.
   */
  'waitedMs': (number);
  'evictedAt': (_google_protobuf_Timestamp__Output | null);
}
