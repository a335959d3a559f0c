// Original file: proto/keyward/v1/keys.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';
import type { Long } from '@grpc/proto-loader';

export interface KeyUseReport {
  'key'?: (_keyward_v1_KeyRef | null);
  /**
   * The version the successful calls used (one the caller was served).
   */
  'version'?: (number | string | Long);
  /**
   * Which service made them, for the operator (free text, bounded).
   */
  'service'?: (string);
  /**
   * How many calls succeeded with it since the last report.
   */
  'successes'?: (number | string | Long);
}

export interface KeyUseReport__Output {
  'key': (_keyward_v1_KeyRef__Output | null);
  /**
   * The version the successful calls used (one the caller was served).
   */
  'version': (number);
  /**
   * Which service made them, for the operator (free text, bounded).
   */
  'service': (string);
  /**
   * How many calls succeeded with it since the last report.
   */
  'successes': (number);
}
