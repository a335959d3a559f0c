// Original file: proto/keyward/v1/admin.proto

import type { Long } from '@grpc/proto-loader';

/**
 * A live WatchKeys subscriber of the key.
 */
export interface Subscriber {
  'uid'?: (number);
  'pid'?: (number);
  'exe'?: (string);
  'unit'?: (string);
  /**
   * The last generation of this key the agent has sent it.
   */
  'deliveredGeneration'?: (number | string | Long);
}

/**
 * A live WatchKeys subscriber of the key.
 */
export interface Subscriber__Output {
  'uid': (number);
  'pid': (number);
  'exe': (string);
  'unit': (string);
  /**
   * The last generation of this key the agent has sent it.
   */
  'deliveredGeneration': (number);
}
