// Original file: proto/keyward/v1/admin.proto


export interface ListKeysRequest {
  /**
   * Only this environment, when set.
   */
  'environment'?: (string);
}

export interface ListKeysRequest__Output {
  /**
   * Only this environment, when set.
   */
  'environment': (string);
}
