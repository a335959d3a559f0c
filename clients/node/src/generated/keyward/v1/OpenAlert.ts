// Original file: proto/keyward/v1/admin.proto

import type { Timestamp as _google_protobuf_Timestamp, Timestamp__Output as _google_protobuf_Timestamp__Output } from '../../google/protobuf/Timestamp';

/**
 * An alert that is open (see the agent's [alerts] config).
 */
export interface OpenAlert {
  /**
   * keyward/HOST/SUBJECT/SIGNAL: the same in every notification of it.
   */
  'dedupKey'?: (string);
  /**
   * spike, stale_version, rising_rate, fallback_failing, expiry_ahead,
   * max_age_overdue, agent_health.
   */
  'signal'?: (string);
  /**
   * info, warning, critical.
   */
  'severity'?: (string);
  /**
   * ENV/NAME, or empty for an agent-wide alert.
   */
  'key'?: (string);
  /**
   * What broke and what to do.
   */
  'summary'?: (string);
  'openedAt'?: (_google_protobuf_Timestamp | null);
  /**
   * Notifications sent again since it opened.
   */
  'repeats'?: (number);
}

/**
 * An alert that is open (see the agent's [alerts] config).
 */
export interface OpenAlert__Output {
  /**
   * keyward/HOST/SUBJECT/SIGNAL: the same in every notification of it.
   */
  'dedupKey': (string);
  /**
   * spike, stale_version, rising_rate, fallback_failing, expiry_ahead,
   * max_age_overdue, agent_health.
   */
  'signal': (string);
  /**
   * info, warning, critical.
   */
  'severity': (string);
  /**
   * ENV/NAME, or empty for an agent-wide alert.
   */
  'key': (string);
  /**
   * What broke and what to do.
   */
  'summary': (string);
  'openedAt': (_google_protobuf_Timestamp__Output | null);
  /**
   * Notifications sent again since it opened.
   */
  'repeats': (number);
}
