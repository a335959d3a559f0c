// Original file: proto/keyward/v1/keys.proto


/**
 * A key is addressed as ENV/NAME, e.g. prod/billing-api.
 */
export interface KeyRef {
  'environment'?: (string);
  'name'?: (string);
}

/**
 * A key is addressed as ENV/NAME, e.g. prod/billing-api.
 */
export interface KeyRef__Output {
  'environment': (string);
  'name': (string);
}
