// Original file: proto/keyward/v1/admin.proto

import type { Long } from '@grpc/proto-loader';

/**
 * One alert sink's delivery counters since the agent started.
 */
export interface SinkStatus {
  'name'?: (string);
  /**
   * webhook, slack, pagerduty, smtp, exec, log.
   */
  'kind'?: (string);
  'delivered'?: (number | string | Long);
  'failed'?: (number | string | Long);
  'dropped'?: (number | string | Long);
  'retries'?: (number | string | Long);
  'queued'?: (number | string | Long);
}

/**
 * One alert sink's delivery counters since the agent started.
 */
export interface SinkStatus__Output {
  'name': (string);
  /**
   * webhook, slack, pagerduty, smtp, exec, log.
   */
  'kind': (string);
  'delivered': (number);
  'failed': (number);
  'dropped': (number);
  'retries': (number);
  'queued': (number);
}
