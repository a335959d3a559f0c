// Original file: proto/keyward/v1/keys.proto


export interface KeyUseAck {
}

export interface KeyUseAck__Output {
}
