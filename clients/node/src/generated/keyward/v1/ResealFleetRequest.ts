// Original file: proto/keyward/v1/admin.proto


export interface ResealFleetRequest {
  'environment'?: (string);
}

export interface ResealFleetRequest__Output {
  'environment': (string);
}
