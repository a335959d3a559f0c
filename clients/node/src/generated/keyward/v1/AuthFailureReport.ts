// Original file: proto/keyward/v1/keys.proto

import type { KeyRef as _keyward_v1_KeyRef, KeyRef__Output as _keyward_v1_KeyRef__Output } from '../../keyward/v1/KeyRef';
import type { Long } from '@grpc/proto-loader';

export interface AuthFailureReport {
  'key'?: (_keyward_v1_KeyRef | null);
  'version'?: (number | string | Long);
  'statusCode'?: (number);
  'service'?: (string);
  'detail'?: (string);
  /**
   * Set by keyward's proxy instead of a provider's refusal: a request
   * carried this key's placeholder to this host (HOST:PORT, or
   * "http://HOST:PORT" for plain HTTP), where the key is not bound. The
   * proxy did not put the key in and refused the request (status_code is
   * its answer). The agent audits it as key_misdirected; it is not an auth
   * failure and feeds no detector.
   */
  'misdirectedTo'?: (string);
}

export interface AuthFailureReport__Output {
  'key': (_keyward_v1_KeyRef__Output | null);
  'version': (number);
  'statusCode': (number);
  'service': (string);
  'detail': (string);
  /**
   * Set by keyward's proxy instead of a provider's refusal: a request
   * carried this key's placeholder to this host (HOST:PORT, or
   * "http://HOST:PORT" for plain HTTP), where the key is not bound. The
   * proxy did not put the key in and refused the request (status_code is
   * its answer). The agent audits it as key_misdirected; it is not an auth
   * failure and feeds no detector.
   */
  'misdirectedTo': (string);
}
